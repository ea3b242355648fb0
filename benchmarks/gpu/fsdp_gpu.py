"""Multi-GPU check of FSDP2 full fine-tuning: DGPO optimizer steps on a FLUX.1-architecture
transformer (FLUX.1-dev's widths, fewer blocks; random weights) through the real code path (FLUX
adapter, full fine-tuning with the frozen reference copy, both EMAs, AdamW, checkpoints). It prints
peak GPU memory per process and seconds per epoch, compares the step-2 checkpoint with an unsharded
reference run, and checks that a run resumed from its step-1 checkpoint writes the same step-2
checkpoint bit for bit.

Usage (from the repository root, on a node with 2+ GPUs; other --num_processes work too, the group
size is 4):
  python -m benchmarks.gpu.fsdp_gpu --run-dir /tmp/fsdp_ref                    # 1 GPU, unsharded
  accelerate launch --config_file configs/accelerate/fsdp2_8gpu.yaml --num_processes 2 \\
      -m benchmarks.gpu.fsdp_gpu --run-dir /tmp/fsdp_2
  cp -r /tmp/fsdp_2 /tmp/fsdp_2r && rm -r /tmp/fsdp_2r/checkpoints/step_000002
  accelerate launch --config_file configs/accelerate/fsdp2_8gpu.yaml --num_processes 2 \\
      -m benchmarks.gpu.fsdp_gpu --run-dir /tmp/fsdp_2r --resume
  python -m benchmarks.gpu.fsdp_gpu --report /tmp/fsdp_2 --reference /tmp/fsdp_ref --resumed /tmp/fsdp_2r
Each training process writes ``bench_rank<r>.json`` (peak memory, epoch seconds) into the run folder;
``--report`` gathers them and the checkpoint differences into bench_results/fsdp_gpu.json (``--out``).
``--tiny`` shrinks the model to test widths for a CPU smoke run (``ACCELERATE_USE_FSDP=true
FSDP_VERSION=2 FSDP_AUTO_WRAP_POLICY=TRANSFORMER_BASED_WRAP torchrun --nproc_per_node 2 -m
benchmarks.gpu.fsdp_gpu`` in place of accelerate launch). Weights are fp32 and mixed precision off so
that the comparison measures sharding alone (``--bf16``: bf16 weights and autocast, for memory and speed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from dgpo.config import load_config
from dgpo.models.flux import FluxFlowModel
from dgpo.testing.random_pipelines import clip_encoder, clip_tokenizer, kl_vae, t5_encoder, t5_tokenizer
from dgpo.training.trainer import Trainer

from benchmarks.common import write_result

# FluxTransformer2DModel config of black-forest-labs/FLUX.1-dev (its transformer/config.json)
FLUX_DEV = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
            "guidance_embeds": True, "axes_dims_rope": (16, 56, 56)}
TINY = {"patch_size": 1, "in_channels": 16, "attention_head_dim": 16, "num_attention_heads": 2,
        "joint_attention_dim": 32, "pooled_projection_dim": 32, "guidance_embeds": True, "axes_dims_rope": (4, 4, 8)}
PARTS = ("policy", "ema_old", "ema_slow", "optimizer")


def build_model(cfg, layers: int, single: int, tiny: bool, dtype: torch.dtype) -> FluxFlowModel:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    tr = FluxTransformer2DModel(**{**(TINY if tiny else FLUX_DEV), "num_layers": layers, "num_single_layers": single})
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    tok2 = t5_tokenizer()
    pipe = FluxPipeline(transformer=tr, scheduler=sched, vae=kl_vae(4 if tiny else 16, 1), tokenizer=clip_tokenizer(),
                        text_encoder=clip_encoder(clip_tokenizer(), False, 2, hidden=32 if tiny else 768, layers=1),
                        text_encoder_2=t5_encoder(tok2, 32 if tiny else 4096, 3, layers=1), tokenizer_2=tok2)
    return FluxFlowModel(pipe.to(dtype), cfg.model)


def config(run_dir: Path, a, epochs: int = 2):
    bf16 = a.bf16 and torch.cuda.is_available()
    return load_config(None, [
        "model.kind=flux", f"model.resolution={64 if a.tiny else 256}", "model.max_sequence_length=32",
        f"model.dtype={'bf16' if bf16 else 'fp32'}", f"train.mixed_precision={'bf16' if bf16 else 'no'}",
        f"run.out_dir={run_dir}", f"run.epochs={epochs}", "run.sample_every=0", "run.save_every=1",
        "run.eval_at_ends=false", "reward.name=colorfulness", "train.lora_rank=0", "train.lr=1e-5",
        "train.ema_every=1", "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=4",
        "sampler.steps=4", "timesteps.trunc_steps=2", "timesteps.count=2", "dgpo.kl_beta=0.02", "dgpo.switch_ema_ref=0",
        *a.overrides])


def train(run_dir: Path, a, resume: bool = False) -> Trainer:
    cfg = config(run_dir, a)
    dtype = torch.bfloat16 if cfg.model.dtype == "bf16" else torch.float32
    trainer = Trainer(cfg, resume=resume, model=build_model(cfg, a.layers, a.single_layers, a.tiny, dtype))
    trainer.fit()
    return trainer


def checkpoint(run_dir: Path, step: int) -> dict:
    return {p: load_file(str(run_dir / f"checkpoints/step_{step:06d}/{p}.safetensors")) for p in PARTS}


def max_diff(a: dict, b: dict) -> dict:
    return {p: max(float((a[p][k].double() - b[p][k].double()).abs().max()) for k in a[p]) for p in PARTS}


def report(a) -> None:
    run = Path(a.report)
    ranks = [json.loads(f.read_text()) for f in sorted(run.glob("bench_rank*.json"))]
    result = {**{k: ranks[0][k] for k in ("device", "processes", "fsdp", "transformer_params", "layers", "bf16")},
              "peak_memory_gib_per_process": [r["peak_memory_gib"] for r in ranks],
              "epoch_s": ranks[0]["epoch_s"]}
    if a.reference:
        ref = Path(a.reference)
        result["reference_peak_memory_gib"] = json.loads((ref / "bench_rank0.json").read_text())["peak_memory_gib"]
        result["max_abs_diff_vs_reference"] = max_diff(checkpoint(run, 2), checkpoint(ref, 2))
    if a.resumed:
        result["resume_max_abs_diff"] = max_diff(checkpoint(Path(a.resumed), 2), checkpoint(run, 2))
    write_result(result, a.out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", help="train into this run folder (shared by the processes)")
    ap.add_argument("--resume", action="store_true", help="resume the run folder's latest checkpoint")
    ap.add_argument("--report", help="a finished run folder: write its report")
    ap.add_argument("--reference", help="with --report: the unsharded run's folder (max |difference| per part)")
    ap.add_argument("--resumed", help="with --report: the resumed run's folder (should be bit-equal)")
    ap.add_argument("--layers", type=int, default=2, help="double-stream blocks (FLUX.1-dev: 19)")
    ap.add_argument("--single-layers", type=int, default=4, help="single-stream blocks (FLUX.1-dev: 38)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--out", default="bench_results/fsdp_gpu.json")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.report:
        return report(a)
    cuda = torch.cuda.is_available()
    tr = train(Path(a.run_dir), a, a.resume)
    mine = {"device": torch.cuda.get_device_name() if cuda else "cpu", "processes": tr.acc.num_processes,
            "fsdp": tr.shards.enabled, "layers": [a.layers, a.single_layers], "bf16": a.bf16,
            "transformer_params": sum(p.numel() for p in tr.policy.params),  # whole counts (a DTensor's numel)
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "epoch_s": [m["time_rollout"] + m["time_reward"] + m["time_train"] for m in tr.metrics.read()]}
    (Path(a.run_dir) / f"bench_rank{tr.acc.process_index}.json").write_text(json.dumps(mine) + "\n")


if __name__ == "__main__":
    main()
