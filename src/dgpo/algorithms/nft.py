"""DiffusionNFT (arXiv 2509.16117) as its official code trains it (NVlabs/DiffusionNFT,
``scripts/train_nft_sd3.py``): the 'old' model rolls out with a deterministic ODE solver (``dpm``: its
DPM-Solver++(2M) "dpm2", or ``euler``) on the family's flow-matching Euler grid, the model receiving
the integer part of each timestep; group advantages; then on the forward process only: each sample is
re-noised with its own noise at int(steps x timestep_fraction) of the grid's timesteps (a random
subset per sample, float timesteps, sigma = timestep / 1000) and trained with the negative-aware
loss (``dgpo.losses.nft``) against the 'old' model's velocity, plus a KL to the reference. Every
sample trains (A = 0 gives r = 1/2), optimizer steps over a random shuffle across groups; after each
epoch's training the 'old' model is blended towards the policy on its own schedule
(``LaggedOldModel``), before the epoch's checkpoint."""

from __future__ import annotations

import torch

from dgpo.algorithms.base import Algorithm, StepLoss
from dgpo.losses.nft import nft_loss
from dgpo.samplers.rollout import generate
from dgpo.schedules import Grid, interpolate
from dgpo.seeds import Stream, derive_seed
from dgpo.timesteps import shared_noise
from dgpo.training.ema import LaggedOldModel


class NFT(Algorithm):
    name = "nft"

    def make_old_model(self, params):
        n = self.cfg.nft  # moved once per epoch (end_epoch), not per optimizer step
        return LaggedOldModel(params, n.decay_flat, n.decay_rate, n.decay_max)

    def rollout_method(self) -> str:
        return "euler"  # the grid: official pipeline.scheduler (SD3's FlowMatchEulerDiscreteScheduler)

    def end_epoch(self, step: int) -> None:
        self.old_model.end_epoch(step)  # official: after each epoch's training, with its step count

    def rollout_context(self, step):
        return self.ctx.reference() if self.cfg.train.offline else self.old_model.applied()

    def generate(self, cond, null, seeds):
        """The solver of ``sampler.method`` on the Euler grid; the model gets int(timestep) (official
        ``torch.full(..., sigma * 1000, dtype=torch.long)``), the solver the grid's sigmas."""
        s, grid = self.cfg.sampler, self.grid
        return generate(self.ctx.model, cond, null, seeds, cfg_scale=s.cfg_scale, method=s.method,
                        grid=Grid(grid.sigmas, grid.timesteps.long()))

    def select(self, batch, rewards, adv, zero, group_ids):
        return torch.ones_like(adv, dtype=torch.bool), adv

    def frozen_needs(self) -> tuple[bool, bool]:
        return True, self.cfg.nft.kl_beta > 0

    def optimizer_chunks(self, group_ids, pos, epoch):
        return self.shuffled_chunks(pos, epoch)

    def micro_batches(self, group_ids, idx):
        return list(idx.split(self.cfg.train.batch_size))  # per-sample loss: no group sums

    def units(self, batch, epoch, step) -> list[torch.Tensor]:
        """Slot j: [samples of the epoch] grid index each one trains at, the j-th of its own random
        order of the grid's steps (official per-sample randperm, the first int(n x fraction) kept;
        ``nft.trunc_steps``: of the first trunc_steps + 1 only)."""
        n = self.grid.steps if self.cfg.nft.trunc_steps < 0 else self.cfg.nft.trunc_steps + 1
        k = int(n * self.cfg.nft.timestep_fraction)
        g = torch.Generator().manual_seed(derive_seed(self.cfg.run.seed, epoch, Stream.NFT_ORDER))
        if self.cfg.nft.group_noise:  # one order per group, its members alike
            group = torch.arange(batch.n_total) // self.cfg.train.group_size
            order = torch.stack([torch.randperm(n, generator=g) for _ in range(int(group[-1]) + 1)])[group]
        else:
            order = torch.stack([torch.randperm(n, generator=g) for _ in range(batch.n_total)])
        return list(order[:, :k].T)

    def noised(self, batch, mb, unit, slot, epoch) -> dict:
        """x_t = (1 - sigma) x0 + sigma eps with each sample's own noise and grid index (official
        ``torch.randn_like``): noise drawn per global sample index, the same on any process layout."""
        x0, index, grid = batch.x0[mb], batch.index[mb], self.grid
        j, shape, seed = unit[index], tuple(x0.shape[1:]), self.cfg.run.seed
        if self.cfg.nft.group_noise:
            eps = shared_noise(shape, batch.group_ids[mb], seed, epoch, slot)
        else:
            eps = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(
                derive_seed(seed, epoch, Stream.NFT_NOISE, slot, int(i)))) for i in index])
        eps = eps.to(x0.device, x0.dtype)
        sigma = grid.train_sigmas[j].to(x0.device, x0.dtype)
        cond, null = self.training_conditions(batch, mb, slot, epoch)  # train.text_dropout (official: none)
        return {"x_t": interpolate(x0, eps, sigma), "t": grid.timesteps[j].to(x0.device), "cond": cond,
                "null": null, "target": eps - x0, "sigma": sigma}

    def micro_loss(self, batch, signal, mb, unit, slot, epoch) -> StepLoss:
        n = self.cfg.nft
        o = self.denoising_losses(batch, mb, unit, slot, epoch)
        x0 = batch.x0[mb].to(o["v"].device, o["v"].dtype)
        out = nft_loss(o["v"], o["v_old"].float(), o["x_t"].float(), x0, o["sigma"].float(),
                       signal[mb].to(x0.device), n.beta, self.cfg.advantages.clip_max, n.adv_mode,
                       o["v_ref"].float() if "v_ref" in o else None, n.kl_beta)
        stats = {"nft": out.policy.detach().mean(), "kl": out.kl.detach().mean(), "r": out.r.mean(),
                 "old_deviate": (o["v"] - o["v_old"]).detach().pow(2).mean()}
        return StepLoss(out.loss.sum(), stats)
