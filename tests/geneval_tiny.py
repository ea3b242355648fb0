"""Tiny, randomly initialised GenEval scorers built offline: a Mask2Former (small Swin backbone, the
80 COCO classes) and a CLIP with a tiny tokenizer, saved as ordinary transformers folders."""

from __future__ import annotations

from pathlib import Path

import torch


def build_mask2former(folder: Path, num_queries: int = 10, id2label: dict | None = None) -> Path:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    labels = id2label or {i: f"LABEL_{i}" for i in range(80)}
    cfg = Mask2FormerConfig(backbone_config=swin, num_labels=80, num_queries=num_queries, hidden_dim=32,
                            mask_feature_size=32, feature_size=32, encoder_feedforward_dim=32, dim_feedforward=32,
                            decoder_layers=2, encoder_layers=1, num_attention_heads=2, use_pretrained_backbone=False,
                            id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(cfg).eval().save_pretrained(folder)
    return folder


def build_clip(folder: Path, image_size: int = 32) -> Path:
    from transformers import CLIPConfig, CLIPModel

    from dgpo.testing.random_pipelines import clip_tokenizer

    tok = clip_tokenizer()
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                      num_attention_heads=4, eos_token_id=tok.eos_token_id,
                                      bos_token_id=tok.bos_token_id, pad_token_id=tok.eos_token_id),
                     vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                        num_attention_heads=4, image_size=image_size, patch_size=8),
                     projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_constant(folder: Path, cls_id: int, mask_logit: float = 5.0, class_logit: float = 12.0) -> Path:
    """Rewrite a tiny detector so that every query finds class ``cls_id`` with a full-image mask of
    logit ``mask_logit`` (pixel embeddings (1, 0, ...), mask embeddings (mask_logit, 0, ...))."""
    from transformers import Mask2FormerForUniversalSegmentation

    model = Mask2FormerForUniversalSegmentation.from_pretrained(folder)
    with torch.no_grad():
        head = model.class_predictor
        head.weight.zero_()
        head.bias.zero_()
        head.bias[cls_id] = class_logit
        proj = model.model.pixel_level_module.decoder.mask_projection
        proj.weight.zero_()
        proj.bias.zero_()
        proj.bias[0] = 1.0
        last = model.model.transformer_module.decoder.mask_predictor.mask_embedder.layers[-1].layers[0]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[0] = mask_logit
    model.save_pretrained(folder)
    return folder
