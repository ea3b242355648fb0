"""Rewards of an epoch's rollout, chunk by chunk, overlapped with generation.

``overlap=True``: each rollout chunk is decoded as soon as it is generated (in the caller's thread,
which owns the model) and scored in one background thread while the next chunk is generated;
results come back in rollout order. ``overlap=False``: the chunks are decoded and scored in one call
after the rollout. The rewards are the same either way for rewards that score each image on its own
(all of dgpo's; on a GPU, batched kernels may differ in the last bits between batch sizes). The
overlap pays where scoring waits on something other than the generator: a remote server, CPU-side
preprocessing, OCR, JPEG encoding.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from dgpo.rewards.multi import score_parts

Scored = tuple[torch.Tensor, dict[str, torch.Tensor]]


class ChunkScorer:
    def __init__(self, reward_fn, decode: Callable[[torch.Tensor], torch.Tensor], overlap: bool = True):
        self.fn, self.decode, self.overlap = reward_fn, decode, overlap
        self._pending: list[tuple[torch.Tensor, list[dict]]] = []
        self._futures: list[Future] = []
        self._pool = None
        self.correct: torch.Tensor | None = None
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
        self._futures.append(self._pool.submit(score_parts, self.fn, images, list(metas)))

    def result(self) -> Scored:
        """(rewards [n], {component: [n]}) of every submitted sample, in submission order; the strict
        correctness [n] (or None) is left in ``self.correct``."""
        self.correct = None
        if self._pool is None:
            if not self._pending:
                return torch.zeros(0), {}
            x0 = torch.cat([x for x, _ in self._pending])
            total, parts, self.correct = score_parts(self.fn, self.decode(x0), [m for _, ms in self._pending for m in ms])
            return total, parts
        outs = [f.result() for f in self._futures]
        if not outs:
            return torch.zeros(0), {}
        if all(c is not None for _, _, c in outs):
            self.correct = torch.cat([c for _, _, c in outs])
        total = torch.cat([t for t, _, _ in outs])
        return total, {k: torch.cat([p[k] for _, p, _ in outs]) for k in outs[0][1]}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ChunkScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
