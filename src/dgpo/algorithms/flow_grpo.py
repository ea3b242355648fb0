"""Flow-GRPO (arXiv 2505.05470), the official code's behaviour: SDE rollouts (noise level a) on SD3's
flow-matching Euler grid with per-step Gaussian log-probs averaged over elements, the clipped GRPO
objective on the trained steps (the first int(steps x timestep_fraction), or a Flow-GRPO-Fast SDE
window), CFG during training (the unconditional branch detached by default), closed-form KL to the
reference, samples with advantage exactly 0 dropped (and some re-added to fill the sampling
batches), optimizer steps over a random shuffle of the samples across groups. ``grpo.guard``: GRPO-Guard
(arXiv 2510.22319) on top, RatioNorm on the rollout's stored step means and the 1 / |dt| reweight."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from dgpo.advantages import refill_zero_advantage
from dgpo.algorithms.base import Algorithm, StepLoss
from dgpo.losses.flow_grpo import GRPOLoss, flow_grpo_loss, grpo_guard_loss, step_kl
from dgpo.models.base import cfg_velocity, cond_cat, cond_index, guide
from dgpo.samplers.rollout import initial_noise
from dgpo.samplers.sde import make_step, sample_sde, step_logprob
from dgpo.seeds import Stream, derive_seed


class FlowGRPO(Algorithm):
    name = "flow_grpo"

    def rollout_method(self) -> str:
        return "euler"  # official: SD3's FlowMatchEulerDiscreteScheduler grid

    def rollout_context(self, step):
        return self.ctx.reference() if self.cfg.train.offline else nullcontext()

    def sde_steps(self, epoch: int, sampling_batch: int = 0) -> list[int]:
        """The stochastic steps of one sampling batch: all of them, or Flow-GRPO-Fast's window, drawn anew
        for every sampling batch (``train.sampling_batches`` per process and epoch) on every process, as
        the official Fast pipeline does once per call."""
        g, n = self.cfg.grpo, self.cfg.sampler.steps
        if g.sde_window == 0:
            return list(range(n))
        hi = max(0, min(g.sde_window_range, n) - g.sde_window)
        key = derive_seed(self.cfg.run.seed, epoch, Stream.SDE_WINDOW, self.ctx.layout.rank, sampling_batch)
        start = int(torch.randint(0, hi + 1, (1,), generator=torch.Generator().manual_seed(key)))
        return list(range(start, start + g.sde_window))

    def _chunks(self, n: int) -> list[tuple[slice, int]]:
        """Rollout chunks of ``train.rollout_batch_size`` (else ``train.batch_size``) local samples with
        their sampling batch; with Flow-GRPO-Fast's windows none spans two sampling batches (equal parts
        of the process's samples), so the windows do not depend on the chunk size."""
        c = self.cfg.train
        bs = c.rollout_batch_size or c.batch_size
        parts = min(c.sampling_batches, n) if self.cfg.grpo.sde_window else 1
        bounds = [n * k // parts for k in range(parts + 1)]
        return [(slice(a, min(a + bs, hi)), k) for k, (lo, hi) in enumerate(zip(bounds, bounds[1:]))
                for a in range(lo, hi, bs)]

    @torch.no_grad()
    def rollout(self, metas, epoch, step, on_chunk=None):
        c, model = self.cfg, self.ctx.model
        batch = self.conditions(metas, epoch)
        parts, starts = [], []
        with self.rollout_context(step):
            for sl, sampling_batch in self._chunks(len(batch.seeds)):
                cond, null = cond_index(batch.cond, sl), cond_index(batch.null, sl)
                fn = lambda x, t, cond=cond, null=null: self.velocity(x, t, cond, null, grad=False, rollout=True)
                seeds = batch.seeds[sl]
                x = initial_noise(model.latent_shape(), seeds).to(model.device)
                step_seeds = [derive_seed(sd, Stream.SDE_STEP) for sd in seeds]
                steps = self.sde_steps(epoch, sampling_batch)
                parts.append(sample_sde(fn, x, self.grid, c.grpo.noise_level, step_seeds, steps, c.grpo.sde_type,
                                        keep_means=c.grpo.guard))
                starts += [steps[0]] * len(seeds)
                if on_chunk is not None:
                    on_chunk(parts[-1].x0, batch.metas[sl])
        batch.x0 = torch.cat([p.x0 for p in parts])
        batch.latents = torch.cat([p.latents for p in parts])
        batch.log_probs = torch.cat([p.log_probs for p in parts])
        batch.sde_start = torch.tensor(starts)  # per local sample: its sampling batch's first stochastic step
        if c.grpo.guard:  # GRPO-Guard: the rollout policy's step means
            batch.extra["sde_means"] = torch.cat([p.means for p in parts])
        return batch

    def velocity(self, x, t, cond, null, grad: bool, rollout: bool = False):
        """CFG velocity (v_u + s (v_c - v_u), or the family's ``guide``), official train.cfg: the rollout's
        and the training forward's are one and the same computation (both branches in one batched call
        under the same autocast), so that before an update the training forward reproduces the rollout's
        log-probs exactly, in bf16 too (Qwen-Image: to rounding, its text is cut per batch); in training
        v_u is detached (official SD3 compute_log_prob; the official Qwen-Image script does not detach
        it: ``grpo.detach_uncond=false``). ``grpo.cfg_train=false`` drops CFG from the training forwards
        (policy and reference) only: rollouts keep it, as official."""
        model, scale = self.ctx.model, self.cfg.sampler.cfg_scale
        with self.ctx.autocast():
            if scale == 1.0 or not (rollout or self.cfg.grpo.cfg_train):
                return model.velocity(x, t, cond)
            if not grad:
                return cfg_velocity(model, x, t, cond, null, scale)
            v_c, v_u = model.velocity(torch.cat([x, x]), torch.cat([t, t]), cond_cat([cond, null])).chunk(2)
            return guide(model, v_c, v_u.detach() if self.cfg.grpo.detach_uncond else v_u, scale, t)

    def select(self, batch, rewards, adv, zero, group_ids):
        c = self.cfg
        if c.grpo.zero_adv == "groups":
            return ~zero[group_ids], adv
        gen = torch.Generator().manual_seed(derive_seed(c.run.seed, batch.epoch, Stream.ZERO_ADV_REFILL))
        owner = self.ctx.layout.rank_of(torch.arange(len(adv)), c.train.group_size)
        keep = refill_zero_advantage(adv, owner, self.ctx.layout.world, c.train.sampling_batches, gen,
                                     batch.alive, equal=self.ctx.lockstep)  # FSDP: the same forwards
        return keep, adv

    def optimizer_chunks(self, group_ids, pos, epoch):
        """Official: each optimizer step takes an equal share of a random shuffle of this process's
        kept samples, across groups (a new shuffle on every inner pass)."""
        if not self.cfg.grpo.shuffle:
            return super().optimizer_chunks(group_ids, pos, epoch)
        return self.shuffled_chunks(pos, epoch)

    def micro_batches(self, group_ids, idx):
        if not self.cfg.grpo.shuffle:
            return super().micro_batches(group_ids, idx)
        return list(idx.split(self.cfg.train.batch_size))  # the loss needs no group sums

    def units(self, batch, epoch, step):
        """Trained steps: the first int(steps x timestep_fraction), or the k-th step of each sample's
        window (Flow-GRPO-Fast: ``micro_loss`` adds the sample's window start)."""
        g, n = self.cfg.grpo, self.cfg.sampler.steps
        if g.sde_window:
            return list(range(g.sde_window))
        return list(range(int(n * g.timestep_fraction)))

    def micro_loss(self, batch, signal, mb, unit, slot, epoch) -> StepLoss:
        g, grid = self.cfg.grpo, self.grid
        # the step each sample trains: one for all, or per sample in its sampling batch's window (float64 sigmas)
        j = batch.sde_start[mb] + int(unit) if g.sde_window else int(unit)
        s, s_next = grid.sigmas[j], grid.sigmas[j + 1]
        if not g.sde_window:
            s, s_next = float(s), float(s_next)
        x, x_next = batch.latents[mb, j], batch.latents[mb, j + 1]
        cond, null = cond_index(batch.cond, mb), cond_index(batch.null, mb)
        tt = grid.timesteps[j].to(x.device) if g.sde_window else grid.model_time(j, len(mb), x.device)
        guard = float(grid.sigmas[1])
        step = make_step(g.sde_type, x, self.velocity(x, tt, cond, null, grad=True), s, s_next, guard, g.noise_level)
        log_prob = step_logprob(x_next, step)
        kl = None
        if g.kl_beta > 0:
            with torch.no_grad(), self.ctx.reference():
                ref = make_step(g.sde_type, x, self.velocity(x, tt, cond, null, grad=False), s, s_next, guard,
                                g.noise_level)
            kl = step_kl(step.mean, ref.mean, step.std if g.kl_paper else step.std_t)
        adv, old = signal[mb].to(x.device), batch.log_probs[mb, j]
        if g.guard:
            out = grpo_guard_loss(log_prob, old, step.mean, batch.extra["sde_means"][mb, j], step.std,
                                  s - s_next if g.guard_reweight else None, adv, g.clip_range, kl, g.kl_beta)
        else:
            out = flow_grpo_loss(log_prob, old, adv, g.clip_range, kl, g.kl_beta)
        return StepLoss(out.loss * len(mb), self._ratio_stats(out, log_prob.detach() - old))

    def _ratio_stats(self, out: GRPOLoss, raw_log_ratio: torch.Tensor) -> dict:
        """clip: the official clipfrac (|ratio - 1| > clip_range), clip_hi / clip_lo its two sides (official
        clipfrac_gt_one / lt_one); ratio_dev: the largest |ratio - 1|; logr: the mean log-ratio the clip
        sees (GRPO-Guard: the RatioNorm one; logr_raw: exp(lp - lp_old)'s)."""
        eps, dev = self.cfg.grpo.clip_range, out.ratio - 1
        stats = {"policy": out.policy, "kl": out.kl, "clip": (dev.abs() > eps).float().mean(),
                 "clip_hi": (dev > eps).float().mean(), "clip_lo": (-dev > eps).float().mean(),
                 "ratio_dev": dev.abs().max(), "logr": out.log_ratio.mean()}
        if self.cfg.grpo.guard:
            stats["logr_raw"] = raw_log_ratio.mean()
        return stats
