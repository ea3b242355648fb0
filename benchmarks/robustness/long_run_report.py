"""The report of benchmarks/robustness/long_run.py: RSS and epoch-time statistics (JSON) and their curves
(PNG).

Samples rows: {t, segment, pid, rss_mb, cpu_s, procs, load1}; event rows: {event: start|attach|exit, t,
segment, ...}. A segment is one trainer process: after a restart memory starts afresh, so each segment
has its own warm-up and its own intercept in the RSS fit (one common slope).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

from benchmarks.common import write_result

HOUR = 3600.0


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; a line cut short (being written, or by a killed writer) is skipped."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def _finite(x):
    """NaN (a statistic without enough samples yet) as null: the result stays strict JSON."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    return None if isinstance(x, float) and x != x else x


def epoch_rows(run_dir: Path) -> list[dict]:
    """One row per epoch from metrics.jsonl: its end (wall_time) and its time (rollout + reward + train;
    time_train counts from the epoch's training start, so the max over the epoch's optimizer steps).
    Epochs redone after a resume replace the ones logged before the restart."""
    by_epoch: dict[int, dict] = {}
    last = -1
    for r in read_jsonl(run_dir / "metrics.jsonl"):
        e = r["epoch"]
        if e < last:  # a rewind: the trainer restarted from an earlier checkpoint
            by_epoch = {k: v for k, v in by_epoch.items() if k < e}
        last = e
        secs = r["time_rollout"] + r["time_reward"] + r["time_train"]
        old = by_epoch.get(e)
        secs = max(secs, old["epoch_s"]) if old else secs
        by_epoch[e] = {"epoch": e, "end": r["wall_time"], "epoch_s": secs}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _segments(rows: list[dict], warmup_s: float) -> list[dict]:
    """Each trainer process: its start time, warm-up end and samples."""
    segs: dict[int, dict] = {}
    for r in rows:
        if r.get("event") == "start":
            t = r["t"]
            segs[r["segment"]] = {"start": t, "warm_end": t + warmup_s, "t": [], "rss": [], "cpu": []}
    for r in rows:
        if "event" not in r and r["segment"] in segs:
            s = segs[r["segment"]]
            s["t"].append(r["t"]), s["rss"].append(r["rss_mb"]), s["cpu"].append(r["cpu_s"])
    arrays = ("t", "rss", "cpu")
    return [{**s, **{k: np.asarray(s[k], float) for k in arrays}} for _, s in sorted(segs.items())]


def _common_slope(segs: list[dict]) -> float:
    """Least-squares slope of RSS (MB/h) over post-warm-up samples, one intercept per segment."""
    num = den = 0.0
    for s in segs:
        m = s["t"] >= s["warm_end"]
        if m.sum() >= 2:
            t, y = s["t"][m] / HOUR, s["rss"][m]
            num += float(((t - t.mean()) * (y - y.mean())).sum())
            den += float(((t - t.mean()) ** 2).sum())
    return num / den if den > 0 else float("nan")


def rss_stats(segs: list[dict], bound_mb: float, first_epoch_end: float | None) -> dict:
    """RSS levels, the common post-warm-up slope, and three growth measures for the bound (first
    process): fitted slope x span; median of the last vs the first 10 post-warm-up minutes (the level
    between evals); peak of the last vs the first quarter of the post-warm-up time (eval peaks)."""
    first, last = segs[0], segs[-1]
    post = [(s["t"][s["t"] >= s["warm_end"]], s["rss"][s["t"] >= s["warm_end"]]) for s in segs]
    span_h = sum(float(t[-1] - t[0]) / HOUR for t, _ in post if len(t) >= 2)
    slope = _common_slope(segs)
    after_first = first["rss"][first["t"] >= (first_epoch_end or 0)]
    out = {"launch_mb": float(first["rss"][0]),
           "start_mb": float(after_first[0] if len(after_first) else first["rss"][0]),  # after epoch 1
           "max_mb": float(max(s["rss"].max() for s in segs)), "end_mb": float(last["rss"][-1]),
           "post_warmup_hours": span_h, "slope_mb_per_hour": slope, "fit_growth_mb": slope * span_h}
    t, y = post[0]
    if len(t) >= 8:
        head, tail = y[t <= t[0] + 600], y[t >= t[-1] - 600]
        q = (t[-1] - t[0]) / 4
        out.update(after_warmup_mb=float(np.median(head)), last_10min_mb=float(np.median(tail)),
                   median_growth_mb=float(np.median(tail) - np.median(head)),
                   max_after_warmup_mb=float(y.max()), first_quarter_peak_mb=float(y[t <= t[0] + q].max()),
                   last_quarter_peak_mb=float(y[t >= t[-1] - q].max()))
        out["peak_growth_mb"] = out["last_quarter_peak_mb"] - out["first_quarter_peak_mb"]
        growths = ("fit_growth_mb", "median_growth_mb", "peak_growth_mb")
        out["within_bound"] = all(out[k] < bound_mb for k in growths)
    return out


