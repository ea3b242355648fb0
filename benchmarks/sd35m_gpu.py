"""GPU check: DGPO iterations on an SD3.5-Medium-sized transformer (random weights; the
transformer config of stabilityai/stable-diffusion-3.5-medium, in ``SD35M`` below) at 512 px through the real code path (SD3 adapter, LoRA
r64 on the official targets, rollouts with CFG, rewards, DGPO loss, AdamW), printing seconds per
sample per phase and peak GPU memory. Text encoders and VAE are random and small but have the real
interface widths (CLIP 768 + 1280 -> pooled 2048, T5 4096), so the transformer sees real shapes.

Usage (GPU): python benchmarks/sd35m_gpu.py [--epochs 3] [--tiny] [key=value ...]
``--tiny`` shrinks the transformer to 2 layers for a CPU smoke run. Writes bench_results/sd35m_gpu.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from _results import write_result  # benchmarks/ is on sys.path when a script runs

from dgpo.config import load_config
from dgpo.models.random_pipelines import clip_encoder, clip_tokenizer, kl_vae, t5_encoder, t5_tokenizer
from dgpo.models.sd3 import SD3FlowModel
from dgpo.training.trainer import Trainer

# SD3Transformer2DModel config of stabilityai/stable-diffusion-3.5-medium (its transformer/config.json)
SD35M = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
         "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
         "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 384,
         "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm"}


def build_pipeline(tiny: bool, dtype: torch.dtype):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    cfg = dict(SD35M)
    if tiny:
        cfg.update(num_layers=2, dual_attention_layers=[0], num_attention_heads=4, caption_projection_dim=256)
    torch.manual_seed(0)
    tr = SD3Transformer2DModel(**cfg)
    tok, tok3 = clip_tokenizer(), t5_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=kl_vae(16, 1),
        text_encoder=clip_encoder(tok, True, 2, hidden=768, layers=1), tokenizer=tok,
        text_encoder_2=clip_encoder(tok, True, 3, hidden=1280, layers=1), tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_encoder(tok3, 4096, 4, layers=1), tokenizer_3=tok3)
    return pipe.to(dtype), sum(p.numel() for p in tr.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3, help="the first is warm-up and not averaged")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="bench_results/sd35m_gpu.json")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    pipe, n_params = build_pipeline(a.tiny, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [
            "model.kind=sd3", "model.resolution=512", "model.max_sequence_length=128",
            f"model.dtype={'bf16' if cuda else 'fp32'}", f"train.mixed_precision={'bf16' if cuda else 'no'}",
            f"run.out_dir={tmp}", f"run.epochs={a.epochs}", "run.sample_every=0", "run.save_every=0",
            "run.eval_at_ends=false", "sampler.shift=3.0", "reward.name=colorfulness", "train.lora_rank=64",
            "train.lora_alpha=128", "train.lr=3e-4", "train.prompts_per_epoch=2", "train.group_size=4",
            "train.batch_size=8", "dgpo.kl_beta=0.02", "dgpo.switch_ema_ref=500", *a.overrides])
        model = SD3FlowModel(pipe, cfg.model)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(cfg, model=model)
        t0 = time.time()
        trainer.fit()
        wall = time.time() - t0
        rows = trainer.metrics.read()
    images = cfg.train.prompts_per_epoch * cfg.train.group_size
    timed = rows[1:] or rows
    per_sample = {k: sum(r[f"time_{k}"] for r in timed) / len(timed) / images for k in ("rollout", "reward", "train")}
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "tiny": a.tiny,
              "transformer_params": n_params, "trainable_params": sum(p.numel() for p in trainer.policy.params),
              "images_per_epoch": images, "resolution": 512, "rollout_steps": cfg.sampler.steps,
              "train_timesteps": cfg.dgpo.num_train_timesteps, "seconds_per_sample": per_sample,
              "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
              "wall_s": wall, "epochs": a.epochs}
    write_result(result, a.out)


if __name__ == "__main__":
    main()
