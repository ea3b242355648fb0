"""``dgpo bench``: the paper's comparisons on the toy world, every arm with the same wall-clock
budget of training time (evals excluded) and several seeds.

Each run is a normal ``dgpo train`` (the embedded toy default plus the arm's overrides) that stops
at the budget and evaluates the slow-EMA weights (strict toy-GenEval, 10-step ODE) every
``eval_every_s`` seconds of training. Finished runs are stored as ``raw/<arm>__s<seed>.json``; a
rerun skips them, so the suite can run in parts, unless they were made by an older version of the
training code (``RESULTS_VERSION``): those are stale, rerun and left out of the report.
``report.md`` and PNG curves are written at the end.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dgpo.config import load_config
from dgpo.errors import InputError

log = logging.getLogger(__name__)

# bump when training or evaluation changes what a run measures; older raw results are rerun.
# 2: the official sigma grids and integer timesteps (every arm, evals included), Flow-GRPO's
#    official batching, uniform prompt sampling where not asked otherwise (the demo keeps balance)
# 3: the 2026-11 toy base (0.42 M parameters, coordinates) and the demo's full fine-tuning; evals of at
#    least eval_per_category images per category, prompts spread over each category
RESULTS_VERSION = 3

# Flow-GRPO as its official code trains (configs/toy_flow_grpo_official.yaml holds the same values):
# 2 optimizer steps per epoch over a random shuffle of the samples across groups, global advantage
# std, samples with advantage exactly 0 dropped (refilled to a multiple of 4 sampling batches).
# Group size, groups per epoch, evals, the slow EMA, the parameter set (the toy demo's full
# fine-tuning; the official LoRA r 32 / alpha 64 is in the yaml) and the learning rate stay the
# suite's own, so that every arm sees the same images per epoch and the same eval, and differs from
# the others in its algorithm only.
FLOW_GRPO_OFFICIAL = ["train.algorithm=flow_grpo", "train.steps_per_epoch=2", "train.sampling_batches=4",
                      "dgpo.adv_std=global", "grpo.zero_adv=samples", "grpo.shuffle=true"]

NFT_OFFICIAL = ["train.algorithm=nft", "dgpo.adv_std=global"]

ARMS: dict[str, list[str]] = {
    "dgpo": [],
    "flow_grpo": FLOW_GRPO_OFFICIAL,
    # the same at a third of the suite's learning rate: on the toy, Flow-GRPO drifts below its start at the
    # suite's 3e-4 and collapses at 1e-3 (docs/bench/flow_grpo_on_the_toy.md)
    "flow_grpo_lr1e-4": [*FLOW_GRPO_OFFICIAL, "train.lr=1e-4"],
    "dgpo_sde": ["sampler.sde_noise=0.7"],
    "tmin_0": ["dgpo.timestep_mode=uniform", "dgpo.t_min=0.0"],
    "tmin_0.3": ["dgpo.timestep_mode=uniform", "dgpo.t_min=0.3"],
    "tmin_0.6": ["dgpo.timestep_mode=uniform", "dgpo.t_min=0.6"],
    "tmin_anneal": ["dgpo.timestep_mode=uniform", "dgpo.t_min=0.8", "dgpo.t_min_end=0.2"],
    "dpo": ["train.algorithm=dpo", "dpo.beta=5000"],  # the bench's DPO arms ran at Diffusion-DPO's beta
    "dgpo_offline": ["train.offline=true"],
    "dpo_offline": ["train.algorithm=dpo", "train.offline=true", "dpo.beta=5000"],
    # DiffusionNFT as its official code trains (configs/toy_nft_official.yaml): CFG-free rollouts and evals
    # (its recipes set guidance 1), the negative-aware loss at 9 of the 10 grid timesteps per sample, global
    # advantage std; nft_cfg: the same loss with the suite's CFG 4.5 rollouts and evals
    "nft": [*NFT_OFFICIAL, "sampler.cfg_scale=1.0"],
    "nft_cfg": NFT_OFFICIAL,
    "nft_tclip": [*NFT_OFFICIAL, "sampler.cfg_scale=1.0", "nft.trunc_steps=4"],  # DGPO's high-noise candidates
    "nft_group_noise": [*NFT_OFFICIAL, "sampler.cfg_scale=1.0", "nft.group_noise=true"],  # DGPO's shared noise
    "dgpo_cfg1": ["sampler.cfg_scale=1.0"],  # DGPO from NFT's CFG-free start
    "dgpo_lora": ["train.lora_rank=32", "train.lora_alpha=64"],  # beside nft_lora: both with LoRA r 32 / alpha 64
    "nft_lora": [*NFT_OFFICIAL, "sampler.cfg_scale=1.0", "train.lora_rank=32", "train.lora_alpha=64"],  # official LoRA
    "g4": ["train.group_size=4", "train.prompts_per_epoch=16"],
    "g16": ["train.group_size=16", "train.prompts_per_epoch=4"],
    "w_rank": ["dgpo.weighting=rank"],
    "w_softmax": ["dgpo.weighting=softmax"],
    "w_sign": ["dgpo.weighting=sign"],
}

# arms that train longer than the suite's budget, so that the time-to-target ratio can be measured
# where they are slow (at 360 s Flow-GRPO has not yet moved from the start); every other statistic
# (late score, final, conclusions) is read at the suite's budget, the same for every arm
BUDGET_SCALE: dict[str, float] = {"flow_grpo": 3.0, "flow_grpo_lr1e-4": 3.0}
SLOW_ARMS = list(BUDGET_SCALE)  # the headline ratio times DGPO against each of them

COMPARISONS: dict[str, list[str]] = {
    "DGPO vs Flow-GRPO": ["dgpo", "flow_grpo", "flow_grpo_lr1e-4"],
    "ODE vs SDE rollouts (DGPO)": ["dgpo", "dgpo_sde"],
    "Timestep clipping (t_min; grid = the official default)": ["dgpo", "tmin_0", "tmin_0.3", "tmin_0.6", "tmin_anneal"],
    "Group preferences vs pairs, online vs offline": ["dgpo", "dpo", "dgpo_offline", "dpo_offline"],
    "DGPO vs DiffusionNFT (nft: CFG-free, evaluated without CFG)": ["dgpo", "nft", "nft_cfg", "nft_tclip",
                                                                   "nft_group_noise", "nft_lora", "dgpo_lora",
                                                                   "dgpo_cfg1"],
    "Group size (same images per epoch)": ["g4", "dgpo", "g16"],
    "Group weightings": ["dgpo", "w_rank", "w_softmax", "w_sign"],
}
QUICK_ARMS = ["dgpo", "flow_grpo", "dpo"]
# the default suite: the paper's comparisons and two variants per ablation at most, 3 seeds each (~7 h on 2 cores);
# the other arms (a mid t_min, the annealed t_min, offline DPO, softmax weights) run with --arms and are
# reported when present
SUITE_ARMS = ["dgpo", "flow_grpo", "flow_grpo_lr1e-4", "dgpo_sde", "dpo", "tmin_0", "tmin_0.6", "dgpo_offline",
              "g4", "g16", "w_rank", "w_sign"]
LABEL = {"dgpo": "dgpo (default: grid t, ODE, weights A, G 8)"}


@dataclass
class BenchSpec:
    out: Path
    arms: list[str]
    seeds: list[int]
    budget_s: float
    eval_every_s: float
    eval_per_category: int
    extra: tuple[str, ...] = ()  # overrides for every arm (e.g. model.path for a test model)


def quick_spec(out: Path) -> BenchSpec:
    return BenchSpec(out, QUICK_ARMS, [0], 60.0, 30.0, 6)


def default_spec(out: Path) -> BenchSpec:
    # 360 s hold ~150 DGPO steps on 2 cores (where the demo recipe gains +0.06 to +0.10:
    # docs/toy_demo_tuning.md);
    # an eval every 30 s resolves the early rise; >= 40 images per category keep an eval's noise
    # (about +-0.03 overall) under the differences between arms
    return BenchSpec(out, list(SUITE_ARMS), [0, 1, 2], 360.0, 30.0, 40)


def arm_budget(spec: BenchSpec, arm: str) -> float:
    return spec.budget_s * BUDGET_SCALE.get(arm, 1.0)


# what every run's config gets from the bench itself (seed, folder, budget, evals): not for --set
BENCH_KEYS = ("run.seed", "run.out_dir", "run.epochs", "run.time_budget_s", "run.eval_every_s",
              "run.sample_every", "run.save_every", "eval.per_category", "eval.min_per_category")


def check_extra(spec: BenchSpec) -> None:
    """The overrides for every arm (``dgpo bench --set``): KEY=VALUE pairs of valid config keys that neither
    the bench nor one of the chosen arms sets (an arm's own value would be overwritten unseen)."""
    for item in spec.extra:
        key = item.split("=", 1)[0].strip()
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. train.batch_size=256")
        if key in BENCH_KEYS:
            raise InputError(f"--set {key}: the bench sets it for every run (seeds: --seeds; budget: "
                             "--budget-s; evals: --eval-every-s, --eval-per-category)")
        clash = [a for a in spec.arms if any(o.split("=", 1)[0] == key for o in ARMS.get(a, []))]
        if clash:
            raise InputError(f"--set {key}: the arm(s) {', '.join(clash)} set it themselves; choose the "
                             "other arms with --arms")
    load_config(None, list(spec.extra))  # an unknown key or a bad value: a ConfigError naming it


def run_config(spec: BenchSpec, arm: str, seed: int):
    return load_config(None, [
        *ARMS[arm], f"run.seed={seed}", f"run.out_dir={spec.out / 'runs' / f'{arm}__s{seed}'}",
        "run.epochs=100000", f"run.time_budget_s={arm_budget(spec, arm)}", f"run.eval_every_s={spec.eval_every_s}",
        "run.sample_every=0", "run.save_every=0", f"eval.per_category={spec.eval_per_category}",
        f"eval.min_per_category={spec.eval_per_category}", *spec.extra])


def run_suite(spec: BenchSpec) -> dict:
    from dgpo.training.trainer import Trainer

    raw = spec.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for arm in spec.arms:
        if arm not in ARMS:
            raise InputError(f"unknown bench arm {arm!r}; allowed: {sorted(ARMS)}")
    check_extra(spec)
    for seed in spec.seeds:
        for arm in spec.arms:
            path = raw / f"{arm}__s{seed}.json"
            done = path.is_file() and is_current(json.loads(path.read_text()), arm_budget(spec, arm),
                                                 spec.extra, _device())
            if done:
                log.info("bench: %s seed %d already done, skipped", arm, seed)
                continue
            cfg = run_config(spec, arm, seed)
            summary = Trainer(cfg).fit()
            path.write_text(json.dumps({"arm": arm, "seed": seed, "version": RESULTS_VERSION,
                                        "overrides": ARMS[arm], "threads": torch.get_num_threads(), "device": _device(),
                                        "budget_s": arm_budget(spec, arm), "extra": list(spec.extra),
                                        "steps": summary["steps"], "evals": summary["evals"]}) + "\n")
    results = load_results(raw)
    write_report(spec, results)
    return results


def _device() -> str:
    """What a run trained on: the GPU's name, else "CPU"."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def is_current(result: dict, budget_s: float | None = None, extra: tuple[str, ...] | None = None,
               device: str | None = None) -> bool:
    """Whether a raw result was made by the current training code (else it needs a rerun), and with
    ``budget_s``, the overrides for every arm ``extra`` and on ``device`` where given (else it is rerun
    too: a budget of seconds means another thing on another device)."""
    same_budget = budget_s is None or abs(result.get("budget_s", budget_s) - budget_s) < 1e-6
    same_extra = extra is None or list(result.get("extra", [])) == list(extra)
    same_device = device is None or result.get("device", "CPU") == device
    return result.get("version", 1) == RESULTS_VERSION and same_budget and same_extra and same_device


def load_results(raw: Path) -> dict[str, list[dict]]:
    """Current raw results by arm; stale ones (older RESULTS_VERSION) are left out."""
    out: dict[str, list[dict]] = {}
    for p in sorted(raw.glob("*.json")):
        r = json.loads(p.read_text())
        if not is_current(r):
            log.warning("bench: %s is from an older version of the training code: rerun it", p.name)
            continue
        out.setdefault(r["arm"], []).append(r)
    return out


def curve_at(evals: list[dict], xs: np.ndarray, key: str = "train_time_s", metric: str = "overall") -> np.ndarray:
    """The eval curve, linearly interpolated between evals (NaN after the run's last eval)."""
    t = np.array([e[key] for e in evals], dtype=float)
    v = np.array([e[metric] for e in evals], dtype=float)
    out = np.interp(xs, t, v)
    out[xs > t[-1] + 1e-9] = np.nan
    return out


def mean_curve(runs: list[dict], key: str, n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    end = min(r["evals"][-1][key] for r in runs)
    xs = np.linspace(0, end, n)
    ys = np.stack([curve_at(r["evals"], xs, key) for r in runs])
    return xs, ys.mean(0), ys.std(0)


def time_to_reach(xs: np.ndarray, ys: np.ndarray, target: float) -> float | None:
    hit = np.nonzero(ys >= target - 1e-12)[0]
    return float(xs[hit[0]]) if len(hit) else None


def upto(runs: list[dict], end: float | None) -> list[dict]:
    """The runs as they stood at training time ``end`` (None: all): their evals before ``end`` and the
    first one at or after it (a run's budget ends at an epoch's end, just past the budget), so that
    every arm is read at one horizon."""
    if end is None:
        return runs
    out = []
    for r in runs:
        before = [e for e in r["evals"] if e["train_time_s"] < end]
        after = [e for e in r["evals"] if e["train_time_s"] >= end][:1]
        out.append({**r, "evals": before + after})
    return out


def _ratio(slow: list[dict], fast: list[dict], key: str, end: float | None = None, level: str = "slow"):
    """(target, t_slow, t_fast): the late score at the horizon ``end`` (seed mean; the best eval would
    be biased upwards by eval noise) of the slow arm (``level="slow"``) or the fast one, and when each
    arm's seed-mean curve first reaches it (over the whole run: a slow arm may train past the horizon)."""
    target = float(late_scores(upto(slow if level == "slow" else fast, end)).mean())
    xs_s, ys_s, _ = mean_curve(slow, key)
    xs_f, ys_f, _ = mean_curve(fast, key)
    return target, time_to_reach(xs_s, ys_s, target), time_to_reach(xs_f, ys_f, target)


def speed_ratio(results: dict[str, list[dict]], fast: str = "dgpo", slow: str = "flow_grpo",
                key: str = "train_time_s", n_boot: int = 2000, end: float | None = None,
                level: str = "slow") -> dict | None:
    """Training time the slow arm (Flow-GRPO) needs to reach a level over the time the fast one (DGPO)
    needs: the level the slow arm ends at (``level="slow"``: its late score) or the one the fast arm
    ends at (``"fast"``; the slow arm may then never get there). Seed-mean curves, linear between
    evals; the spread is the 10th-90th percentiles over seed bootstraps (each arm's seeds resampled
    with replacement, the target recomputed each time; a resample where the arm never gets there
    counts as infinitely slow)."""
    if fast not in results or slow not in results:
        return None
    target, t_slow, t_fast = _ratio(results[slow], results[fast], key, end, level)
    ratio = None if not t_fast or t_slow is None else t_slow / t_fast
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(n_boot):
        s = [results[slow][i] for i in rng.integers(0, len(results[slow]), len(results[slow]))]
        f = [results[fast][i] for i in rng.integers(0, len(results[fast]), len(results[fast]))]
        _, ts, tf = _ratio(s, f, key, end, level)
        boots.append(np.inf if not tf or ts is None else ts / tf)
    first = min(r["evals"][1][key] for r in results[fast] if len(r["evals"]) > 1) if ratio else None
    per_seed = {arm: [time_to_reach(*mean_curve([r], key)[:2], target) for r in results[arm]]
                for arm in (fast, slow)}
    return {"target": target, "t_slow": t_slow, "t_fast": t_fast, "ratio": ratio, "key": key,
            "p10": float(np.percentile(boots, 10, method="lower")) if boots else None,
            "p90": float(np.percentile(boots, 90, method="higher")) if boots else None,
            "per_seed": per_seed, "zero_time": t_fast == 0.0,
            "slow_end": min(r["evals"][-1][key] for r in results[slow]),
            "first_interval": bool(ratio and t_fast <= first + 1e-9)}


def late_scores(runs: list[dict], frac: float = 1 / 3) -> np.ndarray:
    """Per seed: the mean of the evals in the last ``frac`` of the run's training time (less noisy
    than the final eval alone)."""
    out = []
    for r in runs:
        t = np.array([e["train_time_s"] for e in r["evals"]])
        v = np.array([e["overall"] for e in r["evals"]])
        out.append(v[t >= (1 - frac) * t[-1] - 1e-9].mean())
    return np.array(out)


def compare(arm: str, ref: str, results: dict[str, list[dict]], end: float | None = None) -> dict:
    """``arm`` against ``ref`` on the late score: the difference of the seed means, its standard
    error, and a verdict (a difference under 2 standard errors is "no difference at this budget")."""
    a, b = late_scores(upto(results[arm], end)), late_scores(upto(results[ref], end))
    diff = float(a.mean() - b.mean())
    se = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))) if min(len(a), len(b)) > 1 else float("nan")
    verdict = ("undecided: a single seed has no spread" if np.isnan(se) else "no difference at this budget"
               if abs(diff) <= 2 * se else "higher" if diff > 0 else "lower")
    return {"arm": arm, "ref": ref, "score": float(a.mean()), "score_std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "ref_score": float(b.mean()), "diff": diff, "se": se, "verdict": verdict, "n": len(a), "n_ref": len(b)}


def summary_row(arm: str, runs: list[dict], end: float | None = None) -> dict:
    runs = upto(runs, end)
    final = np.array([r["evals"][-1]["overall"] for r in runs])
    start = np.array([r["evals"][0]["overall"] for r in runs])
    best = np.array([max(e["overall"] for e in r["evals"]) for r in runs])
    last = [r["evals"][-1] for r in runs]
    return {"arm": arm, "n": len(runs), "start": start.mean(), "final": final.mean(), "final_std": final.std(),
            "late": late_scores(runs).mean(),
            "best": best.mean(), "steps": np.mean([r["evals"][-1].get("step", r["steps"]) for r in runs]),
            "images": np.mean([e["images"] for e in last]),
            "sharpness": np.mean([e.get("sharpness", np.nan) for e in last]),
            "off_palette": np.mean([e.get("off_palette", np.nan) for e in last])}


def write_report(spec: BenchSpec, results: dict[str, list[dict]]) -> Path:
    from dgpo.bench_report import render_report

    return render_report(spec, results)