def _per_epoch_cpu(epochs: list[dict], segs: list[dict]) -> np.ndarray:
    """CPU seconds of each epoch (previous epoch end -> its end), interpolated from the samples of the
    same process; NaN where that is not possible. Unlike wall time it barely moves with contention."""
    out = np.full(len(epochs), np.nan)
    for i in range(1, len(epochs)):
        a, b = epochs[i - 1]["end"], epochs[i]["end"]
        for s in segs:
            if len(s["t"]) >= 2 and s["t"][0] <= a and b <= s["t"][-1]:
                out[i] = np.interp(b, s["t"], s["cpu"]) - np.interp(a, s["t"], s["cpu"])
    return out


def _drift(values: np.ndarray, hours: np.ndarray) -> dict:
    ok = ~np.isnan(values)
    v, h = values[ok], hours[ok]
    if len(v) < 8:
        return {}
    q = len(v) // 4
    first, last = float(np.median(v[:q])), float(np.median(v[-q:]))
    slope = float(np.polyfit(h, v, 1)[0]) if np.ptp(h) > 0 else float("nan")
    return {"epochs": int(len(v)), "first_quarter_median_s": first, "last_quarter_median_s": last,
            "drift": last / first - 1, "slope_pct_per_hour": 100 * slope / first}


def epoch_stats(epochs: list[dict], segs: list[dict], t0: float, drift_bound: float) -> tuple[dict, dict]:
    """Epoch-time statistics over post-warm-up epochs, and the arrays the figure needs."""
    ends = np.array([e["end"] for e in epochs])
    warm = np.zeros(len(epochs), bool)
    for s in segs:
        warm |= (ends >= s["start"]) & (ends < s["warm_end"])
    secs = np.array([e["epoch_s"] for e in epochs])
    cpu = _per_epoch_cpu(epochs, segs)
    wall = np.r_[np.nan, np.diff(ends)]  # includes evals, grids, checkpoints; NaN across restarts
    for s in segs[1:]:
        first = int(np.searchsorted(ends, s["start"]))  # the first epoch that process finished
        if first < len(wall):
            wall[first] = np.nan
    hours = (ends - t0) / HOUR
    keep = ~warm
    stats = {"phases_s": _drift(secs[keep], hours[keep]), "cpu_s": _drift(cpu[keep], hours[keep]),
             "wall_delta_s": _drift(wall[keep], hours[keep])}
    for key, verdict in (("phases_s", "within_bound"), ("cpu_s", "cpu_within_bound")):
        if stats[key]:
            # a slowdown fails; a speed-up (less contention) does not
            stats[verdict] = bool(stats[key]["drift"] < drift_bound)
    return stats, {"epoch": np.array([e["epoch"] for e in epochs]), "secs": secs, "cpu": cpu, "warm": warm}


