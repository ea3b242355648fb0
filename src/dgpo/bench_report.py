"""``dgpo bench``'s report: markdown tables (mean +- std over seeds), PNG curves, raw JSON."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dgpo.bench_arms import BUDGET_SCALE, COMPARISONS, LABEL, SLOW_ARMS
from dgpo.bench_stats import compare, late_scores, mean_curve, speed_ratio, summary_row, upto
from dgpo.training.ood import NOISE_SES, verdict


def _slug(title: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in title.lower()).strip("_")[:40]


def plot_comparison(title: str, arms: list[str], results: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, ax, xlabel in (("train_time_s", axes[0], "training time (s, evals excluded)"),
                            ("images", axes[1], "images generated")):
        for arm in arms:
            if arm not in results:
                continue
            xs, m, s = mean_curve(results[arm], key)
            ax.plot(xs, m, label=f"{LABEL.get(arm, arm)} (n={len(results[arm])})")
            ax.fill_between(xs, m - s, m + s, alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out strict overall")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ratio_line(r: dict, unit: str, whose: str, slow_name: str) -> str:
    fmt = lambda t: "never" if t is None else f"{t:.0f}"  # noqa: E731
    if r["t_slow"] == 0.0:
        verdict = f"undefined: {slow_name}'s curve starts at or above it"
    elif r["ratio"] is not None:
        p90 = "inf" if r["p90"] == float("inf") else f"{r['p90']:.1f}x"
        verdict = f"**{r['ratio']:.1f}x** (10th-90th percentile over seed bootstraps {r['p10']:.1f}x-{p90})"
        if r["first_interval"]:
            verdict += "; DGPO got there within its first eval interval, so the eval interval limits the estimate"
    elif r["zero_time"]:
        verdict = "unbounded: DGPO's first eval (before training) is already there"
    elif r["t_slow"] is None:
        bound = f" (more than {r['slow_end'] / r['t_fast']:.1f}x, its whole run)" if r["t_fast"] else ""
        verdict = f"not measured: {slow_name} never gets there within its run{bound}"
    else:
        verdict = "DGPO never gets there within its run"
    seeds = "; ".join(f"{arm}: " + ", ".join(map(fmt, ts)) for arm, ts in r["per_seed"].items())
    reach = lambda t: "never reaches it" if t is None else f"reaches it at {t:.0f}"  # noqa: E731
    return (f"- {whose} late score {r['target']:.3f}, by {unit} (seed-mean curves): {slow_name} {reach(r['t_slow'])}, "
            f"DGPO {reach(r['t_fast'])}; ratio {verdict}. Each seed alone: {seeds}.")


def _gain(runs: list[dict], end: float) -> tuple[float, float]:
    """An arm's late score minus its start: mean over seeds and its standard error."""
    g = late_scores(upto(runs, end)) - np.array([r["evals"][0]["overall"] for r in runs])
    return float(g.mean()), float(g.std(ddof=1) / np.sqrt(len(g))) if len(g) > 1 else float("nan")


def _ratio_text(results: dict, end: float) -> str:
    """The headline ratios of DGPO against each slow arm present: at the level DGPO ends at (its late
    score at the suite's budget) and at the one the slow arm ends at (its late score over its whole,
    longer run: where it gets to with the time it was given)."""
    slow_arms = [a for a in SLOW_ARMS if a in results]
    if "dgpo" not in results or not slow_arms:
        return "Flow-GRPO vs DGPO: both arms are needed for the ratio.\n"
    lines = []
    for slow in slow_arms:
        name = "Flow-GRPO" if slow == "flow_grpo" else f"Flow-GRPO ({slow})"
        for level, whose in (("fast", "DGPO's"), ("slow", f"{name}'s")):
            horizon = end if level == "fast" else None
            gain, se = _gain(results["dgpo" if level == "fast" else slow], horizon)
            # a level within the eval noise of the start (or below it): crossing it times noise; one seed has
            # no spread, so there only a level above the start is a target
            if not gain > (2 * se if se == se else 0.0):
                spread = f"standard error {se:.3f} over seeds" if se == se else "one seed"
                lines.append(f"- {whose} late score: no ratio, undefined as a target: it ends where it starts "
                             f"or below (gain {gain:+.3f}, {spread}).")
                continue
            for key, unit in (("train_time_s", "s of training"), ("images", "images")):
                r = speed_ratio(results, slow=slow, key=key, end=horizon, level=level)
                lines.append(_ratio_line(r, unit, whose, name))
    return "\n".join(lines) + "\n"


