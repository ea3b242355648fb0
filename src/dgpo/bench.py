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

import torch

# the arm table and the statistics live below this module (the report reads them too); their names
# stay importable from here
from dgpo.bench_arms import (  # noqa: F401
    ARMS,
    BUDGET_SCALE,
    COMPARISONS,
    FLOW_GRPO_OFFICIAL,
    LABEL,
    NFT_OFFICIAL,
    QUICK_ARMS,
    SLOW_ARMS,
    SUITE_ARMS,
)
from dgpo.bench_stats import (  # noqa: F401
    compare,
    curve_at,
    late_scores,
    mean_curve,
    speed_ratio,
    summary_row,
    time_to_reach,
    upto,
)
from dgpo.config import load_config
from dgpo.errors import InputError

log = logging.getLogger(__name__)

# bump when training or evaluation changes what a run measures: older raw results are rerun (what
# each version changed: docs/notes/toy-demo-tuning.md, "Bench results versions")
RESULTS_VERSION = 3


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
    # a budget long enough for the demo recipe's gain to show, evals often enough to resolve the early
    # rise, enough images per category to keep an eval's noise under the differences between arms
    # (the numbers behind each: docs/notes/toy-demo-tuning.md, "The bench suite's defaults")
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


def write_report(spec: BenchSpec, results: dict[str, list[dict]]) -> Path:
    from dgpo.bench_report import render_report

    return render_report(spec, results)
