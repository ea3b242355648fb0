"""Rewards overlapped with rollouts: the toy default with the `remote` reward on a loopback server whose
scorer is busy ``--latency-s`` per call (standing in for a GPU scorer elsewhere), overlap off and on.

Usage: python -m benchmarks.perf.reward_overlap [--epochs 4] [--latency-s 1.0] [key=value ...]
Writes bench_results/reward_overlap.json: per arm, the seconds per epoch spent generating and waiting
for rewards after the rollout (the first epoch dropped), and whether the rewards are identical.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from dgpo.config import load_config
from dgpo.rewards import build_reward
from dgpo.rewards.server import RewardServer
from dgpo.training.trainer import Trainer

from benchmarks.common import write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--latency-s", type=float, default=1.0)
    ap.add_argument("--out", default="bench_results/reward_overlap.json")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(1)
    jpeg = build_reward("jpeg_incompressibility")

    def busy(images, metas):
        time.sleep(a.latency_s)
        return jpeg(images, metas)

    arms = {}
    with RewardServer(busy, "busy-jpeg") as srv, tempfile.TemporaryDirectory() as tmp:
        for overlap in (False, True):
            cfg = load_config(None, [f"run.out_dir={tmp}/{overlap}", f"run.epochs={a.epochs}",
                                     "run.sample_every=0", "run.save_every=0", "run.eval_at_ends=false",
                                     "train.batch_size=16",
                                     "reward.name=remote", f"reward.url={srv.url}",
                                     f"reward.overlap={overlap}",
                                     *a.overrides])
            trainer = Trainer(cfg)
            trainer.fit()
            rows = trainer.metrics.read()[1:]
            arms[f"overlap={overlap}"] = {
                "rollout_s": sum(r["time_rollout"] for r in rows) / len(rows),
                "reward_wait_s": sum(r["time_reward"] for r in rows) / len(rows),
                "reward_means": [r["reward_mean"] for r in rows],
            }
    same = arms["overlap=False"]["reward_means"] == arms["overlap=True"]["reward_means"]
    result = {"latency_s_per_scorer_call": a.latency_s, "server_batch_size": 32, "train_batch_size": 16,
              "epochs_timed": a.epochs - 1, **arms, "identical_rewards": same}
    write_result(result, a.out)


if __name__ == "__main__":
    main()
