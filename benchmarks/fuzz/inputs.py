"""Fuzzing every input a user hands dgpo, with Hypothesis: YAML configs and ``key=value`` overrides,
prompt files (.txt, GenEval .jsonl), toy model folders, training checkpoints (resume), run directories
(export), exported LoRA folders, and the reward server's requests (parsed in-process, and over HTTP).

Each case ends in one of: ``ok`` (accepted, and what was loaded works), a clear error (a
``dgpo.errors.UserError``; through the CLI: exit status 2 and exactly one ``dgpo CMD: error:`` line),
a **crash** (any other exception, a wrong result, a 500 or a dropped connection from the server) or a
**hang** (longer than ``--case-timeout-s``). Code execution is probed too: YAML tags and pickled LoRA
files carry payloads that would create a marker file, and a case that creates it is a crash.

The targets live beside this file: text_targets.py (configs, overrides, prompt files), server_targets.py
(the reward server), file_targets.py (checkpoints, toy model folders) and export_targets.py (run
directories, LoRA folders); strategies.py holds the shared strategies. tests/test_fuzz.py runs a few cases
of each.

Usage: python -m benchmarks.fuzz.inputs [--cases 10000] [--seed 0] [--targets config_yaml,prompts,...]
Writes bench_results/fuzz_inputs.json (docs/bench/fuzz_inputs.json holds the committed run).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub-id-looking --model must never reach the network
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from dgpo.errors import UserError, one_line  # noqa: E402

# share of --cases per target (the slow file targets get fewer, the fast parsers more)
WEIGHTS = {"config_yaml": 0.20, "overrides": 0.20, "prompts": 0.14, "checkpoints": 0.12, "model_folders": 0.06,
           "run_dirs": 0.03, "lora_folders": 0.04, "diffusers_lora": 0.01, "server_requests": 0.12,
           "server_http": 0.08}


class Hang(BaseException):
    """Raised in the main thread by the per-case alarm (a BaseException: no `except Exception` eats it)."""


@dataclass
class Tally:
    cases: int = 0
    ok: int = 0
    clear_errors: int = 0
    crashes: int = 0
    hangs: int = 0
    seconds: float = 0.0
    max_case_s: float = 0.0
    errors: Counter = field(default_factory=Counter)  # clear errors by type and message head
    examples: list = field(default_factory=list)  # the first crashes and hangs, for the report
    slowest: str = ""

    def as_dict(self) -> dict:
        return {"cases": self.cases, "ok": self.ok, "clear_errors": self.clear_errors, "crashes": self.crashes,
                "hangs": self.hangs, "seconds": round(self.seconds, 2), "max_case_s": round(self.max_case_s, 3),
                "top_errors": dict(self.errors.most_common(12)), "examples": self.examples[:5],
                "slowest_case": self.slowest}


def _alarm(_signum, _frame):
    raise Hang()


def _error_kind(e: BaseException, tmp: str) -> str:
    """An error's type and message head, without the temporary paths and numbers that vary per case."""
    import re

    msg = one_line(str(e)).replace(tmp, "<tmp>")
    msg = re.sub(r"<tmp>[^\s:;,)']*", "<path>", msg)
    msg = re.sub(r"\d+", "N", msg)
    return f"{type(e).__name__}: {msg[:90]}"