def report(out: Path, run_dir: Path, a) -> dict:
    rows = read_jsonl(out / "samples.jsonl")
    segs = [s for s in _segments(rows, a.warmup_min * 60) if len(s["t"])]
    if not segs:
        raise SystemExit(f"{out / 'samples.jsonl'} holds no samples yet")
    t0 = segs[0]["start"]
    epochs = epoch_rows(run_dir)
    ep_stats, arrays = epoch_stats(epochs, segs, t0, a.drift_bound) if epochs else ({}, None)
    loads = np.array([r["load1"] for r in rows if "load1" in r])
    result = {
        "bound": {"rss_growth_mb": a.rss_bound_mb, "epoch_time_drift": a.drift_bound,
                  "warmup_min": a.warmup_min},
        "duration_h": float((segs[-1]["t"][-1] - t0) / HOUR), "trainer_processes": len(segs),
        "epochs": len(epochs), "samples": int(sum(len(s["t"]) for s in segs)),
        "finished": (run_dir / "summary.json").exists(),
        "rss": rss_stats(segs, a.rss_bound_mb, epochs[0]["end"] if epochs else None), "epoch_time": ep_stats,
        "load1": {"mean": float(loads.mean()), "max": float(loads.max())} if len(loads) else {},
        "command": next((r["cmd"] for r in rows if r.get("event") == "start"), None),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
    }
    write_result(_finite(result), a.json)
    plot(segs, t0, result, arrays, a, Path(a.png))
    print(f"wrote {a.json} and {a.png}")
    return result


def _rolling_median(v: np.ndarray, w: int) -> np.ndarray:
    return np.array([np.nanmedian(v[max(0, i - w // 2): i + w // 2 + 1]) for i in range(len(v))])


def plot(segs: list[dict], t0: float, res: dict, arr: dict | None, a, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 8))
    rss = res["rss"]
    for i, s in enumerate(segs):
        h = (s["t"] - t0) / HOUR
        ax1.plot(h, s["rss"], lw=0.8, color="C0", label="RSS (trainer + children)" if i == 0 else None)
        ax1.axvspan((s["start"] - t0) / HOUR, (s["warm_end"] - t0) / HOUR, color="0.9",
                    label="warm-up (left out)" if i == 0 else None)
    if "after_warmup_mb" in rss:
        s = segs[0]
        m = s["t"] >= s["warm_end"]
        h, y = (s["t"][m] - t0) / HOUR, s["rss"][m]
        slope = rss["slope_mb_per_hour"]
        ax1.plot(h, y.mean() + slope * (h - h.mean()), "k--", lw=1,
                 label=f"least-squares fit: {slope:+.1f} MB/h")
        ax1.axhline(rss["after_warmup_mb"] + a.rss_bound_mb, color="C3", ls=":",
                    label=f"bound on the level: first 10 min after warm-up (median) + {a.rss_bound_mb:g} MB")
        ax1.axhline(rss["first_quarter_peak_mb"] + a.rss_bound_mb, color="C1", ls=":",
                    label=f"bound on the peaks (evals): first-quarter peak + {a.rss_bound_mb:g} MB")
    ax1.set(xlabel="hours since start", ylabel="RSS (MB)", title="memory")
    ax1.legend(loc="lower right", fontsize=8)
    if arr is not None:
        w = max(5, len(arr["secs"]) // 40)
        ax2.plot(arr["epoch"], arr["secs"], ".", ms=2, color="0.6",
                 label="epoch time (rollout + reward + train)")
        ax2.plot(arr["epoch"], _rolling_median(arr["secs"], w), color="C0",
                 label=f"rolling median ({w} epochs)")
        ax2.plot(arr["epoch"], _rolling_median(arr["cpu"], w), color="C2", lw=1,
                 label="CPU s per epoch, rolling median (insensitive to contention)")
        ph = res["epoch_time"].get("phases_s")
        top = float(np.nanpercentile(arr["secs"], 99)) * 1.2
        if ph:
            ax2.axhline(ph["first_quarter_median_s"], color="k", ls="--", lw=1, label="first-quarter median")
            ax2.axhline(ph["first_quarter_median_s"] * (1 + a.drift_bound), color="C3", ls=":",
                        label=f"bound: +{100 * a.drift_bound:g} %")
            top = max(top, ph["first_quarter_median_s"] * (1 + a.drift_bound) * 1.1)
        ax2.set_ylim(0, top)
        ax2.legend(loc="lower right", fontsize=8)
    ax2.set(xlabel="epoch", ylabel="seconds", title="epoch time")
    fig.suptitle(f"dgpo train, toy default, {res['duration_h']:.2f} h, {res['epochs']} epochs "
                 f"(mean 1-min load {res['load1'].get('mean', float('nan')):.2f} on {res['cpus']} cores)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
