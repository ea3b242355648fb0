"""How DGPO's training signal depends on the timestep over a toy run (issue 32: the adaptive t_min).

Trains a short toy DGPO run per seed (the demo config, checkpoints every ``--save-every`` epochs), then at
the base and at each checkpoint rolls out ``--batches`` fresh epochs and measures, at each training sigma
of ``--sigmas``:

* gradient agreement of the DGPO term (no KL): K chunk gradients (one group each); ``coherence`` =
  ||E g||^2 / E||g||^2 (unbiased from the K chunks: 1 = every chunk agrees, 0 = pure noise),
  ``half_cosine`` = cosine of the mean gradients of two disjoint halves (independent rollout batches),
  ``cos_trained`` = cosine of this sigma's mean gradient with the mean over the sigmas >= 0.6;
* loss differences delta = dsm - dsm_ref: mean |delta|, relative to dsm_ref;
* the Bradley-Terry weight sigma(S_g): share below 0.1 (saturated) and above 0.9;
* the preference the policy already holds on fresh rollouts: the share of groups with S_g < 0
  (``pref_acc``), the within-group correlation of A with -delta (``pref_corr``: centred per group, as
  the adaptive rule's statistic) and the uncentred cosine of A with -delta over all samples (``pref_cos``);
  the PPO clip share.

Usage: python -m benchmarks.studies.toy_tmin_bands [--seeds 0 1] [--epochs 24] [--out PATH] [key=value ...]
Writes bench_results/toy_tmin_bands.json; ``--table PATH`` prints the seed-mean tables of a result
(docs/results/adaptive-tmin.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from dgpo.advantages import group_advantages
from dgpo.config import load_config
from dgpo.losses.dgpo import dgpo_velocity_loss, local_group_sum
from dgpo.timesteps import TrainTime
from dgpo.training import checkpoints
from dgpo.training.trainer import Trainer

from benchmarks.common import write_result
from benchmarks.studies.toy_grad_snr import rollout

SIGMAS = [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95]
QUIET = ["run.eval_at_ends=false", "run.sample_every=0", "run.keep_checkpoints=0"]


def train(seed: int, epochs: int, save_every: int, run_dir: Path, overrides: list[str]) -> list[Path]:
    """A short toy DGPO run; its checkpoints, oldest first."""
    cfg = load_config(None, [f"run.out_dir={run_dir}", f"run.seed={seed}", f"run.epochs={epochs}",
                             f"run.save_every={save_every}", *QUIET, *overrides])
    Trainer(cfg).fit()
    return sorted(checkpoints.candidates(run_dir / "checkpoints"))


def point_trainer(seed: int, ckpt: Path | None, tmp: Path, overrides: list[str]) -> Trainer:
    """A trainer holding the base (ckpt None) or a checkpoint's policy and 'old' model."""
    shutil.rmtree(tmp, ignore_errors=True)
    tr = Trainer(load_config(None, [f"run.out_dir={tmp}", f"run.seed={seed}", *QUIET, *overrides]))
    if ckpt is not None:
        parts, state = checkpoints.load_checkpoint(ckpt, ["policy", "ema_old", "ema_slow"], tr.opt)
        tr.policy.load_state_dict(parts["policy"])
        tr.algo.old_model.load_state_dict(parts["ema_old"])
        tr.step = state["step"]
    return tr


def chunk_terms(tr: Trainer, batch, adv: torch.Tensor, mb: torch.Tensor, sigma: float, slot: int, key: int):
    """(flat DGPO-term gradient, per-sample stats) of one chunk at one training sigma."""
    c = tr.cfg
    unit = TrainTime(sigma, torch.tensor(sigma, dtype=torch.float32) * 1000)
    o = tr.algo.denoising_losses(batch, mb, unit, slot, key)
    a, gids = adv[mb], batch.group_ids[mb]
    out = dgpo_velocity_loss(o["v"], o["v_ref"], o["target"], a, gids, c.dgpo.beta_dpo, c.train.group_size,
                             local_group_sum, v_old=o.get("v_old"), clip_range=c.dgpo.clip_range)
    params = [p for p in tr.policy.params if p.requires_grad]
    grad = torch.cat([g.flatten() for g in torch.autograd.grad(out.loss, params)])
    delta = (o["dsm"] - o["dsm_ref"]).detach()
    score = local_group_sum(a * c.dgpo.beta_dpo * delta / c.train.group_size, gids)
    return grad, {"a": a, "g": gids, "delta": delta, "ref": o["dsm_ref"], "score": score,
                  "weight": out.weight.detach(), "clip": out.clipped.float()}


def pref_stats(parts: list[dict]) -> dict:
    """Per group of fresh rollouts: does the policy's implicit reward -delta already rank it as A does?"""
    acc, corr = [], []
    for p in parts:
        for g in p["g"].unique():
            m = p["g"] == g
            a, d = p["a"][m], -p["delta"][m]
            if a.std() == 0 or d.std() == 0:
                continue
            acc.append(float(p["score"][m][0] < 0))
            corr.append(float(torch.corrcoef(torch.stack([a, d]))[0, 1]))
    mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731 - the base: delta is 0 everywhere
    a, d = torch.cat([p["a"] for p in parts]), -torch.cat([p["delta"] for p in parts])
    scale = float((a.pow(2).sum() * d.pow(2).sum()).sqrt())  # the adaptive rule's statistic, uncentred
    return {"pref_acc": mean(acc), "pref_corr": mean(corr), "pref_cos": float((a * d).sum()) / scale if scale else None}


