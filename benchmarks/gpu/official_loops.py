"""The official DGPO and Flow-GRPO training iterations' structure, for timing beside dgpo.

Written from the official scripts' call pattern (which forwards run, at which batch, under which
precision), not their code: fp32 transformer weights with LoRA (peft) under bf16 autocast, eager,
rollouts with CFG as one forward of batch 2B per step through diffusers' schedulers, VAE decode, then

* DGPO: ``num_train_timesteps`` (4) times: the reference forward (adapter disabled, no grad), the EMA
  'old' forward (EMA weights copied into the adapter and back, no grad) and the policy forward +
  backward at batch B; then clip, AdamW, EMA update.
* Flow-GRPO: every trained SDE step (9 of 10): the policy forward + backward with CFG at batch 2B and
  the reference forward with CFG at batch 2B (no grad); then clip, AdamW.

The loss values are the algorithms' shapes; their numbers do not matter here, only the calls.
"""

from __future__ import annotations

import time

import torch

from dgpo.samplers.sde import sde_step
from dgpo.schedules import dpm_scheduler, euler_scheduler


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class OfficialLoop:
    """One LoRA'd transformer (fp32 weights), its optimizer and fast EMA, and prompt embeddings."""

    def __init__(self, peft_tr, cond: dict, null: dict, latent_shape, decode, cfg_scale: float = 4.5,
                 steps: int = 10, shift: float = 3.0, device="cuda"):
        self.tr, self.cond, self.null, self.decode = peft_tr, cond, null, decode
        self.shape, self.cfg, self.steps, self.shift, self.device = latent_shape, cfg_scale, steps, shift, device
        self.params = [p for p in peft_tr.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=3e-4, weight_decay=1e-4)
        self.ema = [p.detach().clone() for p in self.params]
        self.autocast = torch.autocast(torch.device(device).type, torch.bfloat16)

    # -- calls
    def forward(self, x, t, cond) -> torch.Tensor:
        with self.autocast:
            return self.tr(hidden_states=x, timestep=t, encoder_hidden_states=cond["embeds"],
                           pooled_projections=cond["pooled"], return_dict=False)[0].float()

    def cfg_forward(self, x, t) -> torch.Tensor:
        both = {k: torch.cat([self.cond[k], self.null[k]]) for k in self.cond}
        v_c, v_u = self.forward(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return v_u + self.cfg * (v_c - v_u)

    def _noise(self, gen) -> torch.Tensor:
        return torch.randn((len(self.cond["embeds"]), *self.shape), generator=gen).to(self.device)

    # -- rollouts
    @torch.no_grad()
    def dpm_rollout(self, gen) -> torch.Tensor:
        sched = dpm_scheduler(self.shift)
        sched.set_timesteps(self.steps)
        x = self._noise(gen)
        for t in sched.timesteps:
            v = self.cfg_forward(x, t.to(self.device).float().expand(len(x)))
            x = sched.step(v, t, x, return_dict=False)[0]
        self.decode(x)
        return x

    @torch.no_grad()
    def sde_rollout(self, gen) -> tuple[torch.Tensor, list[float]]:
        sched = euler_scheduler(self.shift)
        sched.set_timesteps(self.steps)
        s = sched.sigmas.tolist()
        x, xs = self._noise(gen), []
        for i in range(self.steps):
            xs.append(x)
            v = self.cfg_forward(x, torch.full((len(x),), 1000 * s[i], device=self.device))
            st = sde_step(x, v, s[i], s[i + 1], s[1], 0.7)
            x = st.mean + st.std * torch.randn_like(x)
        self.decode(x)
        return torch.stack(xs + [x]), s

    # -- training
    def _update(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 0.7)

    def dgpo_train(self, x0: torch.Tensor, timesteps: int = 4) -> None:
        n = len(x0)
        adv = torch.randn(n, device=self.device)
        for j in range(timesteps):
            sigma = 0.9 - 0.1 * j
            eps = torch.randn_like(x0)
            x_t, target = (1 - sigma) * x0 + sigma * eps, eps - x0
            t = torch.full((n,), 1000 * sigma, device=self.device)
            with torch.no_grad():
                with self.tr.disable_adapter():
                    v_ref = self.forward(x_t, t, self.cond)
                saved = [p.detach().clone() for p in self.params]
                torch._foreach_copy_(self.params, self.ema)
                v_old = self.forward(x_t, t, self.cond)
                torch._foreach_copy_(self.params, saved)
            v = self.forward(x_t, t, self.cond)
            dsm, dsm_ref = (v - target).pow(2).flatten(1).mean(1), (v_ref - target).pow(2).flatten(1).mean(1)
            clip = (torch.exp((v_old - target).pow(2).flatten(1).mean(1) - dsm.detach()) - 1).abs() > 0.01
            w = torch.sigmoid((adv * (dsm - dsm_ref).detach()).sum())
            loss = (w * adv * torch.where(clip, dsm.detach(), dsm)).mean() + 0.02 * (v - v_ref).pow(2).mean()
            loss.backward()
        self._update()

    def grpo_train(self, traj: torch.Tensor, sigmas: list[float], trained: int = 9) -> None:
        adv = torch.randn(traj.shape[1], device=self.device)
        for i in range(trained):
            x, x_next = traj[i], traj[i + 1]
            t = torch.full((len(x),), 1000 * sigmas[i], device=self.device)
            with torch.no_grad(), self.tr.disable_adapter():
                v_ref = self.cfg_forward(x, t)
            v = self.cfg_forward(x, t)
            st = sde_step(x, v, sigmas[i], sigmas[i + 1], sigmas[1], 0.7)
            ratio = torch.exp(-((x_next - st.mean) ** 2).flatten(1).mean(1) / (2 * st.std**2) + 1)
            loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - 1e-4, 1 + 1e-4)).mean()
            loss = loss + 0.04 * (st.mean - sde_step(x, v_ref, sigmas[i], sigmas[i + 1], sigmas[1], 0.7).mean
                                  ).pow(2).mean()
            loss.backward()
        self._update()

    # -- one timed iteration per algorithm
    def iteration(self, algorithm: str, gen) -> dict[str, float]:
        sync()
        t0 = time.perf_counter()
        if algorithm == "dgpo":
            x0 = self.dpm_rollout(gen)
        else:
            traj, sigmas = self.sde_rollout(gen)
        sync()
        t1 = time.perf_counter()
        if algorithm == "dgpo":
            self.dgpo_train(x0)
        else:
            self.grpo_train(traj, sigmas, self.steps - 1)
        sync()
        return {"rollout": t1 - t0, "train": time.perf_counter() - t1}