def _conclusions(arms: list[str], results: dict, end: float) -> list[str]:
    ref = "dgpo" if "dgpo" in arms else arms[0]
    out = []
    for arm in arms:
        if arm == ref:
            continue
        c = compare(arm, ref, results, end)
        what = c["verdict"] if c["verdict"] not in ("higher", "lower") else f"{c['verdict']} than {ref}"
        se = "" if np.isnan(c["se"]) else f", standard error {c['se']:.3f}"
        out.append(f"- **{arm}**: {what} (late score {c['score']:.3f} +- {c['score_std']:.3f} over {_seeds(c['n'])} "
                   f"vs {c['ref_score']:.3f} over {_seeds(c['n_ref'])}; difference {c['diff']:+.3f}{se}).")
    return out


def _extra_names(results: dict) -> list[str]:
    """The out-of-domain rewards (``eval.extra_rewards``) any run logged, in order of appearance."""
    return list(dict.fromkeys(n for runs in results.values() for r in runs for e in r["evals"]
                              for n in (e.get("extra") or {})))


def _late_extra(runs: list[dict], name: str, end: float) -> float:
    """An arm's late value of an out-of-domain reward: per seed the mean of its evals in the last third
    (as the target's late score), then over the seeds that logged it (NaN: none did)."""
    per_seed = late_scores(upto(runs, end), value=lambda e: (e.get("extra") or {}).get(name))
    per_seed = per_seed[~np.isnan(per_seed)]
    return float(per_seed.mean()) if len(per_seed) else float("nan")


def _hacking_line(arms: list[str], results: dict, end: float) -> str:
    """A comparison's line on reward hacking: the arms with a seed whose target reward rose while an
    out-of-domain reward fell (first eval to the last at the budget, beyond the eval noise)."""
    flagged = []
    for arm in arms:
        hits = [(r.get("seed", i), v["fell"]) for i, r in enumerate(upto(results[arm], end))
                if (v := verdict(r["evals"]))["flagged"]]
        if hits:
            seeds = "; ".join(f"seed {s}: {', '.join(fell)} fell" for s, fell in hits)
            flagged.append(f"**{LABEL.get(arm, arm)}** ({seeds})")
    rule = (f"the target reward rose while an out-of-domain reward fell, first eval to last, each beyond "
            f"{NOISE_SES:g} standard errors of the eval noise")
    return (f"- Reward hacking ({rule}): " + ("; ".join(flagged) if flagged else "no arm flagged") + ".")


def _longer(spec) -> str:
    arms = ", ".join(f"{a} {BUDGET_SCALE[a]:g}x ({spec.budget_s * BUDGET_SCALE[a]:.0f} s)" for a in BUDGET_SCALE)
    return (f"Trained longer, so that the time they need to reach DGPO's level can be measured: {arms}; every "
            "table column, curve statistic and conclusion reads all arms at the suite's budget. " if arms else "")


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _threads(results: dict) -> str:
    threads = sorted({r.get("threads") for runs in results.values() for r in runs} - {None})
    devices = sorted({r.get("device", "CPU") for runs in results.values() for r in runs})
    where = f"on {' and '.join(devices)} with " if devices not in ([], ["CPU"]) else ""
    return f"{where}{'/'.join(map(str, threads)) or 'unknown'} CPU thread(s) per run"


