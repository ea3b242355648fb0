"""Per-step instruments of a run: where the reward moves (per category), whether the groups hold a
correct sample at all (the headroom RL can exploit), and how far the policy travels.

Pure functions of tensors and metadata, plus one small tracker of the trainable parameters.
"""

from __future__ import annotations

from collections import defaultdict

import torch


def reward_by_category(rewards: torch.Tensor, metas: list[dict]) -> dict[str, float]:
    """Mean reward per prompt category (``tag``) -> {"reward/<tag>": mean}; rows without a tag skip."""
    by: dict[str, list[float]] = defaultdict(list)
    for r, m in zip(rewards.tolist(), metas):
        if m.get("tag"):
            by[m["tag"]].append(r)
    return {f"reward/{t}": sum(v) / len(v) for t, v in sorted(by.items())}


def group_correct_shares(correct: torch.Tensor, group_ids: torch.Tensor) -> dict[str, float]:
    """From strict 0/1 correctness [N] and group ids [N]:

    * ``best_correct_share``: share of groups with at least one strictly correct sample (pass@G of
      the rollouts: what a group-relative method can learn from);
    * ``correct_share``: share of samples that are correct (pass@1 of the rollouts).
    """
    k = int(group_ids.max()) + 1
    any_ok = torch.zeros(k, dtype=torch.bool).index_put_((group_ids,), correct.bool(), accumulate=True)
    return {"best_correct_share": float(any_ok.float().mean()), "correct_share": float(correct.float().mean())}


class TravelMeter:
    """How far the trainable parameters move: ``update_norm`` = ||theta_t - theta_{t-1}|| (this step)
    and ``dist_from_start`` = ||theta_t - theta_0|| (the run's start; for LoRA the adapter's own
    parameters, whose B starts at zero, so this measures the adapter's size). Sharded parameters
    (FSDP) keep only their local shards; ``all_sum`` adds the squared norms over processes.

    Two float32 copies of the (local) trainable parameters stay on their device (for LoRA a few
    hundred MB on a GPU; for full fine-tuning of a large model as much as two optimizer moments); the
    norms are computed there and read with one synchronisation per step."""

    def __init__(self, params: list[torch.nn.Parameter], all_sum=None):
        self.params = params
        self.all_sum = all_sum or (lambda x: x)
        self.start = self._now()
        self.prev = [s.clone() for s in self.start]

    def _local(self) -> list[torch.Tensor]:
        return [getattr(p, "to_local", lambda p=p: p)().detach() for p in self.params]  # a DTensor's own shard

    def _now(self) -> list[torch.Tensor]:
        return [t.float().clone() for t in self._local()]

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        """Squared distances tensor by tensor (no third whole copy), then ``prev`` updated in place."""
        upd, dist = [], []
        for t, prev, start in zip(self._local(), self.prev, self.start):
            cur = t.float()
            upd.append((cur - prev).pow(2).sum())
            dist.append((cur - start).pow(2).sum())
            prev.copy_(cur)
        upd, dist = torch.stack([torch.stack(upd).sum(), torch.stack(dist).sum()]).tolist() if upd else (0.0, 0.0)
        upd, dist = self.all_sum(upd) ** 0.5, self.all_sum(dist) ** 0.5
        return {"update_norm": upd, "dist_from_start": dist}

    def resumed(self) -> None:
        """After a checkpoint load: theta_0 is rebuilt from the seed at construction; the previous
        step's parameters are the loaded ones."""
        self.prev = self._now()
