"""Random-weight pipeline parts built offline from configs (no hub access): tokenizers with a tiny
vocabulary, CLIP / T5 / UMT5 text encoders, a KL VAE of any width and Wan's video VAE. The tests build
tiny SD3 / FLUX / Sana / Wan pipelines from them; ``benchmarks/gpu/sd35m_gpu.py`` builds an SD3.5-M-sized one
for timing."""

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
