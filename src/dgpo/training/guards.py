"""What keeps a run going through bad numbers and failing rewards, and what stops it when they last.

Rewards (:func:`screen_rewards`): a sample whose reward (or a component of it) is not finite, or
whose reward call failed after its retries, takes its whole group out of the epoch. A dropped group
gets no advantage and no training signal, and its rewards stay out of the other groups' advantages
(``advantages.std=global`` included: :func:`masked_advantages`) and out of the logged means. An epoch
with a failed call counts towards ``reward.max_failures`` (epochs in a row; an epoch without one
resets the count).

Steps (:class:`FaultGuard`): a step whose loss or gradient norm is not finite on any process is
skipped by every process (the flags are all-reduced): no optimizer step, no EMA update, the step
counter stays. A step left without samples because all its groups were dropped is skipped too
(cause ``reward``, or ``reward_failure`` when a reward call failed). ``train.max_bad_steps``
non-finite skips in a row (causes ``loss``, ``grad``, ``reward``) stop the run; ``reward_failure``
skips leave that count alone (``reward.max_failures`` counts them). The run stops by
:class:`RunHalted`, after the trainer saved its last good state.

Both counts live in the checkpoint's loop state (:meth:`FaultGuard.state_dict`), so ``--resume`` continues
a streak instead of starting it again: a run that keeps failing stops at the same step however often it
was killed, halted and resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dgpo.advantages import multi_reward_advantages
from dgpo.training import RunHalted
from dgpo.training.distributed import Layout

__all__ = ["EpochRewards", "FaultGuard", "RunHalted", "finite_row", "masked_advantages", "screen_rewards"]
NONFINITE = ("loss", "grad", "reward")  # the causes that count towards train.max_bad_steps


@dataclass
class EpochRewards:
    """An epoch's gathered rewards [N] after screening; every process holds the same."""

    alive: torch.Tensor  # [N] bool: the sample's group trains
    rewards: torch.Tensor  # [N], 0 in dropped groups
    parts: dict[str, torch.Tensor]  # {component: [N]}, 0 in dropped groups
    live_groups: torch.Tensor  # ids of the kept groups, increasing
    counts: dict[str, int]  # dropped_groups, nonfinite_rewards (samples, failed calls' excluded)
    cause: str  # "" (nothing dropped), "reward" (non-finite values only) or "reward_failure"

    def live(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """A per-sample tensor [N] restricted to the kept groups' samples."""
        return t if t is None or not self.cause else t[self.alive]

    def live_ids(self, group_ids: torch.Tensor) -> torch.Tensor:
        """The kept samples' group ids, renumbered 0..k-1 in order."""
        if not self.cause:
            return group_ids
        return torch.searchsorted(self.live_groups, group_ids[self.alive])


def screen_rewards(rewards: torch.Tensor, parts: dict[str, torch.Tensor], failed: torch.Tensor,
                   group_ids: torch.Tensor, n_groups: int) -> EpochRewards:
    """Drop every group with a failed or non-finite member (rewards, parts, failed: [N])."""
    nonfinite = ~torch.isfinite(rewards)
    for v in parts.values():
        nonfinite |= ~torch.isfinite(v)
    bad = failed.bool() | nonfinite
    dead = torch.zeros(n_groups, dtype=torch.bool).index_put_((group_ids,), bad, accumulate=True)
    alive = ~dead[group_ids]
    cause = "" if bool(alive.all()) else "reward_failure" if bool(failed.any()) else "reward"
    counts = {"dropped_groups": int(dead.sum()), "nonfinite_rewards": int((nonfinite & ~failed.bool()).sum())}
    clean = lambda v: torch.where(alive, v, torch.zeros((), dtype=v.dtype))  # noqa: E731
    return EpochRewards(alive, clean(rewards), {k: clean(v) for k, v in parts.items()},
                        torch.nonzero(~dead).squeeze(1), counts, cause)


def masked_advantages(er: EpochRewards, weights: dict[str, float], group_ids: torch.Tensor, n_groups: int,
                      mode: str, std: str, clip_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~dgpo.advantages.multi_reward_advantages` of the kept groups alone; dropped samples get
    0 and their groups count as zero-spread. Unchanged (bit for bit) when nothing was dropped."""
    if not er.cause:
        return multi_reward_advantages(er.rewards, er.parts, weights, group_ids, mode, std, clip_max=clip_max)
    adv, zero = torch.zeros_like(er.rewards), torch.ones(n_groups, dtype=torch.bool)
    if len(er.live_groups):
        a, z = multi_reward_advantages(er.live(er.rewards), {k: er.live(v) for k, v in er.parts.items()}, weights,
                                       er.live_ids(group_ids), mode, std, clip_max=clip_max)
        adv[er.alive], zero[er.live_groups] = a, z
    return adv, zero


def finite_row(row: dict) -> dict:
    """A metrics row with non-finite numbers as None (null in JSON: strict parsers reject NaN)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


class FaultGuard:
    def __init__(self, max_bad_steps: int, max_failures: int, layout: Layout):
        self.max_bad_steps, self.max_failures, self.layout = max_bad_steps, max_failures, layout
        self.bad_in_row, self.failed_epochs = 0, 0
        self._epoch_start = self.state_dict()

    def begin_epoch(self) -> None:
        """Mark the counts an epoch starts from (what a checkpoint that retries this epoch stores)."""
        self._epoch_start = self.state_dict()

    def state_dict(self, retry_epoch: bool = False) -> dict[str, int]:
        """The counters a resumed run continues from (so that a resume does not reset a fault's streak).
        ``retry_epoch``: for a checkpoint whose resume runs the current epoch again (a halt inside it): the
        counts as the epoch began, so that its steps and its reward calls are not counted twice."""
        if retry_epoch:
            return dict(self._epoch_start)
        return {"bad_in_row": self.bad_in_row, "failed_epochs": self.failed_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.bad_in_row, self.failed_epochs = int(state.get("bad_in_row", 0)), int(state.get("failed_epochs", 0))
        self._epoch_start = self.state_dict()

    def nonfinite(self, loss: float, grad_norm: float) -> str:
        """The cause that makes every process skip this step ("" for none): the loss, else the gradient."""
        if self.layout.all_sum(float(not math.isfinite(loss))):
            return "loss"
        return "grad" if self.layout.all_sum(float(not math.isfinite(grad_norm))) else ""

    def after_step(self, cause: str) -> tuple[dict, str]:
        """(the step's log fields, a reason to stop or "")."""
        if cause in NONFINITE:
            self.bad_in_row += 1
        elif not cause:
            self.bad_in_row = 0
        row = {"bad_step": int(bool(cause)), "bad_cause": cause, "bad_steps_in_row": self.bad_in_row}
        if self.bad_in_row < self.max_bad_steps:
            return row, ""
        return row, (f"train.max_bad_steps={self.max_bad_steps}: {self.bad_in_row} optimizer steps in a row were "
                     f"skipped for a non-finite {cause} (a NaN or inf: check the learning rate, the reward, "
                     "mixed precision)")

    def after_rewards(self, counts: dict[str, int], er: EpochRewards, error: str) -> tuple[dict, str]:
        """Sum this process's reward-call counts over processes -> (the epoch's log fields, a reason to
        stop or ""). ``error``: this process's last failed call's error."""
        totals = {k: int(self.layout.all_sum(float(v))) for k, v in counts.items()}
        self.failed_epochs = self.failed_epochs + 1 if totals["reward_failures"] else 0
        row = {**totals, **er.counts, "reward_failed_epochs": self.failed_epochs}
        if self.failed_epochs < self.max_failures:
            return row, ""
        last = f"; the last error here: {error}" if error else ""
        return row, (f"reward.max_failures={self.max_failures}: a reward call failed after its retries in "
                     f"{self.failed_epochs} epochs in a row{last}")