def _overrides(results: dict) -> str:
    """The --set overrides the runs were made with, read from the results themselves."""
    made = {tuple(r.get("extra", [])) for runs in results.values() for r in runs}
    if len(made) > 1:
        return ("**The runs were made with different overrides for every arm** (`dgpo bench --set`: "
                f"{'; '.join(' '.join(m) or 'none' for m in sorted(made))}): they do not compare; rerun with one set. ")
    return f"Overrides for every arm: `{' '.join(made.pop())}`. " if made and made != {()} else ""


def render_report(spec, results: dict[str, list[dict]]) -> Path:
    out = Path(spec.out)
    intro = (f"Budget per run: {spec.budget_s:.0f} s of training time (evals excluded); seeds {spec.seeds}; "
             f"eval every {spec.eval_every_s:.0f} s on at least {spec.eval_per_category} images of "
             f"{spec.eval_per_category} held-out prompts per category (fewer prompts, several images each, "
             "where a category has fewer; strict toy-GenEval, slow-EMA weights, 10-step DPM-Solver++, the arm's "
             "sampler CFG: 4.5, or 1 where an arm sets sampler.cfg_scale=1.0); "
             f"{_threads(results)}. {_longer(spec)}"
             + _overrides(results) +
             "Columns: start/final/late/best overall (mean over seeds; final +- std; late: the mean of the evals in "
             "the last third of the budget), optimizer steps and images "
             "in the budget, sharpness (mean |Laplacian|, blur lowers it) and off-palette pixel share "
             "(artifacts) of the final eval images; then each out-of-domain reward (`eval.extra_rewards`, scored on "
             "the same eval images as the target: reward hacking shows as these falling while the target rises), "
             "late (the mean of its evals in the last third, then over seeds).")
    how = ("Ratio = training time (or images) Flow-GRPO's seed-mean curve needs to reach a level / what DGPO's "
           "needs (curves linear between evals), for two levels: the late score DGPO ends at, and the one "
           "Flow-GRPO ends at over its whole (longer) run (late scores, not best evals: a best eval is biased "
           "upwards by eval noise); for each Flow-GRPO arm present. Conclusions "
           "compare each arm's late score (the mean of its evals in the last third of the budget, then over "
           "seeds) with DGPO's: a difference under two standard errors is called no difference.")
    todo = [f"{a} ({len(results.get(a, []))}/{len(spec.seeds)} seeds)" for a in spec.arms
            if len(results.get(a, [])) < len(spec.seeds)]
    if todo:
        intro += (f"\n\n**Not complete yet** (the same `dgpo bench` command, with its --out, --arms, --set and "
                  f"budget, runs what is missing and keeps the rest): {', '.join(todo)}.")
    lines = ["# dgpo bench: the paper's comparisons on the toy world", "", intro, "",
             "## Headline: DGPO vs Flow-GRPO speed", "", how, "", _ratio_text(results, spec.budget_s)]
    extras = _extra_names(results)
    for title, arms in COMPARISONS.items():
        present = [a for a in arms if a in results]
        if len(present) < 2:
            continue
        png = out / "img" / f"{_slug(title)}.png"
        plot_comparison(title, present, results, png)
        lines += [f"## {title}", "", f"![{title}](img/{png.name})", "",
                  "| arm | seeds | start | final | late | best | steps | images | sharpness | off-palette |"
                  + "".join(f" {n} (late) |" for n in extras), "|---" * (10 + len(extras)) + "|"]
        for arm in present:
            r = summary_row(arm, results[arm], spec.budget_s)
            ood = [_late_extra(results[arm], n, spec.budget_s) for n in extras]
            lines.append(f"| {LABEL.get(arm, arm)} | {r['n']} | {r['start']:.3f} | {r['final']:.3f} +- "
                         f"{r['final_std']:.3f} | {r['late']:.3f} | {r['best']:.3f} | {r['steps']:.0f} | "
                         f"{r['images']:.0f} | "
                         f"{r['sharpness']:.3f} | {r['off_palette']:.4f} |"
                         + "".join(" n/a |" if np.isnan(v) else f" {v:.4f} |" for v in ood))
        lines += ["", *_conclusions(present, results, spec.budget_s)]
        lines += [_hacking_line(present, results, spec.budget_s), ""] if extras else [""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    return out / "report.md"

