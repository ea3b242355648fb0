"""ImageReward v1.0 (Xu et al., NeurIPS 2023; THUDM/ImageReward, Apache-2.0): BLIP's ViT-L/16 image
encoder at 224 px and a BERT-base text encoder that cross-attends to the image tokens; the text
encoder's first token goes through a 5-layer linear head, then ``(score - 0.1672) / 1.0333`` (the
official normalisation: about mean 0 and std 1 on its training prompts). Flow-GRPO's
``imagereward`` reward is this score as it is.

It runs on transformers' BLIP modules, without the ``image-reward`` package (pinned timm, fairscale,
torchvision): the official checkpoint ``ImageReward.pt`` (a state dict; read with ``weights_only=True``)
is renamed onto a ``BlipVisionModel`` and a ``BlipTextModel`` with the official architecture; keys the
score does not read (BLIP's projections) are ignored as the official loader does, and a missing or
misshapen key is a clear error. ``reward.imagereward_path``: the ``.pt`` file, or a folder holding it
(and, optionally, the BERT tokenizer); '' downloads ``THUDM/ImageReward`` with huggingface_hub. The
tokenizer is bert-base-uncased with BLIP's two added tokens ([DEC], [ENC]), prompts padded and cut to
35 tokens, as the official ``score``.

Preprocessing is the official transform on PIL images, as Flow-GRPO feeds it: 8-bit RGB, shortest side
to 224 (PIL bicubic; longest ``int(224 * long / short)``), centre crop (offsets
``int(round(excess / 2))``), OpenAI's mean and std. A test pins scores of the official code on a tiny
model (tests/test_imagereward.py).
"""

from __future__ import annotations

import itertools
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from dgpo.errors import InputError
from dgpo.rewards.clip import CLIP_MEAN, CLIP_STD, hub_file, prompts_of

IR_REPO, IR_FILE, IR_TOKENIZER = "THUDM/ImageReward", "ImageReward.pt", "google-bert/bert-base-uncased"
IR_MEAN, IR_STD, IR_MAX_TOKENS, IR_SIZE = 0.16717362830052426, 1.0333394966054072, 35, 224
# BLIP_Pretrain(vit='large', image_size=224) and ImageReward's med_config.json (encoder_width = the ViT's)
VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
          "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6, "hidden_act": "gelu"}
TEXT = {"vocab_size": 30524, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "max_position_embeddings": 512, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
        "pad_token_id": 0}
