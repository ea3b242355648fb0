"""The training loop: one loop that reads top to bottom (`Trainer.fit`), for every algorithm.

epoch: pick P prompts -> G rollouts each (the algorithm's sampler) -> rewards, gathered over
processes -> group advantages -> the algorithm's training signal and units (timesteps, SDE steps)
-> for each optimizer step, for each unit, for each micro-batch of whole groups: the algorithm's
loss, backward -> clip, step, EMAs -> the algorithm's end of epoch -> log, grids, eval, checkpoint.

Faults (training/guards.py): a reward call is retried, a failed call's or a non-finite reward's group
is dropped from the epoch, a step with a non-finite loss or gradient is skipped on every process, and
faults that last stop the run with its last good checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from tqdm import tqdm

from dgpo.algorithms import ALGORITHMS, Algorithm, LoopContext, Rollouts
from dgpo.config import Config, dump_yaml, to_dict
from dgpo.data.prompts import epoch_prompts, load_prompts
from dgpo.evaluation import evaluate, extra_scorer, model_image_fn, per_category, reward_scorer, settle_unscored
from dgpo.models.base import FlowModel
from dgpo.models.loading import load_model
from dgpo.rewards import build_reward_from_config, check_modality
from dgpo.rewards.modality import modality_of
from dgpo.rewards.retry import Backoff, GuardedCall
from dgpo.training import checkpoints, distributed, ood, plots, runlog, speed
from dgpo.training.diagnostics import TravelMeter, group_correct_shares, reward_by_category
from dgpo.training.distributed import Layout
from dgpo.training.ema import SlowEMA
from dgpo.training.fsdp import Sharding
from dgpo.training.guards import FaultGuard, RunHalted, finite_row, masked_advantages, screen_rewards
from dgpo.training.policy import Policy, parse_targets
from dgpo.training.scoring import ChunkScorer

log = logging.getLogger(__name__)
GRID_PROMPTS = 16
INNER_KEY = 1_000_003  # seeds of inner pass k > 0 use epoch + k * INNER_KEY
BEFORE_FIX = "delete it (the resumed run then draws no samples/compare.png)"


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, model: FlowModel | None = None,
                 reward: Callable | None = None, algorithm: type[Algorithm] | None = None,
                 change_processes: bool = False):
        """``model``: an already built FlowModel (e.g. a random-weight benchmark model) instead of
        loading ``cfg.model``; ``reward``: a reward callable (``dgpo.rewards.custom``) instead of
        ``cfg.reward.name``; ``algorithm``: an :class:`Algorithm` subclass instead of ``train.algorithm``;
        ``change_processes``: resume a checkpoint written by another number of processes."""
        self.cfg, c, self.change_processes = cfg, cfg, change_processes
        self.run_dir = Path(c.run.out_dir)
        log_with, project, tracker_kwargs = runlog.tracker_setup(c.run.log_with, c.run.project, self.run_dir)
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=c.train.mixed_precision,
                               log_with=log_with, project_dir=str(self.run_dir),
                               kwargs_handlers=distributed.accelerate_kwargs(c.train.collective_timeout_s))
        self._build_model(model)
        self._build_optimizer()
        self.layout = Layout.from_accelerator(self.acc)  # collectives run on acc.device (NCCL needs CUDA)
        self.travel = (TravelMeter(self.policy.params, self.layout.all_sum if self.shards.enabled else None)
                       if c.train.travel_metrics else None)
        self.reward_fn = build_reward_from_config(c.reward, self.acc.device, reward=reward)
        self.modality = modality_of(self.model)  # images or videos: the reward must score the same
        check_modality(self.reward_fn, self.modality, "reward.name")
        self.extra_rewards = ood.build_extra_rewards(c, self.acc.device, self.modality)  # scored at evals only
        r = c.reward  # every reward call is retried, timed out, and its failure survived (rewards/retry.py)
        self.reward_call = GuardedCall(Backoff(r.retries, r.backoff_s, r.max_backoff_s), r.call_timeout_s)
        self._load_prompts()
        self.shift = c.sampler.shift or self.model.default_shift()
        self.layout.check_group_size(c.train.group_size)
        self.guard = FaultGuard(c.train.max_bad_steps, c.reward.max_failures, self.layout)
        self.algo = (algorithm or ALGORITHMS[c.train.algorithm])(LoopContext(
            cfg=c, model=self.model, params=self.policy.params, shift=self.shift, layout=self.layout,
            group_sum=self.layout.group_sum_fn(c.train.prompts_per_epoch), lockstep=self.shards.enabled,
            autocast=self.acc.autocast, reference=self.policy.reference))
        self.step, self.start_epoch, self.evals = 0, 0, []
        self.train_time, self.images, self._next_eval_s = 0.0, 0, c.run.eval_every_s
        self._before: torch.Tensor | None = None  # the "before" grid's images, for samples/compare.png
        self._open_run(resume, log_with, project, tracker_kwargs)

    def _build_model(self, model: FlowModel | None) -> None:
        c = self.cfg
        self.model = (model or load_model(c.model)).to(self.acc.device)
        self.policy = Policy(self.model, c.train.lora_rank, c.train.lora_alpha, c.run.seed,
                             parse_targets(c.train.lora_targets))
        # FP8 layers replace linear layers, so before sharding (FSDP tracks its parameters' modules)
        self.fp8_info = (speed.use_fp8(self.model, self.policy, c.train.fp8, c.train.compile, c.train.fp8_cast_once)
                         if c.train.fp8 != "none" else None)
        # DDP wraps the network for the forwards that train; rollouts, references and evals use the
        # bare module (no collectives outside backward). FSDP (accelerate's FSDP2 config) shards the
        # module itself: every forward gathers its shards (dgpo/training/fsdp.py)
        self.shards = Sharding.from_accelerator(self.acc)
        speed.check_sharded(c.train, self.shards.enabled)
        self.policy.shard(self.shards)
        multi = self.acc.num_processes > 1 and not self.shards.enabled
        speed.set_tf32(c.train.tf32)
        self.compile_info = (speed.compile_model(self.model, self.policy, c.train.compile_mode)
                             if c.train.compile else None)
        self.rollout_levers = speed.RolloutLevers.from_config(self.model, self.policy, c.train, self.acc.device)
        self.train_net = self.acc.prepare(self.model.denoiser) if multi else self.model.denoiser

    def _build_optimizer(self) -> None:
        t = self.cfg.train
        # fused (one kernel for all tensors) on CUDA; PyTorch's default elsewhere
        self.opt = torch.optim.AdamW(self.policy.params, lr=t.lr, betas=(0.9, 0.999),
                                     weight_decay=t.weight_decay, eps=1e-8,
                                     fused=True if self.acc.device.type == "cuda" else None)
        self.ema_slow = SlowEMA(self.policy.params, t.ema_decay, t.ema_every, t.ema_cadence,
                                max(1, t.sampling_batches // t.steps_per_epoch))

    def _load_prompts(self) -> None:
        c = self.cfg
        self.prompts = load_prompts(c.train.prompts)
        self.eval_prompts = load_prompts(c.eval.split)
        check = getattr(self.model, "check_metas", None)  # an editing family: each row's source images
        if check is not None:
            check(self.prompts, "train.prompts")
            check(self.eval_prompts, "eval.split")
        if c.eval.per_category:
            self.eval_prompts = per_category(self.eval_prompts, c.eval.per_category)
        if c.eval.max_prompts:
            self.eval_prompts = self.eval_prompts[: c.eval.max_prompts]
        self.grid_prompts = self.eval_prompts[:: max(1, len(self.eval_prompts) // GRID_PROMPTS)][:GRID_PROMPTS]

    def _open_run(self, resume: bool, log_with, project, tracker_kwargs) -> None:
        """Resume from the run folder or clear it, start the trackers, write the config."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        elif self.acc.is_main_process:
            runlog.clear_run(self.run_dir)
        if log_with:
            if self.acc.is_main_process:  # W&B: --resume continues the run's W&B run (its id in the run folder)
                tracker_kwargs = runlog.wandb_resume(tracker_kwargs, self.run_dir, resume)
            self.acc.init_trackers(project, runlog.flat_config(to_dict(self.cfg)),
                                   runlog.purge_from(tracker_kwargs, self.step))
            if resume and self.acc.is_main_process:
                runlog.relog_step(self.acc, self.run_dir, self.step, self.evals)
        self.metrics = runlog.MetricsLog(self.run_dir, self.acc.log)
        (self.run_dir / "config.yaml").write_text(dump_yaml(self.cfg))

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict:
        c = self.cfg
        if self.start_epoch == 0 and c.run.eval_at_ends:
            self._record_eval(self._evaluate("eval before"))
            self._grid("before")
        budget = f" ({c.run.time_budget_s:.0f} s budget)" if c.run.time_budget_s else ""
        epochs = range(self.start_epoch, c.run.epochs)
        bar = tqdm(iter(epochs) if budget else epochs, desc=(self.algo.name or c.train.algorithm) + budget,
                   unit="epoch", initial=self.start_epoch, total=None if budget else c.run.epochs,
                   disable=not self.acc.is_main_process)
        for epoch in bar:
            t0 = time.time()
            self.guard.begin_epoch()  # a halt inside this epoch saves the counts it started from (it is retried)
            metas = epoch_prompts(self.prompts, c.train.prompts_per_epoch, c.run.seed, epoch,
                                  c.train.balance_categories)
            bar.set_postfix_str("rollout")
            with ChunkScorer(self.reward_fn, self.model.decode, c.reward.overlap, self.reward_call) as scoring:
                with self.acc.autocast(), self.rollout_levers():  # the scorer's thread (VAE, reward): full precision
                    batch = self.algo.rollout(metas, epoch, self.step, scoring.submit)  # scored meanwhile
                t1 = time.time()
                bar.set_postfix_str("reward")
                local, local_parts = scoring.result()
            gather = lambda t, index=batch.index, n=batch.n_total: self.layout.gather(t.float().cpu(), index, n)
            rewards, parts = gather(local), {k: gather(v) for k, v in local_parts.items()}
            correct = None if scoring.correct is None else gather(scoring.correct)  # strict 0/1 (GenEval)
            group_ids = torch.arange(batch.n_total) // c.train.group_size
            # a failed call or a non-finite reward takes its whole group out of the epoch (training/guards.py)
            er = screen_rewards(rewards, parts, gather(scoring.failed) > 0, group_ids, len(metas))
            faults, failed_too_often = self.guard.after_rewards(scoring.counts, er, scoring.error)
            adv, zero = masked_advantages(er, getattr(self.reward_fn, "weights", {}), group_ids, len(metas),
                                          c.advantages.combine, c.advantages.std, c.advantages.clip_max)
            batch.alive = er.alive
            keep, signal = self.algo.select(batch, er.rewards, adv, zero, group_ids)
            keep, signal = keep & er.alive, torch.where(er.alive, signal, torch.zeros_like(signal))
            live_rewards, live_parts = er.live(rewards), {k: er.live(v) for k, v in parts.items()}
            live_metas = [metas[g] for g in er.live_groups]
            t2 = time.time()
            bar.set_postfix_str("train")
            train_pos, local_signal = torch.nonzero(keep[batch.index]).squeeze(1), signal[batch.index]
            for inner in range(c.train.inner_epochs):  # passes over the same rollouts
                key = epoch + INNER_KEY * inner  # fresh timesteps and noise on every pass
                units = self.algo.units(batch, key, self.step)
                for part in self.algo.optimizer_chunks(batch.group_ids, train_pos, key):
                    if not self.layout.all_sum(self.algo.items(local_signal, part)):  # groups dropped, no spread
                        stats = {"bad_cause": er.cause or "no_signal"}
                    else:
                        stats = self._optimizer_step(batch, local_signal, part, units, key)
                    state, halt = self.guard.after_step(stats.pop("bad_cause", ""))
                    diag = self._diagnostics(live_metas, live_rewards, er.live(correct), er.live_ids(group_ids))
                    self._log(epoch, live_rewards, zero[er.live_groups], {**stats, **state, **faults, **diag},
                              {"rollout": t1 - t0, "reward": t2 - t1, "train": time.time() - t2}, live_parts)
                    if halt:
                        self._halt(halt, epoch, epoch)  # resuming retries this epoch
            self.algo.end_epoch(self.step)
            if failed_too_often:  # after training the epoch's surviving groups
                self._halt(failed_too_often, epoch, epoch + 1)
            bar.set_postfix(reward=f"{live_rewards.mean():.3f}", step=self.step)
            self.train_time += time.time() - t0
            self.images += batch.n_total
            if self._periodic(epoch):
                break
        return self._finish()

    # ----------------------------------------------------------------- phases
    def _diagnostics(self, metas: list[dict], rewards: torch.Tensor, correct: torch.Tensor | None,
                     group_ids: torch.Tensor) -> dict:
        """Per-step instruments: reward per category, pass@G / pass@1 of the rollouts, travel."""
        per_sample = [metas[int(g)] for g in group_ids]
        travel = self.travel.measure() if self.travel is not None else {}
        out = {**reward_by_category(rewards, per_sample), **travel}
        if correct is not None and len(correct):
            out.update(group_correct_shares(correct, group_ids))
        return out

    def _optimizer_step(self, batch: Rollouts, signal: torch.Tensor, idx: torch.Tensor, units: list,
                        epoch: int) -> dict:
        c = self.cfg
        if hasattr(self.model, "release_aux"):  # model.offload: encoders and VAE off the GPU for training
            self.model.release_aux()
        micro = self.algo.micro_batches(batch.group_ids, idx)
        items = self.layout.all_sum(self.algo.items(signal, idx))
        scale = self.layout.world / (max(items, 1e-12) * len(units))  # DDP and FSDP average over processes
        totals: dict[str, torch.Tensor | float] = {"loss": 0.0}  # kept on the device: no sync per micro-batch
        n_back = len(units) * len(micro)
        if self.shards.enabled:  # every forward is a collective: unequal counts would hang
            self.layout.check_same(len(micro), "micro-batches in this optimizer step")
        with self.algo.frozen_forwards(batch, micro, units, epoch):  # train.reference_batch_size
            for slot, unit in enumerate(units):
                for m, mb in enumerate(micro):
                    # DDP syncs gradients on the last backward only; FSDP reduce-scatters every backward
                    last = slot * len(micro) + m == n_back - 1 or self.shards.enabled
                    with self._training_forward(), (nullcontext() if last else self.acc.no_sync(self.train_net)):
                        out = self.algo.micro_loss(batch, signal, mb, unit, slot, epoch)
                        self.acc.backward(out.loss_sum * scale)
                    totals["loss"] = totals["loss"] + out.loss_sum.detach().float() * scale  # all_sum / world averages
                    for k, v in out.stats.items():
                        totals[k] = totals.get(k, 0.0) + torch.as_tensor(v).detach().float() / (len(micro) * len(units))
        totals = {k: self.layout.all_sum(float(v)) / self.layout.world for k, v in totals.items()}
        grad_norm = self.acc.clip_grad_norm_(self.policy.params, c.train.max_grad_norm)
        cause = self.guard.nonfinite(totals["loss"], float(grad_norm))
        if cause:  # skipped: parameters, EMAs, optimizer moments and step counters stay as they were
            self.opt.zero_grad(set_to_none=True)
            return {**totals, "grad_norm": float(grad_norm), "bad_cause": cause}
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.algo.after_step(self.step)
        self.ema_slow.update(self.step)
        self.step += 1
        return {**totals, "grad_norm": float(grad_norm)}

    @contextmanager
    def _training_forward(self):
        """The model's forwards go through the DDP/FSDP wrapper (gradients are synchronised)."""
        bare = self.model.denoiser
        self.model.denoiser = self.train_net
        try:
            yield
        finally:
            self.model.denoiser = bare

    # ----------------------------------------------------------------- bookkeeping
    def _log(self, epoch: int, rewards: torch.Tensor, zero: torch.Tensor, stats: dict, times: dict,
             parts: dict | None = None) -> None:
        stat = lambda v, s: float(getattr(v, s)()) if len(v) else None  # noqa: E731 - every group dropped
        per = {f"reward_{k}_{s}": stat(v, s) for k, v in (parts or {}).items() for s in ("mean", "std")}
        row = {"step": self.step, "epoch": epoch, "wall_time": time.time(),
               "reward_mean": stat(rewards, "mean"), "reward_std": stat(rewards, "std"), **per,
               "zero_spread_share": stat(zero.float(), "mean"), **stats,
               "lr": self.opt.param_groups[0]["lr"], **{f"time_{k}": v for k, v in times.items()}}
        if self.acc.is_main_process:
            self.metrics.write(finite_row(row))

    def _periodic(self, epoch: int) -> bool:
        """Evals, grids, checkpoints after an epoch; True when the time budget says stop."""
        r, done = self.cfg.run, epoch + 1
        last = done == r.epochs or bool(r.time_budget_s and self.train_time >= r.time_budget_s)
        timed = bool(r.eval_every_s and self.train_time >= self._next_eval_s)
        if ((r.eval_every and done % r.eval_every == 0) or timed) and not last:
            self._record_eval(self._evaluate(f"eval @{self.step}"))
            while r.eval_every_s and self._next_eval_s <= self.train_time:
                self._next_eval_s += r.eval_every_s
        if r.sample_every and done % r.sample_every == 0 and not last:
            self._grid(f"step_{self.step:05d}")
        if (r.save_every and done % r.save_every == 0) or last:
            self._save(done)
        return last

    def _halt(self, why: str, epoch: int, epochs_done: int) -> None:
        """Stop the run (every process alike): save the last good state, end the trackers, raise."""
        # a skipped step changed nothing: the state is that of the last good step. A resume that retries this
        # epoch counts its faults again, so the fault counts saved are those the epoch started from
        self._save(epochs_done, retry_epoch=epochs_done == epoch)
        self.acc.wait_for_everyone()
        self.acc.end_training()
        raise RunHalted(f"{why}. The run stopped in epoch {epoch}; its last good state (step {self.step}) is saved "
                        f"in {self.run_dir / 'checkpoints' / f'step_{self.step:06d}'} (--resume continues from it); "
                        f"{self.run_dir / 'metrics.jsonl'} logs each skipped step's cause")

    def _record_eval(self, row: dict) -> None:
        self.evals.append(row)
        if self.acc.is_main_process:
            with (self.run_dir / "evals.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
        self.acc.log(runlog.scalars(row, "eval/"), step=self.step)

    def _evaluate(self, desc: str) -> dict:
        """The eval row of this step. Its reward calls are the training calls' (retried, timed out); a batch
        whose call still fails stays unscored, and an eval left without any score is *missing*: ``overall``
        and ``reward`` null, ``missing`` says why, and the run goes on."""
        c = self.cfg
        fn = self._image_fn()
        score_fn = reward_scorer(self.reward_fn, self.reward_call)
        with self.ema_slow.applied():
            res = evaluate(fn, self.eval_prompts, c.eval.images_per_prompt, c.run.seed + 7,
                           c.eval.batch_size, desc, c.eval.min_per_category,
                           shard=(self.layout.rank, self.layout.world), gather=self.layout.gather_rows,
                           lockstep=self.shards.enabled, score_fn=score_fn,
                           extra=extra_scorer(self.extra_rewards, self.reward_call) if self.extra_rewards else None)
        res = settle_unscored(res, desc, getattr(score_fn, "last_error", ""))
        return finite_row({"step": self.step, "train_time_s": self.train_time, "images": self.images,
                           **{k: v for k, v in res.items() if k not in ("rows", "n_images")}})

    def _image_fn(self):
        c = self.cfg  # autocast for the denoiser only: the VAE and the reward in full precision
        return model_image_fn(self.model, c.eval.steps or c.sampler.steps, self.shift, c.sampler.cfg_scale,
                              c.eval.method or c.sampler.method, self.acc.autocast)

    def _grid(self, name: str) -> None:
        metas = self.grid_prompts
        fn = self._image_fn()
        with self.ema_slow.applied():
            images = fn(metas, list(range(len(metas))))
        if not self.acc.is_main_process:
            return
        captions, out = [m["prompt"] for m in metas], self.run_dir / "samples"
        self._show(f"samples/{name}", plots.grid_file(images, captions, out / name), self.step)
        if name == "before":
            self._before = images.cpu()  # kept on disk too: a resumed run still draws the comparison
            save_file({"images": self._before.contiguous()}, str(out / "before.safetensors"))
        elif name == "after" and self._before is not None:  # same prompts, same seeds, side by side
            sources = getattr(self.model, "source_images", None)  # an editing model's: source | base | trained
            self._show("samples/compare", plots.compare_file(self._before, images.cpu(), captions, out / "compare",
                                                             sources(metas).cpu() if sources else None), self.step)

    def _show(self, tag: str, path: Path, step: int) -> None:
        """A grid (PNG) or an animated grid (GIF, beside its MP4) to the run's trackers."""
        if path.suffix == ".png":
            runlog.log_image(self.acc.trackers, tag, path, step)
        else:
            runlog.log_video(self.acc.trackers, tag, path, step)

    def _save(self, epochs_done: int, retry_epoch: bool = False) -> None:
        gather = self.shards.gather  # FSDP: every process gathers whole tensors, the main one keeps them
        parts = {"policy": gather(self.policy.state_dict()), "ema_old": gather(self.algo.old_model.state_dict()),
                 "ema_slow": gather(self.ema_slow.state_dict())}
        opt = self.shards.optimizer_state(self.opt)
        if not self.acc.is_main_process:
            return
        state = {"step": self.step, "epoch": epochs_done, "processes": self.layout.world, "evals": self.evals,
                 "train_time": self.train_time, "images": self.images, "next_eval_s": self._next_eval_s,
                 "guard": self.guard.state_dict(retry_epoch), "algorithm": self.algo.state_dict()}  # the adaptive t_min
        checkpoints.save_checkpoint(self.run_dir / "checkpoints" / f"step_{self.step:06d}", parts, opt, state,
                                    self.cfg.run.keep_checkpoints)

    def _resume(self) -> None:
        ckpt = checkpoints.for_resume(self.run_dir)  # the newest whose files match its manifest
        parts, state = checkpoints.load_checkpoint(ckpt, ["policy", "ema_old", "ema_slow"],
                                                   self.shards.optimizer_state(self.opt))
        distributed.check_resume_processes(state.get("processes"), self.layout.world, self.cfg, self.change_processes)
        self.policy.load_state_dict(parts["policy"])
        self.algo.old_model.load_state_dict(parts["ema_old"])
        self.ema_slow.load_state_dict(parts["ema_slow"])
        if self.travel is not None:
            self.travel.resumed()
        self.step, self.start_epoch, self.evals = state["step"], state["epoch"], state["evals"]
        self.train_time, self.images = state.get("train_time", 0.0), state.get("images", 0)
        self._next_eval_s = state.get("next_eval_s", self.cfg.run.eval_every_s)
        self.guard.load_state_dict(state.get("guard", {}))
        self.algo.load_state_dict(state.get("algorithm", {}))
        before = self.run_dir / "samples" / "before.safetensors"
        if before.is_file():
            self._before = checkpoints.read_tensors(before, BEFORE_FIX)["images"]
        if self.acc.is_main_process:  # what the killed process logged after the checkpoint goes
            runlog.repair_logs(self.run_dir, self.step, self.start_epoch, self.evals)
            checkpoints.remove_leftovers(ckpt.parent)
        log.info("resumed from %s (step %d, epoch %d)", ckpt, self.step, self.start_epoch)

    def _finish(self) -> dict:
        summary: dict = {"steps": self.step}
        if self.cfg.run.eval_at_ends:
            after = self._evaluate("eval after")
            if not self.evals or self.evals[-1]["step"] != self.step:
                self._record_eval(after)
            self._grid("after")
            summary.update(eval_before=self.evals[0], eval_after=after, evals=self.evals)
        missing = [e["step"] for e in self.evals if e.get("missing")]
        if missing:  # evals whose reward failed throughout (their rows say why)
            summary["missing_evals"] = missing
        summary.update(ood.summary_fields(self.evals))  # out-of-domain rewards, the reward-hacking verdict
        if self.acc.is_main_process:
            runlog.write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
            plots.plot_curves(self.metrics.read(), self.evals, self.run_dir / "plots")
        self.acc.wait_for_everyone()  # no process takes the group down while the main one still writes
        self.acc.end_training()
        return summary
