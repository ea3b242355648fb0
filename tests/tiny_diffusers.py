"""Tiny, randomly initialised SD3 / FLUX / Sana / Qwen-Image pipelines built offline from configs and saved as
ordinary diffusers folders (64 px images, 8x8 latents), and Wan's video pipelines (Wan2.1, Wan2.2's two
experts, TI2V-5B). Only for tests: no hub access."""

from __future__ import annotations

from pathlib import Path

import torch

from dgpo.testing.random_pipelines import clip_encoder, clip_tokenizer, kl_vae, t5_encoder, t5_tokenizer


def build_sd3(folder: Path) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                               attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                               caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=32)
    tok, tok3 = clip_tokenizer(), t5_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=kl_vae(16, 1),
        text_encoder=clip_encoder(tok, True, 2), tokenizer=tok, text_encoder_2=clip_encoder(tok, True, 3),
        tokenizer_2=clip_tokenizer(), text_encoder_3=t5_encoder(tok3, 64, 4), tokenizer_3=tok3)
    pipe.save_pretrained(folder)
    return folder


def build_flux(folder: Path, guidance: bool = True) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                pooled_projection_dim=32, guidance_embeds=guidance, axes_dims_rope=(4, 4, 8))
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    tok2 = t5_tokenizer()
    pipe = FluxPipeline(transformer=tr, scheduler=sched, vae=kl_vae(4, 1),
                        text_encoder=clip_encoder(clip_tokenizer(), False, 2), tokenizer=clip_tokenizer(),
                        text_encoder_2=t5_encoder(tok2, 32, 3), tokenizer_2=tok2)
    pipe.save_pretrained(folder)
    return folder


def build_sana(folder: Path) -> Path:
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model, GemmaTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "▁": 5}
    for c in letters:
        vocab[c], vocab["▁" + c] = len(vocab), len(vocab) + 1
    tok = GemmaTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(0)
    tr = SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=8,
                                cross_attention_dim=16, caption_channels=16, sample_size=8, patch_size=1)
    torch.manual_seed(1)
    blocks = ("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock")
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=8, encoder_block_types=blocks,
                        decoder_block_types=blocks, encoder_block_out_channels=(8, 8, 8, 8),
                        decoder_block_out_channels=(8, 8, 8, 8), encoder_layers_per_block=(1, 1, 1, 1),
                        decoder_layers_per_block=(1, 1, 1, 1), encoder_qkv_multiscales=((), (), (), (5,)),
                        decoder_qkv_multiscales=((), (), (), (5,)), scaling_factor=0.41)
    torch.manual_seed(2)
    te = Gemma2Model(Gemma2Config(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=8)).eval()
    sched = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        algorithm_type="dpmsolver++", solver_order=2)
    pipe = SanaPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=tr, scheduler=sched)
    pipe.save_pretrained(folder)
    return folder


BUILDERS = {"sd3": build_sd3, "flux": build_flux, "sana": build_sana}


# Qwen-Image's prompt template; the pipeline drops the first 34 tokens (the real tokenizer's length of
# the part before the prompt). The tiny byte-level tokenizer below gives that part 34 tokens too: the
# chat markers and most of the system text are single added tokens, the last 24 characters are bytes.
QWEN_SYSTEM = ("system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
               "spatial relationships of the objects and background:")


def qwen_tokenizer():
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    from dgpo.testing.random_pipelines import _byte_alphabet

    vocab = {c: i for i, c in enumerate(_byte_alphabet())}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[])
    tok.add_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True),
                    AddedToken(QWEN_SYSTEM[:-24], normalized=False)])
    return tok


def build_qwenimage(folder: Path) -> Path:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = qwen_tokenizer()
    torch.manual_seed(0)
    tr = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                     attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                     axes_dims_rope=(4, 6, 6))
    torch.manual_seed(1)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 2.0, 1.2])
    torch.manual_seed(2)
    cfg = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "bos_token_id": None,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                     "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 16})
    te = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    # Qwen-Image's own scheduler config: exponential dynamic shift, sigmas stretched to end at 0.02
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                            base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                                            time_shift_type="exponential")
    pipe = QwenImagePipeline(transformer=tr, scheduler=sched, vae=vae, text_encoder=te, tokenizer=tok)
    pipe.save_pretrained(folder)
    return folder


BUILDERS["qwenimage"] = build_qwenimage


def wan_transformer(seed: int, channels: int = 16):
    """diffusers' own tiny Wan test transformer (tests/pipelines/wan)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                 in_channels=channels, out_channels=channels, text_dim=32, freq_dim=256, ffn_dim=32,
                                 num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                 rope_max_seq_len=32)


def build_wan(folder: Path, variant: str = "2.1") -> Path:
    """A tiny WanPipeline: ``"2.1"`` (one transformer), ``"2.2"`` (A14B's two experts, boundary 0.875, the
    card's shift 12) or ``"ti2v"`` (TI2V-5B's 48-channel VAE, 16x spatial, per-token timesteps). The
    scheduler is the model cards' UniPC with flow sigmas (its flow_shift is the family's default shift)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from dgpo.testing.random_pipelines import umt5_encoder, wan_vae

    tok = t5_tokenizer()
    ti2v = variant == "ti2v"
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                    flow_shift=12.0 if variant == "2.2" else 3.0)
    extra = {}
    if variant == "2.2":
        extra = {"transformer_2": wan_transformer(3), "boundary_ratio": 0.875}
    elif ti2v:
        extra = {"expand_timesteps": True}
    pipe = WanPipeline(tokenizer=tok, text_encoder=umt5_encoder(tok, 32, 1), vae=wan_vae(2, ti2v=ti2v),
                       scheduler=sched, transformer=wan_transformer(0, 48 if ti2v else 16), **extra)
    pipe.save_pretrained(folder)
    return folder


BUILDERS["wan"] = build_wan


def _edit_builders():
    """The editing families' tiny pipelines (dgpo.testing.random_pipelines; tests/test_edit_models.py)."""
    from functools import partial

    from dgpo.testing.random_pipelines import build_flux_kontext, build_qwenimage_edit

    return {"flux_kontext": build_flux_kontext, "qwenimage_edit": build_qwenimage_edit,
            "qwenimage_edit_plus": partial(build_qwenimage_edit, plus=True)}


BUILDERS.update(_edit_builders())


def video_brightness(videos: torch.Tensor, metas: list[dict]) -> torch.Tensor:
    """A video reward for tests (``reward.name=tiny_diffusers:video_brightness`` with tests/ on PYTHONPATH):
    each video's mean pixel value."""
    assert videos.dim() == 5 and videos.shape[2] == 3, videos.shape  # [B, F, 3, H, W]
    return videos.mean(dim=(1, 2, 3, 4))


video_brightness.modality = "video"
