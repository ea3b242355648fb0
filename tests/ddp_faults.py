"""Faults on one process of a run: ``python -m torch.distributed.run --nproc_per_node 2 ddp_faults.py
RANK OVERRIDE...`` trains with the faults of :func:`inject` on process RANK only (test_fault_training.py)."""

import sys

import torch

from dgpo.config import load_config
from dgpo.training.trainer import Trainer

NAN_STEP, FAILED_EPOCH = 1, 2  # optimizer step 1's forwards give NaN; epoch 2's reward calls all raise


def inject(tr: Trainer, rank: int) -> None:
    if tr.layout.rank != rank:
        return
    flag, inner, steps = {"on": False}, tr._optimizer_step, []

    def step(*a, **k):
        flag["on"] = len(steps) == NAN_STEP
        steps.append(1)
        try:
            return inner(*a, **k)
        finally:
            flag["on"] = False

    tr._optimizer_step = step
    tr.train_net.register_forward_hook(lambda m, i, o: o * float("nan") if flag["on"] else None)
    reward, rollout, now = tr.reward_fn, tr.algo.rollout, {}

    def tracked(metas, epoch, step, on_chunk=None):
        now["epoch"] = epoch
        return rollout(metas, epoch, step, on_chunk)

    def flaky(images, metas):
        if now["epoch"] == FAILED_EPOCH:
            raise RuntimeError("scorer crashed")
        return reward(images, metas)

    tr.algo.rollout = tracked
    tr.reward_fn = flaky


def main() -> None:
    rank, overrides = int(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    tr = Trainer(load_config(None, overrides))
    inject(tr, rank)
    tr.fit()


if __name__ == "__main__":
    main()
