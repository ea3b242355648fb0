"""Random-weight pipeline parts built offline from configs (no hub access): tokenizers with a tiny
vocabulary, CLIP / T5 / UMT5 text encoders, a KL VAE of any width and Wan's video VAE. The tests build
tiny SD3 / FLUX / Sana / Wan pipelines from them; ``benchmarks/gpu/sd35m_gpu.py`` builds an SD3.5-M-sized one
for timing. The editing families' tiny pipelines (FLUX.1 Kontext, Qwen-Image-Edit and Plus, with a Qwen2.5-VL and
its processor) are built here whole: ``build_flux_kontext``, ``build_qwenimage_edit``."""

from __future__ import annotations

import torch


def _byte_alphabet() -> list[str]:
    """GPT-2's reversible byte -> printable-unicode map (the CLIP tokenizer's base alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def clip_tokenizer():
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    from transformers import T5Tokenizer

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in letters] + [("▁" + c, -3.5) for c in letters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=256)


def clip_encoder(tok, projection: bool, seed: int, hidden: int = 32, layers: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_hidden_layers=layers,
                         num_attention_heads=4, projection_dim=hidden, max_position_embeddings=77,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                         pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def t5_encoder(tok, d_model: int, seed: int, layers: int = 2):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_ff=37, d_kv=8, num_layers=layers, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg).eval()


def kl_vae(latent_channels: int, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4, layers_per_block=1,
                         use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.06, scaling_factor=1.5)


def umt5_encoder(tok, d_model: int, seed: int, layers: int = 2):
    """Wan's text encoder (UMT5, google/umt5-xxl's architecture) at any width."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=len(tok), d_model=d_model, d_ff=37, d_kv=8, num_layers=layers, num_heads=4,
                     decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return UMT5EncoderModel(cfg).eval()


def wan_vae(seed: int, ti2v: bool = False):
    """Wan's video VAE, tiny (diffusers' own test sizes): Wan2.1's (16 channels, 8x spatial, 4x temporal), or
    Wan2.2 TI2V-5B's (48 channels, residual blocks, 2x2 patches: 16x spatial). Per-channel latent statistics
    that are not 0 / 1, so that decoding checks the de-normalisation."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    z = 48 if ti2v else 16
    g = torch.Generator().manual_seed(seed)
    stats = {"latents_mean": (torch.randn(z, generator=g) * 0.3).tolist(),
             "latents_std": (torch.rand(z, generator=g) + 0.5).tolist()}
    extra = ({"is_residual": True, "patch_size": 2, "scale_factor_spatial": 16, "in_channels": 12, "out_channels": 12}
             if ti2v else {})  # TI2V's VAE reads and writes 2x2-patchified RGB: 12 channels
    return AutoencoderKLWan(base_dim=3, z_dim=z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], **stats, **extra)


# -- the editing families: FLUX.1 Kontext, Qwen-Image-Edit (and Plus), tiny and offline

# Qwen-Image-Edit's system prompt; the pipelines drop the first 64 tokens of the templated prompt (the real
# tokenizer's length of everything before the user's part). The tiny tokenizer below gives that part 64 tokens
# too: the chat and vision markers and most of the system text are single added tokens, the rest bytes.
QWEN_EDIT_SYSTEM = ("Describe the key features of the input image (color, shape, size, texture, objects, background), "
                    "then explain how the user's text instruction should alter or modify the image. Generate a new "
                    "image that meets the user's requirements while maintaining consistency with the original input "
                    "where appropriate.")
QWEN_EDIT_TAIL = 47  # bytes of the system text left to the byte alphabet: 17 + 47 = 64 tokens before the user part
QWEN_MARKERS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def qwen_edit_tokenizer():
    """A byte-level Qwen2 tokenizer with Qwen2.5-VL's chat and vision markers as special tokens."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(_byte_alphabet())}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[])
    tok.add_tokens([AddedToken(m, special=True) for m in QWEN_MARKERS])
    tok.add_tokens([AddedToken(QWEN_EDIT_SYSTEM[:-QWEN_EDIT_TAIL], normalized=False)])
    return tok


def qwen_vl_processor(tok):
    """Qwen2-VL's processor (PIL image backend: no torchvision) over ``tok``: 14 px patches merged 2x2, so a
    64 px image is 4 vision tokens."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from dgpo.testing.qwen_vl import TinyQwen2VLProcessor

    images = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=128 * 128, patch_size=14, merge_size=2,
                                      temporal_patch_size=2)
    return TinyQwen2VLProcessor(image_processor=images, tokenizer=tok)


def qwen_vl_encoder(tok, seed: int):
    """Qwen2.5-VL at hidden size 16 (one text layer, one vision block), its marker ids from ``tok``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {name: tok.convert_tokens_to_ids(m) for name, m in
           (("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"))}
    torch.manual_seed(seed)
    cfg = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "bos_token_id": None,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                     "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 16,
                       "fullatt_block_indexes": [0]}, **ids)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def build_flux_kontext(folder):
    """A tiny FluxKontextPipeline (FLUX.1-dev's layout, guidance embedded) saved at ``folder``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    tok2 = t5_tokenizer()
    pipe = FluxKontextPipeline(transformer=tr, scheduler=sched, vae=kl_vae(4, 1),
                               text_encoder=clip_encoder(clip_tokenizer(), False, 2), tokenizer=clip_tokenizer(),
                               text_encoder_2=t5_encoder(tok2, 32, 3), tokenizer_2=tok2)
    pipe.save_pretrained(folder)
    return folder


def build_qwenimage_edit(folder, plus: bool = False):
    """A tiny QwenImageEditPipeline (or QwenImageEditPlusPipeline) saved at ``folder``."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )

    tok = qwen_edit_tokenizer()
    torch.manual_seed(0)
    tr = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                     attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                     axes_dims_rope=(4, 6, 6))
    torch.manual_seed(1)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 2.0, 1.2])
    # Qwen-Image's own scheduler config: exponential dynamic shift, sigmas stretched to end at 0.02
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                            base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                                            time_shift_type="exponential")
    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    pipe = cls(transformer=tr, scheduler=sched, vae=vae, text_encoder=qwen_vl_encoder(tok, 2), tokenizer=tok,
               processor=qwen_vl_processor(tok))
    pipe.save_pretrained(folder)
    return folder
