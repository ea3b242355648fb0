"""``dgpo bench``'s report: markdown tables (mean +- std over seeds), PNG curves, raw JSON."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dgpo.bench import COMPARISONS, LABEL, compare, mean_curve, speed_ratio, summary_row


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


def _ratio_text(results: dict) -> str:
    lines = []
    for key, unit in (("train_time_s", "s of training"), ("images", "images")):
        r = speed_ratio(results, key=key)
        if r is None:
            return "Flow-GRPO vs DGPO: both arms are needed for the ratio.\n"
        spread = f"10th-90th percentile over seed bootstraps {r['p10']:.1f}x-{r['p90']:.1f}x"
        if r["t_slow"] == 0.0:
            verdict = "undefined: Flow-GRPO ends no higher than it starts"
        elif r["ratio"] is not None:
            verdict = f"**{r['ratio']:.1f}x** ({spread})"
            if r["first_interval"]:
                verdict += "; DGPO got there within its first eval interval, so the eval interval limits the estimate"
        elif r["zero_time"]:
            verdict = "unbounded: DGPO's first eval (before training) already matches Flow-GRPO's late score"
        else:
            verdict = "DGPO never reached it within the budget"
        t_fast = "never" if r["t_fast"] is None else f"{r['t_fast']:.0f}"
        seeds = "; ".join(f"{arm}: " + ", ".join("never" if t is None else f"{t:.0f}" for t in ts)
                          for arm, ts in r["per_seed"].items())
        t_slow = "never" if r["t_slow"] is None else f"{r['t_slow']:.0f}"
        lines.append(f"- by {unit}: Flow-GRPO's late score {r['target']:.3f} first at "
                     f"{t_slow}; DGPO reaches it at {t_fast}; ratio {verdict}. Each seed alone "
                     f"reaches that score at ({seeds}).")
        back = speed_ratio(results, fast="flow_grpo", slow="dgpo", key=key, n_boot=0)
        got = "never within the budget" if back["t_fast"] is None else f"at {back['t_fast']:.0f}"
        lines.append(f"  The other way round: DGPO's late score {back['target']:.3f} first at "
                     f"{back['t_slow']:.0f}; Flow-GRPO reaches it {got}.")
    return "\n".join(lines) + "\n"


def _conclusions(arms: list[str], results: dict) -> list[str]:
    ref = "dgpo" if "dgpo" in arms else arms[0]
    out = []
    for arm in arms:
        if arm == ref:
            continue
        c = compare(arm, ref, results)
        what = c["verdict"] if c["verdict"] not in ("higher", "lower") else f"{c['verdict']} than {ref}"
        se = "" if np.isnan(c["se"]) else f", standard error {c['se']:.3f}"
        out.append(f"- **{arm}**: {what} (late score {c['score']:.3f} +- {c['score_std']:.3f} over {_seeds(c['n'])} "
                   f"vs {c['ref_score']:.3f} over {_seeds(c['n_ref'])}; difference {c['diff']:+.3f}{se}).")
    return out


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _threads(results: dict) -> str:
    threads = sorted({r.get("threads") for runs in results.values() for r in runs} - {None})
    return f"{'/'.join(map(str, threads)) or 'unknown'} CPU thread(s) per run"


def render_report(spec, results: dict[str, list[dict]]) -> Path:
    out = Path(spec.out)
    intro = (f"Budget per run: {spec.budget_s:.0f} s of training time (evals excluded); seeds {spec.seeds}; "
             f"eval every {spec.eval_every_s:.0f} s on at least {spec.eval_per_category} images of "
             f"{spec.eval_per_category} held-out prompts per category (fewer prompts, several images each, "
             "where a category has fewer; strict toy-GenEval, slow-EMA weights, 10-step DPM-Solver++, CFG 4.5); "
             f"{_threads(results)}. "
             "Columns: start/final/late/best overall (mean over seeds; final +- std; late: the mean of the evals in the last third of the budget), optimizer steps and images "
             "in the budget, sharpness (mean |Laplacian|, blur lowers it) and off-palette pixel share "
             "(artifacts) of the final eval images.")
    how = ("Ratio = training time Flow-GRPO's seed-mean curve needs to reach the level it ends at (its late "
           "score; its best eval would be biased upwards by eval noise) / time DGPO's seed-mean curve needs to "
           "reach the same level (curves linear between evals). Conclusions "
           "compare each arm's late score (the mean of its evals in the last third of the budget, then over "
           "seeds) with DGPO's: a difference under two standard errors is called no difference.")
    lines = ["# dgpo bench: the paper's comparisons on the toy world", "", intro, "",
             "## Headline: DGPO vs Flow-GRPO speed", "", how, "", _ratio_text(results)]
    for title, arms in COMPARISONS.items():
        present = [a for a in arms if a in results]
        if len(present) < 2:
            continue
        png = out / "img" / f"{_slug(title)}.png"
        plot_comparison(title, present, results, png)
        lines += [f"## {title}", "", f"![{title}](img/{png.name})", "",
                  "| arm | seeds | start | final | late | best | steps | images | sharpness | off-palette |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for arm in present:
            r = summary_row(arm, results[arm])
            lines.append(f"| {LABEL.get(arm, arm)} | {r['n']} | {r['start']:.3f} | {r['final']:.3f} +- "
                         f"{r['final_std']:.3f} | {r['late']:.3f} | {r['best']:.3f} | {r['steps']:.0f} | {r['images']:.0f} | "
                         f"{r['sharpness']:.3f} | {r['off_palette']:.4f} |")
        lines += ["", *_conclusions(present, results), ""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    return out / "report.md"

