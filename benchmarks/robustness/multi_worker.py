"""One process of a multi-process crash test: ``torchrun ... -m benchmarks.robustness.multi_worker PIDS_DIR FAULT
-- dgpo train arguments``. Writes its pid to PIDS_DIR/rank<r>.pid (so that the harness can kill a chosen rank
from outside), then runs ``dgpo train``; FAULT aims a self-SIGKILL at a moment no outside observer can hit:
``allreduce:RANK:N`` (entering the N-th all-reduce of this launch on rank RANK: the group sums, the fault
counters), ``evalgather:RANK:N`` (the N-th object all-gather inside an eval: the rows' gather),
``slowsave:RANK:S`` (a slow disk: each file of a checkpoint takes S more seconds to write, so that a kill of
another process surely lands inside the write), or ``none``."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch.distributed as dist


def _die_at(name: str, n: int, mark: Path, only=lambda: True) -> None:
    """SIGKILL this process as it enters the n-th call of ``torch.distributed.<name>`` for which ``only()``,
    leaving the file ``mark`` first (a fault that never fires is then told apart from a clean exit)."""
    inner, calls = getattr(dist, name), [0]

    def wrapped(*args, **kwargs):
        if only():
            calls[0] += 1
            if calls[0] == n:
                sys.stderr.flush()
                mark.write_text(name)
                os.kill(os.getpid(), signal.SIGKILL)
        return inner(*args, **kwargs)

    setattr(dist, name, wrapped)


def _in_eval_flag() -> dict:
    """A flag that is on while the trainer evaluates (its ``_evaluate``)."""
    from dgpo.training.trainer import Trainer

    flag, inner = {"on": False}, Trainer._evaluate

    def evaluate(self, *args, **kwargs):
        flag["on"] = True
        try:
            return inner(self, *args, **kwargs)
        finally:
            flag["on"] = False

    Trainer._evaluate = evaluate
    return flag


def arm(fault: str, rank: int, mark: Path) -> None:
    if fault == "none":
        return
    kind, target, n = fault.split(":")
    if int(target) != rank:
        return
    if kind == "allreduce":
        _die_at("all_reduce", int(n), mark)
    elif kind == "evalgather":
        flag = _in_eval_flag()
        _die_at("all_gather_object", int(n), mark, lambda: flag["on"])  # the eval rows' gather
    elif kind == "slowsave":
        from dgpo.training import checkpoints

        inner = checkpoints.save_file

        def slow(*args, **kwargs):
            time.sleep(float(n))
            return inner(*args, **kwargs)

        checkpoints.save_file = slow
    else:
        raise SystemExit(f"unknown fault {fault!r}")


def main() -> int:
    pids, fault, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: multi_worker PIDS_DIR FAULT -- dgpo train arguments"
    rank = int(os.environ.get("RANK", "0"))
    Path(pids).mkdir(parents=True, exist_ok=True)
    (Path(pids) / f"rank{rank}.pid").write_text(str(os.getpid()))
    arm(fault, rank, Path(pids) / "fired")
    from dgpo.cli import main as dgpo_main

    return dgpo_main(["train", *args])


if __name__ == "__main__":
    sys.exit(main())