HEAD = (1024, 128, 64, 16, 1)  # the official MLP: linear layers only (its ReLUs are commented out)
HEAD_INDEX = (0, 2, 4, 6, 7)  # their places in the official MLP.layers Sequential (dropouts between)
# official ViT names -> transformers' BlipVisionModel names
_VISION_RENAMES = [(r"^cls_token$", "embeddings.class_embedding"), (r"^pos_embed$", "embeddings.position_embedding"),
                   (r"^patch_embed\.proj\.", "embeddings.patch_embedding."), (r"^norm\.", "post_layernorm."),
                   (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
                   (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
                   (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
                   (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
                   (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp.")]


def vision_key(key: str) -> str:
    for pattern, repl in _VISION_RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


class ImageRewardNet(torch.nn.Module):
    """BLIP image encoder + cross-attending text encoder + the linear head, in transformers' modules."""

    def __init__(self, vision: dict | None = None, text: dict | None = None):
        super().__init__()
        from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        vision, text = {**VISION, **(vision or {})}, {**TEXT, **(text or {})}
        self.vision = BlipVisionModel(BlipVisionConfig(**vision))
        # is_decoder=True only builds the cross-attention layers; the forward runs bidirectionally
        cfg = BlipTextConfig(**text, encoder_hidden_size=vision["hidden_size"], is_decoder=True)
        self.text = BlipTextModel(cfg, add_pooling_layer=False)
        dims = (text["hidden_size"], *HEAD)
        self.head = torch.nn.Sequential(*[torch.nn.Linear(a, b) for a, b in itertools.pairwise(dims)])

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        image = self.vision(pixel_values=pixels).last_hidden_state
        ones = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        out = self.text(input_ids=ids, attention_mask=mask, encoder_hidden_states=image, encoder_attention_mask=ones)
        return ((self.head(out.last_hidden_state[:, 0, :].float()) - IR_MEAN) / IR_STD).squeeze(-1)

    def load_official(self, state: dict[str, torch.Tensor], source: str) -> None:
        """The official ImageReward state dict (``blip.visual_encoder.*``, ``blip.text_encoder.*``,
        ``mlp.layers.{0,2,4,6,7}.*``) into these modules; everything else in it is ignored."""
        mine: dict[str, torch.Tensor] = {}
        for k, v in state.items():
            if k.startswith("blip.visual_encoder."):
                mine["vision." + vision_key(k.removeprefix("blip.visual_encoder."))] = v
            elif k.startswith("blip.text_encoder.") and not k.endswith("position_ids"):
                mine["text." + k.removeprefix("blip.text_encoder.")] = v
            elif (m := re.match(r"^mlp\.layers\.(\d+)\.(weight|bias)$", k)) and int(m[1]) in HEAD_INDEX:
                mine[f"head.{HEAD_INDEX.index(int(m[1]))}.{m[2]}"] = v
        want = {k: v for k, v in self.state_dict().items() if not k.endswith("position_ids")}
        missing = sorted(set(want) - set(mine))
        bad = sorted(k for k in want.keys() & mine.keys() if want[k].shape != mine[k].shape)
        if missing or bad:
            shown = [*missing[:4], *(f"{k} {tuple(mine[k].shape)} != {tuple(want[k].shape)}" for k in bad[:4])]
            raise InputError(f"ImageReward: {source} is not an ImageReward v1.0 checkpoint ({len(missing)} missing, "
                             f"{len(bad)} misshapen keys: {shown})")
        self.load_state_dict({k: mine[k] for k in want}, strict=False, assign=True)
        emb = self.text.embeddings  # its only tensor not in the checkpoint: rebuilt (the net may be on "meta")
        emb.position_ids = torch.arange(emb.position_ids.shape[-1]).expand((1, -1))
        unset = [n for n, t in itertools.chain(self.named_parameters(), self.named_buffers()) if t.is_meta]
        if unset:  # a transformers version with another buffer: fail here, not with a meta-tensor error later
            raise RuntimeError(f"ImageReward: tensors not set from the checkpoint: {unset[:5]}")


def imagereward_pixels(images: torch.Tensor, size: int = IR_SIZE) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> [B, 3, size, size]: the official transform on 8-bit PIL images."""
    from PIL import Image

    u8 = (images.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for a in u8:
        im = Image.fromarray(a)
        w, h = im.size
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        im = im.resize((nw, nh), Image.BICUBIC)
        top, left = round((nh - size) / 2.0), round((nw - size) / 2.0)  # torchvision's int(round(.))
        out.append(np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def blip_tokenizer(path: str):
    """bert-base-uncased plus BLIP's [DEC] (bos) and [ENC] tokens, as the official ``init_tokenizer``."""
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(path)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


class ImageRewardReward:
    def __init__(self, path: str = "", device: str | torch.device = "cpu", batch_size: int = 16,
                 arch: dict | None = None):
        """``arch``: {"vision": {...}, "text": {...}} overrides of the architecture (tests' tiny models)."""
        ckpt, tok_path = self._files(path)
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
            raise InputError(f"reward.imagereward_path: cannot read {ckpt}: {e}") from None
        if not isinstance(state, dict):
            raise InputError(f"reward.imagereward_path: {ckpt} does not hold a state dict")
        with torch.device("meta"):  # no random init of ~450M parameters: the checkpoint replaces them all
            self.net = ImageRewardNet(**(arch or {}))
        self.net.load_official(state, str(ckpt))
        self.net = self.net.eval().requires_grad_(False).to(device)
        try:
            self.tokenizer = blip_tokenizer(tok_path)
        except (OSError, ValueError) as e:
            raise InputError(f"ImageReward: cannot load the BERT tokenizer {tok_path!r}: {e}") from None
        self.device, self.batch_size = torch.device(device), batch_size
        self.version = f"imagereward-v1.0 {ckpt}"

    @staticmethod
    def _files(path: str) -> tuple[str, str]:
        """(checkpoint, tokenizer folder or hub id) from ``reward.imagereward_path``."""
        if path and Path(path).is_dir():
            ckpt = Path(path) / IR_FILE
            has_tok = any((Path(path) / f).is_file() for f in ("tokenizer.json", "vocab.txt"))
            return str(ckpt), (path if has_tok else IR_TOKENIZER)
        return path or hub_file(IR_REPO, IR_FILE, "reward.imagereward_path"), IR_TOKENIZER

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        if len(images) != len(metas):
            raise ValueError(f"imagereward: {len(images)} images but {len(metas)} metadata rows")
        prompts, out = prompts_of(metas, "imagereward"), [torch.zeros(0)]
        for a in range(0, len(images), self.batch_size):
            px = imagereward_pixels(images[a : a + self.batch_size]).to(self.device)
            t = self.tokenizer(prompts[a : a + self.batch_size], padding="max_length", truncation=True,
                               max_length=IR_MAX_TOKENS, return_tensors="pt").to(self.device)
            out.append(self.net(px, t["input_ids"], t["attention_mask"]).float().cpu())
        return torch.cat(out)
