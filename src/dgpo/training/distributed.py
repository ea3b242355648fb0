"""Where each sample of an epoch lives when groups span processes, and the reductions over them.

An epoch has N = P x G samples with global index i = g G + j (group g, member j). Process r of W
holds the members j with j % W == r of *every* group, so each process has N / W samples, every
micro-batch of whole groups has the same groups on every process, and the DGPO group sums can be
all-reduced micro-batch by micro-batch. Seeds, shared noise and timesteps are functions of global
indices, so no broadcast is needed and a W-process run computes what a 1-process run computes
(Flow-GRPO-Fast's windows excepted: drawn per process and sampling batch, as the official code does).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from dgpo.errors import InputError
from dgpo.training import PeerLost


class Layout:
    def __init__(self, world: int = 1, rank: int = 0, device: str | torch.device = "cpu"):
        self.world, self.rank, self.device = world, rank, torch.device(device)

    @classmethod
    def from_accelerator(cls, acc) -> Layout:
        return cls(acc.num_processes, acc.process_index, acc.device)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def check_group_size(self, group_size: int) -> None:
        if group_size % self.world:
            raise InputError(f"train.group_size={group_size} must be a multiple of the {self.world} processes "
                             "(each process holds the same share of every group)")

    def rank_of(self, idx: torch.Tensor, group_size: int) -> torch.Tensor:
        """The process holding each global sample index."""
        return (idx % group_size) % self.world

    def local_indices(self, n_groups: int, group_size: int) -> torch.Tensor:
        """Global sample indices held by this process, in increasing order."""
        i = torch.arange(n_groups * group_size)
        return i[self.rank_of(i, group_size) == self.rank]

    def gather(self, local: torch.Tensor, local_idx: torch.Tensor, n_total: int) -> torch.Tensor:
        """Assemble a per-sample tensor [n_local, ...] from every process into global order [N, ...]."""
        if not self.distributed:
            out = local.new_zeros((n_total, *local.shape[1:]))
            out[local_idx] = local
            return out
        dev = self.device
        parts = [torch.empty_like(local, device=dev) for _ in range(self.world)]
        idxs = [torch.empty_like(local_idx, device=dev) for _ in range(self.world)]
        dist.all_gather(parts, local.contiguous().to(dev))
        dist.all_gather(idxs, local_idx.contiguous().to(dev))
        out = local.new_zeros((n_total, *local.shape[1:]))
        for p, ix in zip(parts, idxs):
            out[ix.to(out.device)] = p.to(out.device)
        return out

    def gather_rows(self, rows: list[dict]) -> list[dict]:
        """Every process's eval rows (dicts with ``index`` and ``sample``), in global order."""
        if not self.distributed:
            return rows
        from accelerate.utils import gather_object

        return sorted(gather_object(rows), key=lambda r: (r["index"], r["sample"]))

    def group_sum_fn(self, n_groups: int):
        """The injected reduction of the losses: each sample's total over its whole group, every
        process contributing its members (an all-reduce of a dense [n_groups] vector)."""

        def group_sum(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
            totals = torch.zeros(n_groups, dtype=values.dtype, device=values.device)
            totals.index_add_(0, group_ids, values)
            if self.distributed:
                dist.all_reduce(totals)
            return totals[group_ids]

        return group_sum

    def check_same(self, n: int, what: str) -> None:
        """Stop with an error (not a hang) unless every process counts the same ``n``."""
        if not self.distributed:
            return
        t = torch.tensor([n, -n], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if int(t[0]) != -int(t[1]):
            raise RuntimeError(f"processes disagree on the number of {what} (from {-int(t[1])} to {int(t[0])}); "
                               "FSDP needs every process to run the same forwards")

    def all_sum(self, x: float) -> float:
        if not self.distributed:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t)


def accelerate_kwargs(timeout_s: float) -> list:
    """accelerate's handlers: the process group's collective timeout (``train.collective_timeout_s``), and DDP
    without buffer broadcasts (the only buffers are constants every process builds alike, e.g. the FP8 copies
    of frozen weights, which a broadcast would resend at every synced forward)."""
    from datetime import timedelta

    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    return [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s)),
            DistributedDataParallelKwargs(broadcast_buffers=False)]


def layout_dependence(cfg) -> str | None:
    """Why this run's samples or optimizer steps depend on the process count (None: they do not)."""
    if cfg.train.algorithm == "flow_grpo":
        return "draws its SDE windows and zero-advantage refill per process (as its official code does)"
    if cfg.train.algorithm in ("nft", "awm") and cfg.train.steps_per_epoch > 1:
        return "shuffles each process's samples into its optimizer steps (train.steps_per_epoch > 1)"
    return None


def check_resume_processes(written: int | None, now: int, cfg, allowed: bool) -> None:
    """Resume only on the process count that wrote the checkpoint, unless ``allowed`` (``--change-processes``)
    for an algorithm whose maths does not depend on it; then the run continues the same objective on the
    same samples, equal to the uninterrupted run up to the order of float sums (not bit for bit)."""
    if written is None or written == now:
        return
    why = (f"the checkpoint was written by {written} process(es) and this run has {now}: a run resumed on "
           "another count sums gradients and group totals in another order, so it cannot continue bit for bit")
    depends = layout_dependence(cfg)
    if depends:
        raise InputError(f"{why}; and {cfg.train.algorithm} {depends}, so its samples would change too: resume "
                         f"with {written} process(es)")
    if not allowed:
        raise InputError(f"{why}; resume with {written} process(es), or pass --change-processes to continue "
                         "anyway (same samples and objective, float-order differences only)")


COLLECTIVE_FAILURES = ("gloo", "nccl", "connection reset by peer", "connection closed by peer")


@contextmanager
def peers_watched():
    """A collective that failed because another process died or hung becomes one :class:`PeerLost` line
    (which process, what failed, how to go on) instead of a C++ traceback; other errors pass."""
    try:
        yield
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not (isinstance(e, dist.DistError) or any(k in first.lower() for k in COLLECTIVE_FAILURES)):
            raise
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            rank, world = dist.get_rank(), dist.get_world_size()
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the group never formed: a peer did not join
            rank, world = int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
        else:
            raise
        raise PeerLost(f"process {rank} of {world}: a collective failed, so another "
                       f"process died or stopped answering ({first[:200]}); its own log says why. The newest "
                       "complete checkpoint is kept: relaunch with --resume") from e
