"""Time one DGPO epoch's phases (rollout, reward, train) on the toy default, side by side in one run.

Usage: python -m benchmarks.perf.epoch_phases [--epochs 3] [key=value ...]
Writes bench_results/epoch_phases.json and prints seconds per phase and per image.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

from dgpo.config import load_config
from dgpo.training.trainer import Trainer

from benchmarks.common import write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default="bench_results/epoch_phases.json")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"run.out_dir={tmp}", f"run.epochs={a.epochs}", "run.sample_every=0",
                                 "run.save_every=0", "run.eval_at_ends=false", *a.overrides])
        trainer = Trainer(cfg)
        t0 = time.time()
        trainer.fit()
        wall = time.time() - t0
        rows = trainer.metrics.read()
    images = cfg.train.prompts_per_epoch * cfg.train.group_size
    phases = {k: sum(r[f"time_{k}"] for r in rows) / len(rows) for k in ("rollout", "reward", "train")}
    result = {
        "config": {"P": cfg.train.prompts_per_epoch, "G": cfg.train.group_size, "steps": cfg.sampler.steps,
                   "train_timesteps": cfg.timesteps.count, "lora_rank": cfg.train.lora_rank},
        "epochs": len(rows), "wall_s": wall, "seconds_per_epoch": phases,
        "seconds_per_image": {k: v / images for k, v in phases.items()},
        "share": {k: v / sum(phases.values()) for k, v in phases.items()},
        "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
    }
    write_result(result, a.out)


if __name__ == "__main__":
    main()