def run_target(target, n: int, seed_value: int, timeout_s: float, tmp: Path) -> Tally:
    """``n`` Hypothesis examples of one target, every outcome counted (nothing stops the run)."""
    tally = Tally()
    state = target.setup(tmp / target.name)

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @seed(seed_value)
    @given(target.strategy(state))
    def case(data):
        t0 = time.perf_counter()
        outcome, detail = "ok", None
        signal.setitimer(signal.ITIMER_REAL, timeout_s * 1.5)
        try:
            outcome = target.run(state, data)
        except Hang:
            outcome, detail = "hang", "interrupted"
        except UserError as e:
            outcome = "error"
            tally.errors[_error_kind(e, str(tmp))] += 1
            if not str(e).strip():
                outcome, detail = "crash", "a UserError without a message"
        except Exception as e:  # noqa: BLE001 - every other exception is what the fuzzer looks for
            outcome, detail = "crash", f"{type(e).__name__}: {one_line(str(e), 300)} | " \
                                       f"{traceback.format_exc(limit=-2).splitlines()[-3].strip()[:200]}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        dt = time.perf_counter() - t0
        if outcome != "hang" and dt > timeout_s:
            outcome, detail = "hang", f"{dt:.1f} s"
        if isinstance(outcome, tuple):  # ("error", kind) from a target that checks the CLI's answer itself
            outcome, kind = outcome
            tally.errors[kind.replace(str(tmp), "<tmp>")[:110]] += 1
        tally.cases += 1
        tally.seconds += dt
        if dt > tally.max_case_s:
            tally.max_case_s, tally.slowest = dt, _describe(data)[:160]
        if outcome == "ok":
            tally.ok += 1
        elif outcome == "error":
            tally.clear_errors += 1
        else:
            tally.crashes += outcome == "crash"
            tally.hangs += outcome == "hang"
            if len(tally.examples) < 20:
                tally.examples.append({"outcome": outcome, "detail": detail, "input": _describe(data)})

    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        case()
    finally:
        signal.signal(signal.SIGALRM, old)
        getattr(target, "teardown", lambda s: None)(state)
    return tally


def _describe(data) -> str:
    from dgpo.errors import short

    return short(data)[:300]


def all_targets() -> dict:
    from benchmarks.fuzz.export_targets import TARGETS_EXPORTS
    from benchmarks.fuzz.file_targets import TARGETS_FILES
    from benchmarks.fuzz.server_targets import TARGETS_SERVER
    from benchmarks.fuzz.text_targets import TARGETS_TEXT

    return {**TARGETS_TEXT, **TARGETS_SERVER, **TARGETS_FILES, **TARGETS_EXPORTS}


def fuzz(cases: int, seed_value: int = 0, timeout_s: float = 5.0, names: list[str] | None = None,
         per_target: int | None = None) -> dict:
    """Run the targets (all by default) for about ``cases`` cases in all, or ``per_target`` each."""
    import logging
    import warnings

    import hypothesis

    logging.disable(logging.CRITICAL)  # the loaders' and the server's own logs would drown the report
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    targets = all_targets()
    names = names or list(targets)
    results, t0 = {}, time.time()
    with tempfile.TemporaryDirectory(prefix="dgpo-fuzz-") as tmp:
        for name in names:
            n = per_target or max(1, round(cases * WEIGHTS[name] / sum(WEIGHTS[k] for k in names)))
            tally = run_target(targets[name], n, seed_value, timeout_s, Path(tmp))
            results[name] = tally.as_dict()
            print(f"{name:16s} {tally.cases:6d} cases  {tally.ok:6d} ok  {tally.clear_errors:6d} clear errors  "
                  f"{tally.crashes:3d} crashes  {tally.hangs:3d} hangs  ({tally.seconds:.1f} s, slowest "
                  f"{tally.max_case_s:.2f} s)", flush=True)
    total = {k: sum(r[k] for r in results.values()) for k in ("cases", "ok", "clear_errors", "crashes", "hangs")}
    return {"benchmark": "fuzz_inputs", **total, "wall_s": round(time.time() - t0, 1), "seed": seed_value,
            "case_timeout_s": timeout_s, "threads": torch.get_num_threads(), "hypothesis": hypothesis.__version__,
            "torch": torch.__version__, "targets": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10_000, help="cases in all, shared by WEIGHTS (default 10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case-timeout-s", type=float, default=5.0, help="a case slower than this is a hang")
    ap.add_argument("--targets", default="", help=f"comma-separated subset of {list(WEIGHTS)}")
    ap.add_argument("--out", default="bench_results/fuzz_inputs.json")
    a = ap.parse_args()
    from benchmarks.common import write_result

    names = [t.strip() for t in a.targets.split(",") if t.strip()] or None
    result = fuzz(a.cases, a.seed, a.case_timeout_s, names)
    write_result(result, a.out)
    print(f"\n{result['cases']} cases, {result['crashes']} crashes, {result['hangs']} hangs in {result['wall_s']} s")
    sys.exit(1 if result["crashes"] or result["hangs"] else 0)


if __name__ == "__main__":
    main()