def sigma_stats(grads: list[torch.Tensor], parts: list[dict]) -> dict:
    k, g = len(grads), torch.stack(grads)
    sq = float((g * g).sum(1).mean())
    mean_sq = (float(g.sum(0).pow(2).sum()) - k * sq) / (k * (k - 1))
    h = k // 2
    cat = lambda key: torch.cat([p[key] for p in parts])  # noqa: E731
    d, ref, w = cat("delta"), cat("ref"), cat("weight")
    return {"coherence": mean_sq / sq if sq else 0.0,
            "half_cosine": float(torch.nn.functional.cosine_similarity(g[:h].mean(0), g[h:].mean(0), dim=0)),
            "grad_norm": float(g.mean(0).norm()), "chunk_grad_norm": sq ** 0.5,
            "dsm_ref": float(ref.mean()), "abs_delta": float(d.abs().mean()),
            "rel_delta": float(d.abs().mean() / ref.mean()), "sat_low": float((w < 0.1).float().mean()),
            "sat_high": float((w > 0.9).float().mean()), "weight_mean": float(w.mean()),
            "clip": float(cat("clip").mean()), **pref_stats(parts)}


def measure(tr: Trainer, batches: int, sigmas: list[float], key0: int) -> dict:
    """Per sigma: the stats above over ``batches`` fresh rollout epochs, one chunk per group."""
    c, rolled = tr.cfg, []
    for b in range(batches):
        batch, rewards = rollout(tr, key0 + b)
        adv, _ = group_advantages(rewards, batch.group_ids, c.advantages.std, clip_max=c.advantages.clip_max)
        rolled.append((batch, adv, rewards))
    rows, means = [], []
    for slot, s in enumerate(sigmas):
        grads, parts = [], []
        for b, (batch, adv, _) in enumerate(rolled):
            for gs in torch.arange(batch.n_groups).split(1):
                mb = torch.nonzero(torch.isin(batch.group_ids, gs)).squeeze(1)
                grad, st = chunk_terms(tr, batch, adv, mb, s, slot, key0 + b)
                grads.append(grad)
                parts.append(st)
        rows.append({"sigma": s, **sigma_stats(grads, parts)})
        means.append(torch.stack(grads).mean(0))
    trained = torch.stack([m for s, m in zip(sigmas, means) if s >= 0.6]).mean(0)
    for r, m in zip(rows, means):
        r["cos_trained"] = float(torch.nn.functional.cosine_similarity(m, trained, dim=0))
    reward = float(torch.cat([r for *_, r in rolled]).mean())
    return {"step": tr.step, "reward_mean": reward, "sigmas": rows}


TABLES = {"coherence": "gradient coherence ||E g||^2 / E||g||^2", "half_cosine": "half-batch gradient cosine",
          "cos_trained": "cosine with the mean gradient at sigma >= 0.6", "grad_norm": "norm of the mean gradient",
          "rel_delta": "mean |delta| / mean dsm_ref", "saturated": "share of sigma(S_g) < 0.1 or > 0.9",
          "pref_corr": "within-group corr(A, -delta) on fresh rollouts (centred per group, as the rule)",
          "pref_cos": "cos(A, -delta) over all samples on fresh rollouts (uncentred)"}


def markdown(result: dict) -> str:
    """One table per statistic: rows sigma, columns the measured steps, each cell the mean over seeds."""
    runs, out = result["runs"], []
    steps = [p["step"] for p in runs[0]["points"]]
    for key, title in TABLES.items():
        out += [f"**{title}** (mean of {len(runs)} seeds)", "", "| sigma | " + " | ".join(f"step {s}" for s in steps)
                + " |", "|---" * (len(steps) + 1) + "|"]
        for i, sigma in enumerate(runs[0]["points"][0]["sigmas"]):
            cells = []
            for j in range(len(steps)):
                rows = [r["points"][j]["sigmas"][i] for r in runs]
                vals = [r["sat_low"] + r["sat_high"] if key == "saturated" else r[key] for r in rows]
                cells.append("-" if None in vals else f"{sum(vals) / len(vals):.3f}")
            out.append(f"| {sigma['sigma']:.2f} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--save-every", type=int, default=8)
    ap.add_argument("--batches", type=int, default=2, help="fresh rollout epochs per measurement point")
    ap.add_argument("--sigmas", type=float, nargs="+", default=SIGMAS)
    ap.add_argument("--out", default="bench_results/toy_tmin_bands.json")
    ap.add_argument("--table", help="print the tables of this result file instead of measuring")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.table:
        print(markdown(json.loads(Path(a.table).read_text())))
        return
    t0, runs = time.time(), []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            ckpts = train(seed, a.epochs, a.save_every, Path(tmp) / f"run{seed}", a.overrides)
            points = []
            for ckpt in [None, *ckpts]:
                tr = point_trainer(seed, ckpt, Path(tmp) / "point", a.overrides)
                points.append(measure(tr, a.batches, a.sigmas, 50_000 + 1000 * seed))
                print(f"seed {seed} step {points[-1]['step']}: {time.time() - t0:.0f} s", flush=True)
            runs.append({"seed": seed, "points": points})
    write_result({"epochs": a.epochs, "save_every": a.save_every, "batches": a.batches,
                  "overrides": a.overrides, "seconds": time.time() - t0, "runs": runs}, a.out)


if __name__ == "__main__":
    main()
