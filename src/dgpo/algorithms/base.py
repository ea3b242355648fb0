"""The base of every algorithm: the hooks the one training loop calls, and the parts DGPO, DPO and
DiffusionNFT share.

An algorithm decides which weights roll out and how (``rollout``), which samples train and with what
signal (``select``), what one epoch's training units are (timesteps, or SDE steps: ``units``), how the
trained samples split into optimizer steps and micro-batches (``optimizer_chunks``, ``micro_batches``),
the loss of one micro-batch at one unit (``micro_loss``) and what its 'old' model does after each
optimizer step and epoch. It sees the loop only through a :class:`LoopContext`; the loop owns the
optimizer, the slow EMA, rewards, logs and checkpoints. Methods marked ``@hook`` may be overridden;
the others are shared helpers (a test holds every algorithm to that).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch

from dgpo.algorithms.context import LoopContext, Rollouts, StepLoss
from dgpo.losses.dgpo import dsm
from dgpo.models.base import cfg_velocity, cond_cat, cond_index, cond_where, encode_nulls, encode_rows
from dgpo.samplers.rollout import generate, initial_noise
from dgpo.samplers.sde import sample_sde
from dgpo.schedules import interpolate
from dgpo.seeds import Stream, derive_seed
from dgpo.timesteps import AdaptiveTMin, TrainTime, shared_noise, train_timesteps
from dgpo.training.ema import OldModelEMA, ParamEMA

__all__ = ["Algorithm", "LoopContext", "Rollouts", "StepLoss", "hook"]


def hook(fn: Callable) -> Callable:
    """Marks a method an algorithm may override."""
    fn.__dgpo_hook__ = True
    return fn


class Algorithm:
    name = ""

    def __init__(self, ctx: LoopContext):
        self.ctx, self.cfg = ctx, ctx.cfg
        self.grid = ctx.model.rollout_grid(self.rollout_method(), self.cfg.sampler.steps, ctx.shift)
        self.old_model = self.make_old_model(ctx.params)
        self._frozen: dict = {}  # (timestep slot, first position) -> reference / 'old' velocities
        d = self.cfg.timesteps  # timesteps.mode=adaptive: the online t_min, saved in checkpoints
        self.t_min_rule = (AdaptiveTMin(d.t_min, d.adaptive_lo, d.adaptive_hi, d.adaptive_rate, d.adaptive_ratio,
                                        d.adaptive_decay) if d.mode == "adaptive" else None)

    # ------------------------------------------------------------------ hooks
    @hook
    def make_old_model(self, params: list) -> ParamEMA:
        """The algorithm's 'old' model over the trainable weights, saved in checkpoints: DGPO's EMA
        (decay min(0.3, 0.001 step), every step)."""
        return OldModelEMA(params)

    @hook
    def rollout_method(self) -> str:
        """Whose grid the rollouts walk: the ODE solver's, or Euler's for SDE rollouts (Flow-GRPO's)."""
        return "euler" if self.cfg.sampler.sde_noise > 0 else self.cfg.sampler.method

    @hook
    def rollout(self, metas: list[dict], epoch: int, step: int, on_chunk=None) -> Rollouts:
        """This process's samples of the epoch with ``x0``; ``on_chunk(x0, metas)`` after each
        generated chunk (the loop scores it while the next one is generated)."""
        return self.ode_rollout(metas, epoch, step, on_chunk)

    @hook
    def rollout_context(self, step: int):
        """Which weights roll out: the frozen reference (offline), the EMA 'old' model after
        ``dgpo.switch_ema_ref`` steps, or the current policy."""
        if self.cfg.train.offline:
            return self.ctx.reference()
        return self.old_model.applied() if step > self.cfg.dgpo.switch_ema_ref else nullcontext()

    @hook
    def reference_context(self):
        """The weights of the reference forward: the frozen base (LoRA off, or the frozen copy)."""
        return self.ctx.reference()

    @hook
    def generate(self, cond, null, seeds: list[int]) -> torch.Tensor:
        """x0 of one rollout chunk: the deterministic ODE of ``sampler.method`` on its own grid."""
        s = self.cfg.sampler
        return generate(self.ctx.model, cond, null, seeds, s.steps, self.ctx.shift, s.cfg_scale, s.method)

    @hook
    def select(self, batch: Rollouts, rewards: torch.Tensor, adv: torch.Tensor, zero: torch.Tensor,
               group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Over the epoch's whole batch (global order, every process alike): rewards [N], advantages
        [N], zero-spread flags [groups], group ids [N] -> (which samples train [N] bool, signal [N])."""
        return torch.ones_like(adv, dtype=torch.bool), adv

    @hook
    def units(self, batch: Rollouts, epoch: int, step: int) -> list:
        """The epoch's training units: ``timesteps.count`` training times (DGPO's timestep clip)."""
        d = self.cfg.timesteps
        return train_timesteps(d.mode, self.grid, d.count, d.trunc_steps, self.t_min(step), self.cfg.run.seed,
                               epoch, self.cfg.train.prompts_per_epoch, self.ctx.shift)

    @hook
    def optimizer_chunks(self, group_ids: torch.Tensor, pos: torch.Tensor, epoch: int) -> list[torch.Tensor]:
        """Local positions of each optimizer step of the epoch: whole groups, evenly split."""
        groups = torch.arange(self.cfg.train.prompts_per_epoch).chunk(self.cfg.train.steps_per_epoch)
        return [pos[torch.isin(group_ids[pos], gs)] for gs in groups if len(gs)]

    @hook
    def micro_batches(self, group_ids: torch.Tensor, idx: torch.Tensor) -> list[torch.Tensor]:
        """Micro-batches of whole groups (this process's members of them): every process walks the
        same groups in the same order, so group sums can be all-reduced micro-batch by micro-batch."""
        per = max(1, self.cfg.train.batch_size // self.cfg.train.group_size)
        present = torch.unique(group_ids[idx])
        return [idx[torch.isin(group_ids[idx], gs)] for gs in present.split(per)]

    @hook
    def frozen_needs(self) -> tuple[bool, bool]:
        """Which no-grad forwards the loss reads: (the 'old' model, the frozen reference)."""
        return False, False

    @hook
    def noised(self, batch: Rollouts, mb: torch.Tensor, t: TrainTime, slot: int, epoch: int) -> dict:
        """The inputs of every forward at one training timestep: x_t re-noised at t.sigma with noise
        shared by a group, the models receiving t.timestep; the paper's prompt dropout applies to the
        policy and reference alike."""
        x0, gids = batch.x0[mb], batch.group_ids[mb]
        cond, null = self.training_conditions(batch, mb, slot, epoch)
        eps = shared_noise(tuple(x0.shape[1:]), gids, self.cfg.run.seed, epoch, slot).to(x0.device, x0.dtype)
        sigma, tt = t.at(gids)
        sigma = sigma.to(x0.device, x0.dtype) if isinstance(sigma, torch.Tensor) else sigma
        return {"x_t": interpolate(x0, eps, sigma), "t": tt.to(x0.device), "cond": cond, "null": null,
                "target": eps - x0, "sigma": sigma}

    @hook
    def micro_loss(self, batch: Rollouts, signal: torch.Tensor, mb: torch.Tensor, unit, slot: int,
                   epoch: int) -> StepLoss:
        """The loss of micro-batch ``mb`` (local positions) at one unit, with grad, summed over items."""
        raise NotImplementedError(f"{type(self).__name__} must define micro_loss")

    @hook
    def items(self, signal: torch.Tensor, idx: torch.Tensor) -> float:
        """How many loss items (samples; pairs for DPO) the local samples ``idx`` hold: the loop
        divides the summed loss by their total over processes, so the step's loss is their mean."""
        return float(len(idx))

    @hook
    def after_step(self, step: int) -> None:
        """After each optimizer step (``step``: the steps before it): the 'old' model's update."""
        self.old_model.update(step)

    @hook
    def end_epoch(self, step: int) -> None:
        """After an epoch's training, before its checkpoint (DiffusionNFT blends its 'old' model here)."""

    # ------------------------------------------------------------------ shared helpers
    def t_min(self, step: int) -> float:
        """Paper's t_min, optionally annealed linearly to ``timesteps.t_min_end`` over the run's steps, or
        the adaptive rule's current value."""
        d, epochs = self.cfg.timesteps, self.cfg.run.epochs
        if self.t_min_rule is not None:
            return self.t_min_rule.t_min
        if d.t_min_end < 0:
            return d.t_min
        frac = min(1.0, step / max(1, epochs * self.cfg.train.steps_per_epoch - 1))
        return d.t_min + frac * (d.t_min_end - d.t_min)

    def state_dict(self) -> dict:
        """The algorithm's own state for checkpoints' state.json (JSON numbers), beside its 'old' model."""
        return {"t_min_rule": self.t_min_rule.state_dict()} if self.t_min_rule is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """:meth:`state_dict` from a checkpoint (a run that saved none keeps its starting state)."""
        if self.t_min_rule is not None and "t_min_rule" in state:
            self.t_min_rule.load_state_dict(state["t_min_rule"])

    def conditions(self, metas: list[dict], epoch: int) -> Rollouts:
        """This process's samples of the epoch, without x0: global index, group, condition, null
        condition, seed. A group is an epoch slot: a prompt drawn twice in one epoch makes two groups of
        G (the official code groups by prompt text, merging them into one group of 2G)."""
        ctx, g = self.ctx, self.cfg.train.group_size
        idx = ctx.layout.local_indices(len(metas), g)
        group_ids = idx // g
        cond = cond_index(encode_rows(ctx.model, metas), group_ids)
        null = encode_nulls(ctx.model, [metas[i] for i in group_ids.tolist()])
        seeds = [derive_seed(self.cfg.run.seed, epoch, Stream.ROLLOUT, int(i)) for i in idx]
        return Rollouts(index=idx, group_ids=group_ids, cond=cond, null=null, seeds=seeds,
                        metas=[metas[i] for i in group_ids.tolist()], n_total=len(metas) * g,
                        n_groups=len(metas), epoch=epoch)

    @torch.no_grad()
    def ode_rollout(self, metas: list[dict], epoch: int, step: int, on_chunk=None) -> Rollouts:
        c, s, model = self.cfg, self.cfg.sampler, self.ctx.model
        batch = self.conditions(metas, epoch)
        chunks, bs = [], c.train.rollout_batch_size or c.train.batch_size
        with self.rollout_context(step):
            for a in range(0, len(batch.seeds), bs):
                sl = slice(a, a + bs)
                cond, null, seeds = cond_index(batch.cond, sl), cond_index(batch.null, sl), batch.seeds[sl]
                if s.sde_noise > 0:  # the ODE-vs-SDE ablation: x0 from the SDE, nothing else kept
                    fn = lambda x, t, cond=cond, null=null: cfg_velocity(model, x, t, cond, null, s.cfg_scale)
                    x = initial_noise(model.latent_shape(), seeds).to(model.device)
                    step_seeds = [derive_seed(sd, Stream.SDE_STEP) for sd in seeds]
                    chunks.append(sample_sde(fn, x, self.grid, s.sde_noise, step_seeds).x0)
                else:
                    chunks.append(self.generate(cond, null, seeds))
                if on_chunk is not None:
                    on_chunk(chunks[-1], batch.metas[sl])
        batch.x0 = torch.cat(chunks)
        return batch

    def shuffled_chunks(self, pos: torch.Tensor, epoch: int) -> list[torch.Tensor]:
        """Optimizer steps over a random shuffle of this process's trained samples, across groups (the
        official Flow-GRPO and DiffusionNFT loops; a new shuffle on every inner pass)."""
        key = derive_seed(self.cfg.run.seed, epoch, Stream.SHUFFLE, self.ctx.layout.rank)
        gen = torch.Generator().manual_seed(key)
        return list(pos[torch.randperm(len(pos), generator=gen)].tensor_split(self.cfg.train.steps_per_epoch))

    def training_conditions(self, batch: Rollouts, mb: torch.Tensor, slot: int, epoch: int) -> tuple:
        """(cond, null) of a micro-batch's training forwards: ``train.text_dropout`` (the paper's prompt
        dropout) swaps a sample's prompt for the empty one, drawn per sample, timestep and epoch."""
        cond, null = cond_index(batch.cond, mb), cond_index(batch.null, mb)
        p = self.cfg.train.text_dropout
        if p > 0:
            g = torch.Generator().manual_seed(derive_seed(self.cfg.run.seed, epoch, Stream.TEXT_DROPOUT, slot))
            drop = torch.rand(batch.n_total, generator=g)[batch.index[mb]] < p
            cond = cond_where(drop.to(batch.x0.device), null, cond)
        return cond, null

    @contextmanager
    def frozen_forwards(self, batch: Rollouts, micro: list[torch.Tensor], units: list, epoch: int) -> Iterator[None]:
        """Around an optimizer step's backward passes: with ``train.reference_batch_size``, the
        reference and 'old' forwards of all its timesteps and micro-batches run first, together, in
        forwards of up to that many samples (whole micro-batches), and :meth:`denoising_losses` reads
        them inside. The weights they read do not change within the step, so only the batch sizes
        differ from the per-micro-batch order."""
        self._frozen = {}
        need_old, need_ref = self.frozen_needs()
        size = self.cfg.train.reference_batch_size
        if size > 0 and (need_old or need_ref):
            chunk: list = []
            for slot, unit in enumerate(units):
                for mb in micro:
                    if chunk and sum(len(i["t"]) for _, i in chunk) + len(mb) > size:
                        self._run_frozen(chunk, need_old, need_ref)
                        chunk = []
                    chunk.append(((slot, int(mb[0])), self.noised(batch, mb, unit, slot, epoch)))
            if chunk:
                self._run_frozen(chunk, need_old, need_ref)
        try:
            yield
        finally:
            self._frozen = {}  # never read outside its step

    def _run_frozen(self, chunk: list, need_old: bool, need_ref: bool) -> None:
        keys, ins = zip(*chunk)
        x, t = torch.cat([i["x_t"] for i in ins]), torch.cat([i["t"] for i in ins])
        cond, null = cond_cat([i["cond"] for i in ins]), cond_cat([i["null"] for i in ins])
        out = self._frozen_velocities(x, t, cond, null, need_old, need_ref)
        sizes = [len(i["t"]) for i in ins]
        for key, *parts in zip(keys, *(v.split(sizes) for v in out.values())):
            self._frozen[key] = dict(zip(out, parts))

    def _frozen_velocities(self, x_t, t, cond, null, need_old: bool, need_ref: bool) -> dict:
        """The reference (CFG'd with ``dgpo.kl_cfg``) and 'old' velocities, without grad."""
        model, out = self.ctx.model, {}
        with torch.no_grad(), self.ctx.autocast():  # train.mixed_precision covers every forward (official)
            if need_ref:
                with self.reference_context():
                    out["v_ref"] = cfg_velocity(model, x_t, t, cond, null, self.cfg.dgpo.kl_cfg)
            if need_old:
                with self.old_model.applied():
                    out["v_old"] = model.velocity(x_t, t, cond)
        return out

    def denoising_losses(self, batch: Rollouts, mb: torch.Tensor, t: TrainTime, slot: int, epoch: int) -> dict:
        """Policy, reference (and 'old') velocities and denoising losses at :meth:`noised` inputs.
        The reference and 'old' forwards are those :meth:`frozen_needs` asks for, run here or taken
        from :meth:`frozen_forwards`."""
        i = self.noised(batch, mb, t, slot, epoch)
        frozen = self._frozen.get((slot, int(mb[0])))
        if frozen is None:
            frozen = self._frozen_velocities(i["x_t"], i["t"], i["cond"], i["null"], *self.frozen_needs())
        out = {"target": i["target"], "x_t": i["x_t"], "sigma": i["sigma"], **frozen}
        for name in ("ref", "old"):  # official: the CFG'd reference's loss when kl_cfg > 1
            if f"v_{name}" in out:
                out[f"dsm_{name}"] = dsm(out[f"v_{name}"], i["target"])
        with self.ctx.autocast():
            out["v"] = self.ctx.model.velocity(i["x_t"], i["t"], i["cond"]).float()
        out["dsm"] = dsm(out["v"], i["target"])
        return out


HOOKS = frozenset(n for n, f in vars(Algorithm).items() if getattr(f, "__dgpo_hook__", False))
