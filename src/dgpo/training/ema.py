"""The EMAs of the official codes, over the trainable parameters only.

* ``OldModelEMA`` (theta^-, official ``ema_ref``): decay min(0.3, 0.001 * step), updated every
  optimizer step; it gives dsm_old for the PPO-style clip and rolls out after ``switch_ema_ref``.
* ``LaggedOldModel``: DiffusionNFT's 'old' model, blended once per epoch on its own schedule.
* ``SlowEMA`` (Flow-GRPO's ``EMAModuleWrapper``): decay min(decay, (1 + step) / (10 + step)),
  applied every ``every`` steps; its weights are evaluated and saved. The official loops call its
  ``step`` once per sampling batch with the optimizer-step counter, so with n sampling batches per
  optimizer step the same weights are blended n times at each update (``cadence="per_batch"``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dgpo.training.fsdp import copy_full_


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's own shard (FSDP), else the tensor: the multi-tensor ops below have no DTensor rule."""
    return t.to_local() if hasattr(t, "to_local") else t


class ParamEMA:
    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def _blend(self, decay: float) -> None:
        live, shadow = [_local(p.detach()) for p in self.params], [_local(s) for s in self.shadow]
        if decay == 0.0:
            torch._foreach_copy_(shadow, live)  # exact (lerp with weight 1 can be an ulp off)
        else:
            torch._foreach_lerp_(shadow, live, 1 - decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the EMA values into the live parameters (multi-tensor copies: hundreds of
        LoRA tensors in a few kernels)."""
        live = [_local(p.detach()) for p in self.params]
        saved = [torch.empty_like(t) for t in live]  # filled by one multi-tensor copy, not a clone per tensor
        torch._foreach_copy_(saved, live)
        torch._foreach_copy_(live, [_local(s) for s in self.shadow])
        try:
            yield
        finally:
            torch._foreach_copy_(live, saved)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Shadows by position (shards under FSDP: ``Sharding.gather`` makes them whole)."""
        return {str(i): s for i, s in enumerate(self.shadow)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Tensors "0".."n-1" of the shadow's shapes (float); anything else raises a CheckpointError."""
        from dgpo.training.checkpoint_checks import match_tensors

        match_tensors(state, [(str(i), s) for i, s in enumerate(self.shadow)], f"checkpoint {type(self).__name__}")
        for i, s in enumerate(self.shadow):
            copy_full_(s, state[str(i)])  # a shard takes its part (FSDP)


class OldModelEMA(ParamEMA):
    @staticmethod
    def decay(step: int) -> float:
        return min(0.3, 0.001 * step)

    def update(self, step: int) -> None:
        self._blend(self.decay(step))


class RefSnapshot(ParamEMA):
    """Flow-GRPO's online-DPO reference (its 'ref' adapter): a copy of the trainable weights, taken by
    :meth:`refresh` (``copy_learner_to_ref``), not by optimizer steps."""

    def update(self, step: int) -> None:
        pass

    def refresh(self) -> None:
        self._blend(0.0)


class LaggedOldModel(ParamEMA):
    """DiffusionNFT's 'old' model (its 'old' adapter): a copy of the trainable weights that rolls out and
    gives v_old, blended towards them once per epoch after the epoch's training (not per optimizer
    step): old <- d old + (1 - d) theta, d = 0 before step ``flat``, then min((step - flat) rate, cap)
    (official ``return_decay``: type 1 = 0 / 0.001 / 0.5, type 2 = 75 / 0.0075 / 0.999)."""

    def __init__(self, params, flat: int, rate: float, cap: float):
        super().__init__(params)
        self.flat, self.rate, self.cap = flat, rate, cap

    def decay(self, step: int) -> float:
        return 0.0 if step < self.flat else min((step - self.flat) * self.rate, self.cap)

    def update(self, step: int) -> None:
        pass

    def end_epoch(self, step: int) -> None:
        self._blend(self.decay(step))


CADENCES = ("per_batch", "per_step")


class SlowEMA(ParamEMA):
    def __init__(self, params, decay: float = 0.9, every: int = 8, cadence: str = "per_step", blends: int = 1):
        """``cadence``: ``per_batch`` (official): after optimizer step k (0-based) the weights, at the
        counter value k + 1, are blended ``blends`` times (sampling batches per optimizer step) when
        (k + 2) % every == 0; ``per_step``: once, at counter k, when (k + 1) % every == 0."""
        if cadence not in CADENCES:
            raise ValueError(f"unknown slow-EMA cadence {cadence!r}; allowed: {CADENCES}")
        if blends < 1:
            raise ValueError(f"blends must be >= 1, got {blends}")
        super().__init__(params)
        self.max_decay, self.every, self.cadence, self.blends = decay, every, cadence, blends

    def decay(self, step: int) -> float:
        return min(self.max_decay, (1 + step) / (10 + step))

    def update(self, step: int) -> None:
        """Called after optimizer step ``step`` (0-based).

        The official loop calls the wrapper's ``step(params, global_step)`` after every sampling
        batch: the call that ends an accumulation sees the incremented counter and the new weights,
        the ones before the next optimizer step the same counter and weights. Doing those ``blends``
        calls right after the step gives the official EMA at every optimizer step (the official loop
        makes the n - 1 later ones during the next epoch's sampling, after that epoch's eval and save)."""
        if self.cadence == "per_step":
            if (step + 1) % self.every == 0:
                self._blend(self.decay(step))
            return
        counter = step + 1
        if (counter + 1) % self.every == 0:
            for _ in range(self.blends):
                self._blend(self.decay(counter))
