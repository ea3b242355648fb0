"""DGPO training: one loop that reads top to bottom (`Trainer.fit`), calling named steps.

epoch: pick P prompts -> G ODE rollouts each (theta, or the EMA "old" model after switch_ema_ref)
-> rewards -> group advantages -> k training timesteps (grid / uniform) -> for each optimizer step,
for each timestep, for each micro-batch of whole groups: shared-noise x_t, reference / old / policy
denoising losses, DGPO loss, backward -> clip, step, EMAs -> log, grids, eval, checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm

from dgpo.advantages import group_advantages
from dgpo.config import Config, dump_yaml
from dgpo.data.prompts import epoch_prompts, load_prompts
from dgpo.evaluation import evaluate, model_image_fn
from dgpo.losses.dgpo import dgpo_loss, dsm, ppo_clip_mask
from dgpo.models.base import cfg_velocity, cond_index, cond_where
from dgpo.models.loading import load_model
from dgpo.rewards import build_reward
from dgpo.samplers.rollout import generate
from dgpo.schedules import interpolate, sigma_grid
from dgpo.timesteps import derive_seed, shared_noise, train_timesteps
from dgpo.training import io
from dgpo.training.ema import OldModelEMA, SlowEMA
from dgpo.training.policy import Policy, parse_targets

log = logging.getLogger(__name__)
GRID_PROMPTS = 16


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False):
        self.cfg, c = cfg, cfg
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=c.train.mixed_precision)
        self.run_dir = Path(c.run.out_dir)
        self.model = load_model(c.model)
        self.policy = Policy(self.model, c.train.lora_rank, c.train.lora_alpha, c.run.seed,
                             parse_targets(c.train.lora_targets))
        self.opt = torch.optim.AdamW(self.policy.params, lr=c.train.lr, betas=(0.9, 0.999),
                                     weight_decay=c.train.weight_decay, eps=1e-8)
        self.ema_old = OldModelEMA(self.policy.params)
        self.ema_slow = SlowEMA(self.policy.params, c.train.ema_decay, c.train.ema_every)
        self.reward_fn = build_reward(c.reward.name)
        self.prompts = load_prompts(c.train.prompts)
        self.eval_prompts = load_prompts(c.eval.split)
        if c.eval.max_prompts:
            self.eval_prompts = self.eval_prompts[: c.eval.max_prompts]
        self.grid_prompts = self.eval_prompts[:: max(1, len(self.eval_prompts) // GRID_PROMPTS)][:GRID_PROMPTS]
        self.sigmas = sigma_grid(c.sampler.steps, c.sampler.shift)
        self.step, self.start_epoch, self.evals = 0, 0, []
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = io.MetricsLog(self.run_dir)
        if resume:
            self._resume()
        (self.run_dir / "config.yaml").write_text(dump_yaml(c))

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict:
        c = self.cfg
        if self.start_epoch == 0 and c.run.eval_at_ends:
            self._record_eval({"step": 0, **self._evaluate("eval before")})
            self._grid("before")
        bar = tqdm(range(self.start_epoch, c.run.epochs), desc="dgpo", unit="epoch",
                   initial=self.start_epoch, total=c.run.epochs)
        for epoch in bar:
            t0 = time.time()
            metas = epoch_prompts(self.prompts, c.train.prompts_per_epoch, c.run.seed, epoch,
                                  c.train.balance_categories)
            bar.set_postfix_str("rollout")
            batch = self._rollout(metas, epoch)
            t1 = time.time()
            bar.set_postfix_str("reward")
            rewards = self.reward_fn(self.model.decode(batch["x0"]), batch["metas"])
            adv, zero = group_advantages(rewards, batch["group_ids"], c.dgpo.adv_std,
                                         clip_max=c.dgpo.adv_clip_max)
            t2 = time.time()
            bar.set_postfix_str("train")
            ts = train_timesteps(c.dgpo.timestep_mode, self.sigmas, c.dgpo.num_train_timesteps,
                                 c.dgpo.trunc_steps, c.dgpo.t_min, c.run.seed, epoch)
            for part in self._optimizer_chunks(batch["group_ids"]):
                stats = self._optimizer_step(batch, adv, part, ts, epoch)
                self._log(epoch, rewards, zero, stats, {"rollout": t1 - t0, "reward": t2 - t1,
                                                        "train": time.time() - t2})
            bar.set_postfix(reward=f"{rewards.mean():.3f}", step=self.step)
            self._periodic(epoch)
        return self._finish()

    # ----------------------------------------------------------------- phases
    @torch.no_grad()
    def _rollout(self, metas: list[dict], epoch: int) -> dict:
        c, g = self.cfg, self.cfg.train.group_size
        cond_p = self.model.encode_prompts([m["prompt"] for m in metas])  # once per prompt
        group_ids = torch.arange(len(metas)).repeat_interleave(g)
        cond = cond_index(cond_p, group_ids)
        null = self.model.encode_prompts([""] * len(group_ids))
        seeds = [derive_seed(c.run.seed, epoch, 3, i) for i in range(len(group_ids))]
        use_old = self.step > c.dgpo.switch_ema_ref
        chunks = []
        with self.ema_old.applied() if use_old else nullcontext():
            for s in range(0, len(seeds), c.train.batch_size):
                sl = slice(s, s + c.train.batch_size)
                chunks.append(generate(self.model, cond_index(cond, sl), cond_index(null, sl), seeds[sl],
                                       c.sampler.steps, c.sampler.shift, c.sampler.cfg_scale, c.sampler.method))
        return {"x0": torch.cat(chunks), "cond": cond, "null": null, "group_ids": group_ids,
                "metas": [metas[i] for i in group_ids.tolist()]}

    def _optimizer_chunks(self, group_ids: torch.Tensor) -> list[torch.Tensor]:
        """Sample indices of each optimizer step of the epoch: whole groups, evenly split."""
        groups = torch.arange(int(group_ids.max()) + 1).chunk(self.cfg.train.steps_per_epoch)
        return [torch.nonzero(torch.isin(group_ids, gs)).squeeze(1) for gs in groups if len(gs)]

    def _micro_batches(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Micro-batches of whole groups (so each group's sum S_g is complete in one forward)."""
        per = max(1, self.cfg.train.batch_size // self.cfg.train.group_size) * self.cfg.train.group_size
        return list(idx.split(per))

    def _optimizer_step(self, batch: dict, adv: torch.Tensor, idx: torch.Tensor, ts: torch.Tensor,
                        epoch: int) -> dict:
        c = self.cfg
        micro = self._micro_batches(idx)
        n_acc = len(micro) * len(ts)
        totals = {"loss": 0.0, "dgpo": 0.0, "kl": 0.0, "clip": 0.0, "weight": 0.0}
        for slot, t in enumerate(ts.tolist()):
            for mb in micro:
                out = self._micro_loss(batch, adv, mb, t, slot, epoch)
                self.acc.backward(out.loss / n_acc)
                for k, v in (("loss", out.loss), ("dgpo", out.dgpo), ("kl", out.kl),
                             ("clip", out.clipped.float().mean()), ("weight", out.weight.mean())):
                    totals[k] += float(v.detach()) / n_acc
        grad_norm = self.acc.clip_grad_norm_(self.policy.params, c.train.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema_old.update(self.step)
        self.ema_slow.update(self.step)
        self.step += 1
        return {**totals, "grad_norm": float(grad_norm)}

    def _micro_loss(self, batch: dict, adv: torch.Tensor, mb: torch.Tensor, t: float, slot: int, epoch: int):
        c, d = self.cfg, self.cfg.dgpo
        x0, gids = batch["x0"][mb], batch["group_ids"][mb]
        cond, null = cond_index(batch["cond"], mb), cond_index(batch["null"], mb)
        if d.text_dropout > 0:  # the paper's prompt dropout in training (not in the official code)
            g = torch.Generator().manual_seed(derive_seed(c.run.seed, epoch, 4, slot))
            drop = torch.rand(len(batch["x0"]), generator=g)[mb] < d.text_dropout
            cond = cond_where(drop, null, cond)
        eps = shared_noise(tuple(x0.shape[1:]), gids, c.run.seed, epoch, slot)
        tt = torch.full((len(mb),), t)
        x_t = interpolate(x0, eps, t)
        target = eps - x0
        with torch.no_grad():
            with self.policy.reference():
                v_ref = cfg_velocity(self.model, x_t, tt, cond, null, d.kl_cfg)  # official: CFG'd ref
            need_old = d.clip_range > 0 or d.use_ema_ref
            v_old = None
            if need_old:
                with self.ema_old.applied():
                    v_old = self.model.velocity(x_t, tt, cond)
        with self.acc.autocast():
            v = self.model.velocity(x_t, tt, cond).float()
        dsm_theta = dsm(v, target)
        dsm_ref = dsm(v_old if d.use_ema_ref else v_ref, target)
        mask = ppo_clip_mask(adv[mb], dsm_theta, dsm(v_old, target), d.clip_range) if need_old else None
        kl = (v - v_ref).pow(2).flatten(1).mean(1) if d.kl_beta > 0 else None
        return dgpo_loss(dsm_theta, dsm_ref, adv[mb], gids, d.beta_dpo, c.train.group_size,
                         clip_mask=mask if d.clip_dsm else None, kl=kl, kl_beta=d.kl_beta,
                         clip_kl=d.clip_kl)

    # ----------------------------------------------------------------- bookkeeping
    def _log(self, epoch: int, rewards: torch.Tensor, zero: torch.Tensor, stats: dict, times: dict) -> None:
        row = {"step": self.step, "epoch": epoch, "wall_time": time.time(),
               "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
               "zero_spread_share": float(zero.float().mean()), **stats,
               "lr": self.opt.param_groups[0]["lr"], **{f"time_{k}": v for k, v in times.items()}}
        if self.acc.is_main_process:
            self.metrics.write(row)

    def _periodic(self, epoch: int) -> None:
        r, done = self.cfg.run, epoch + 1
        last = done == r.epochs
        if r.eval_every and done % r.eval_every == 0 and not last:
            self._record_eval({"step": self.step, **self._evaluate(f"eval @{self.step}")})
        if r.sample_every and done % r.sample_every == 0 and not last:
            self._grid(f"step_{self.step:05d}")
        if (r.save_every and done % r.save_every == 0) or last:
            self._save(done)

    def _record_eval(self, row: dict) -> None:
        self.evals.append(row)
        if self.acc.is_main_process:
            with (self.run_dir / "evals.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")

    def _evaluate(self, desc: str) -> dict:
        c = self.cfg
        fn = model_image_fn(self.model, c.sampler.steps, c.sampler.shift, c.sampler.cfg_scale, c.sampler.method)
        with self.ema_slow.applied():
            res = evaluate(fn, self.eval_prompts, c.eval.images_per_prompt, c.run.seed + 7,
                           c.eval.batch_size, desc, c.eval.min_per_category)
        return {k: v for k, v in res.items() if k not in ("rows", "n_images")}

    def _grid(self, name: str) -> None:
        c, metas = self.cfg, self.grid_prompts
        fn = model_image_fn(self.model, c.sampler.steps, c.sampler.shift, c.sampler.cfg_scale, c.sampler.method)
        with self.ema_slow.applied():
            images = fn(metas, list(range(len(metas))))
        if self.acc.is_main_process:
            io.save_grid(images, [m["prompt"] for m in metas], self.run_dir / "samples" / f"{name}.png")

    def _save(self, epochs_done: int) -> None:
        if not self.acc.is_main_process:
            return
        parts = {"policy": self.policy.state_dict(), "ema_old": self.ema_old.state_dict(),
                 "ema_slow": self.ema_slow.state_dict()}
        state = {"step": self.step, "epoch": epochs_done, "evals": self.evals}
        io.save_checkpoint(self.run_dir / "checkpoints" / f"step_{self.step:06d}", parts, self.opt, state)

    def _resume(self) -> None:
        ckpt = io.latest_checkpoint(self.run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.run_dir / 'checkpoints'}")
        parts, state = io.load_checkpoint(ckpt, ["policy", "ema_old", "ema_slow"], self.opt)
        self.policy.load_state_dict(parts["policy"])
        self.ema_old.load_state_dict(parts["ema_old"])
        self.ema_slow.load_state_dict(parts["ema_slow"])
        self.step, self.start_epoch, self.evals = state["step"], state["epoch"], state["evals"]
        log.info("resumed from %s (step %d, epoch %d)", ckpt, self.step, self.start_epoch)

    def _finish(self) -> dict:
        summary: dict = {"steps": self.step}
        if self.cfg.run.eval_at_ends:
            after = {"step": self.step, **self._evaluate("eval after")}
            if not self.evals or self.evals[-1]["step"] != self.step:
                self._record_eval(after)
            self._grid("after")
            summary.update(eval_before=self.evals[0], eval_after=after, evals=self.evals)
        if self.acc.is_main_process:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            io.plot_curves(self.metrics.read(), self.evals, self.run_dir / "plots")
        return summary
