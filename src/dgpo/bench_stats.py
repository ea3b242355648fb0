"""``dgpo bench``'s statistics on finished runs (raw results: ``{"arm", "seed", "evals": [...]}``): eval
curves, late scores, arm-vs-arm comparisons and the time-to-target speed ratio. :mod:`dgpo.bench`
and :mod:`dgpo.bench_report` both read them."""

from __future__ import annotations

import numpy as np


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


def late_scores(runs: list[dict], frac: float = 1 / 3, value=None) -> np.ndarray:
    """Per seed: the mean of the evals in the last ``frac`` of the run's training time (less noisy
    than the final eval alone); ``value(eval)``: what is averaged (default its ``overall``; a None from
    it is left out, a seed with none there is NaN)."""
    out = []
    for r in runs:
        t = np.array([e["train_time_s"] for e in r["evals"]])
        if value is None:
            v = np.array([e["overall"] for e in r["evals"]])
            out.append(v[t >= (1 - frac) * t[-1] - 1e-9].mean())
            continue
        v = np.array([value(e) for e in r["evals"]], dtype=float)[t >= (1 - frac) * t[-1] - 1e-9]
        out.append(v[~np.isnan(v)].mean() if (~np.isnan(v)).any() else np.nan)
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
