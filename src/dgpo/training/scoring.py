"""Rewards of an epoch's rollout, chunk by chunk, overlapped with generation.

``overlap=True``: each rollout chunk is decoded as soon as it is generated (in the caller's thread,
which owns the model) and scored in one background thread while the next chunk is generated;
results come back in rollout order. ``overlap=False``: the chunks are decoded and scored in one call
after the rollout. The rewards are the same either way for rewards that score each image on its own
(all of dgpo's; on a GPU, batched kernels may differ in the last bits between batch sizes). The
overlap pays where scoring waits on something other than the generator: a remote server, CPU-side
preprocessing, OCR, JPEG encoding.

With a ``guard`` (:class:`~dgpo.rewards.retry.GuardedCall`, the trainer's) each call is retried and,
if it still fails, its samples get NaN rewards and are flagged in ``failed``; the fault counts are in
``counts``. Without one, a failure raises (and stops the rollout at the next chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from dgpo.rewards.multi import MultiReward, score_parts
from dgpo.rewards.retry import CallReport, GuardedCall

Scored = tuple[torch.Tensor, dict[str, torch.Tensor]]
COUNTS = ("reward_calls", "reward_retries", "reward_timeouts", "reward_failures")


class ChunkScorer:
    def __init__(self, reward_fn, decode: Callable[[torch.Tensor], torch.Tensor], overlap: bool = True,
                 guard: GuardedCall | None = None):
        self.fn, self.decode, self.overlap, self.guard = reward_fn, decode, overlap, guard
        self._pending: list[tuple[torch.Tensor, list[dict]]] = []
        self._futures: list[Future] = []
        self._pool = None
        self.correct: torch.Tensor | None = None
        self.failed = torch.zeros(0, dtype=torch.bool)  # [n] after result(): the reward call failed
        self.counts = dict.fromkeys(COUNTS, 0)
        self.error = ""  # the last failed call's error
        if overlap:  # the scoring thread uses this process's GPU (CUDA's current device is per thread)
            cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
            device = torch.cuda.current_device() if cuda else None
            init = (lambda: torch.cuda.set_device(device)) if device is not None else None
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="dgpo-reward", initializer=init)

    def submit(self, x0: torch.Tensor, metas: list[dict]) -> None:
        """One generated chunk: latents [b, ...] and their metadata rows."""
        if len(x0) != len(metas):
            raise ValueError(f"a rollout chunk of {len(x0)} samples came with {len(metas)} metadata rows")
        if self._pool is None:
            self._pending.append((x0, list(metas)))
            return
        for f in self._futures:  # a chunk whose scoring failed stops the rollout here, not at its end
            if f.done() and f.exception() is not None:
                f.result()
        images = self.decode(x0)
        self._futures.append(self._pool.submit(self._score, images, list(metas)))

    def result(self) -> Scored:
        """(rewards [n], {component: [n]}) of every submitted sample, in submission order; the strict
        correctness [n] (or None) is left in ``self.correct``, the failed calls' samples in ``self.failed``."""
        if self._pool is None:
            outs = []
            if self._pending:
                metas = [m for _, ms in self._pending for m in ms]
                outs = [self._score(self.decode(torch.cat([x for x, _ in self._pending])), metas)]
        else:
            outs = [f.result() for f in self._futures]
        return self._assemble(outs)

    def _score(self, images: torch.Tensor, metas: list[dict]):
        """(reward, parts, correct) or None when the guarded call failed, its report, the sample count."""
        if self.guard is None:
            return score_parts(self.fn, images, metas), None, len(metas)
        out, report = self.guard(score_parts, self.fn, images, metas)
        return out, report, len(metas)

    def _assemble(self, outs: list[tuple]) -> Scored:
        self.correct, self.counts = None, dict.fromkeys(COUNTS, 0)
        for _, report, _ in outs:
            self._count(report)
        if not outs:
            self.failed = torch.zeros(0, dtype=torch.bool)
            return torch.zeros(0), {}
        ok = [o for o, _, _ in outs if o is not None]
        names = list(ok[0][1]) if ok else list(self.fn.parts) if isinstance(self.fn, MultiReward) else []
        nan = lambda n: torch.full((n,), float("nan"))  # noqa: E731 - the samples of a failed call
        self.failed = torch.cat([torch.full((n,), o is None) for o, _, n in outs])
        if ok and all(o[2] is not None for o in ok):
            self.correct = torch.cat([o[2].float() if o is not None else nan(n) for o, _, n in outs])
        total = torch.cat([o[0] if o is not None else nan(n) for o, _, n in outs])
        return total, {k: torch.cat([o[1][k] if o is not None else nan(n) for o, _, n in outs]) for k in names}

    def _count(self, report: CallReport | None) -> None:
        if report is None:
            return
        self.counts["reward_calls"] += 1
        self.counts["reward_retries"] += report.retries
        self.counts["reward_timeouts"] += report.timeouts
        if report.failed:
            self.counts["reward_failures"] += 1
            self.error = report.error

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ChunkScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
