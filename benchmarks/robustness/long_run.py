"""Long-run stability of `dgpo train` on the toy world: memory (RSS) and epoch time over hours.

Launches ``python -m dgpo.cli train`` (the embedded toy default, with periodic checkpoints and evals
and a training-time budget) as a subprocess, samples the RSS and CPU time of it and its children every
few seconds into ``<out-dir>/samples.jsonl``, and at the end writes the report: a JSON file (RSS at
start / after warm-up / max / end, fitted RSS slope, epoch-time drift) and a two-panel PNG.

Usage:
  python -m benchmarks.robustness.long_run --hours 2 --out-dir runs/long_run [key=value ...]   # start
  python -m benchmarks.robustness.long_run --resume --out-dir runs/long_run [key=value ...]    # continue
  python -m benchmarks.robustness.long_run --report --out-dir runs/long_run                    # report only

``--resume`` appends to the samples file: it re-attaches to the trainer if that is still running,
else restarts it with ``dgpo train --resume`` from its latest checkpoint (same overrides), or only
reports when the run has finished. The trainer runs this checkout's ``src/`` and gets
``OMP_NUM_THREADS=--threads``. Old checkpoints beyond ``--keep-checkpoints`` are deleted as it goes
(the trainer itself keeps the newest ``run.keep_checkpoints``). See docs/results/long-runs.md for the
bound and how to read the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.robustness.long_run_report import read_jsonl, report

try:
    import psutil
except ImportError:  # /proc is read instead
    psutil = None

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = ap.add_argument
    add("--out-dir", default="runs/long_run", help="samples, trainer log and the run folder (run/)")
    add("--hours", type=float, default=2.0, help="training-time budget (run.time_budget_s; evals excluded)")
    add("--interval", type=float, default=5.0, help="seconds between RSS samples")
    add("--save-every", type=int, default=30, help="run.save_every (epochs between checkpoints)")
    add("--eval-every", type=int, default=60, help="run.eval_every (epochs between held-out evals)")
    add("--sample-every", type=int, default=60, help="run.sample_every (epochs between sample grids)")
    add("--keep-checkpoints", type=int, default=3, help="delete older checkpoints (0: delete none; the "
        "trainer still keeps only its run.keep_checkpoints newest)")
    add("--threads", type=int, default=1, help="OMP_NUM_THREADS of the trainer")
    add("--warmup-min", type=float, default=10.0, help="minutes after each (re)start left out of fits")
    add("--rss-bound-mb", type=float, default=50.0, help="allowed RSS growth after warm-up over the run")
    add("--drift-bound", type=float, default=0.10, help="allowed last/first-quarter median epoch time - 1")
    add("--json", default=str(REPO / "docs/bench/toy/long_run.json"), help="result file")
    add("--png", default=str(REPO / "docs/long_run.png"), help="figure")
    add("--resume", action="store_true", help="continue an interrupted run in --out-dir")
    add("--report", action="store_true", help="only write the report from the existing samples")
    add("overrides", nargs="*", help="extra key=value overrides for dgpo train")
    return ap.parse_args(argv)


# ----------------------------------------------------------------- measuring a process tree
def _proc_children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids + [g for k in kids for g in _proc_children(k)]


def _proc_one(pid: int) -> tuple[float, float]:
    """RSS in MB and user+system CPU seconds of one process, from /proc."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return rss, cpu


def measure(pid: int) -> dict | None:
    """RSS (MB) and CPU seconds of ``pid`` and all its descendants; None once it is gone."""
    gone = (OSError, ValueError) if psutil is None else (psutil.Error, OSError)  # what a vanished process raises
    try:
        if psutil is not None:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in procs) / 2**20
            cpu = sum(sum(p.cpu_times()[:2]) for p in procs)
        else:
            procs = [pid, *_proc_children(pid)]
            rss, cpu = map(sum, zip(*(_proc_one(p) for p in procs)))
    except gone:
        return None
    if rss <= 0:  # a zombie: exited, not yet reaped
        return None
    return {"rss_mb": round(rss, 2), "cpu_s": round(cpu, 2), "procs": len(procs),
            "load1": round(os.getloadavg()[0], 2)}


def is_trainer(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"dgpo.cli" in cmd and b"train" in cmd


# ----------------------------------------------------------------- the run
def append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def trainer_command(a: argparse.Namespace, run_dir: Path, resume: bool) -> list[str]:
    keys = [f"run.out_dir={run_dir}", "run.epochs=100000000", f"run.time_budget_s={a.hours * 3600:g}",
            f"run.save_every={a.save_every}", f"run.eval_every={a.eval_every}",
            f"run.sample_every={a.sample_every}", *a.overrides]
    return [sys.executable, "-m", "dgpo.cli", "train", *keys, *(["--resume"] if resume else [])]


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in sorted((run_dir / "checkpoints").glob("step_*[0-9]"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def launch(a: argparse.Namespace, out: Path, run_dir: Path, segment: int) -> subprocess.Popen:
    resume = any((run_dir / "checkpoints").glob("step_*[0-9]"))
    cmd = trainer_command(a, run_dir, resume)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads),
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)}
    with (out / "train.log").open("a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    append(out / "samples.jsonl", {"event": "start", "t": time.time(), "segment": segment, "pid": proc.pid,
                                   "resumed_training": resume, "cmd": cmd})
    how = ", training resumed" if resume else ""
    print(f"started pid {proc.pid} (segment {segment}{how}): {' '.join(cmd)}", flush=True)
    return proc


def monitor(a: argparse.Namespace, out: Path, run_dir: Path, pid: int, segment: int,
            proc: subprocess.Popen | None) -> int | None:
    """Sample until the trainer exits; its exit code (None when attached to a process we did not start)."""
    samples, last_print = out / "samples.jsonl", 0.0
    while True:
        m = measure(pid) if (proc is None or proc.poll() is None) and (proc or is_trainer(pid)) else None
        if m is None:
            break
        append(samples, {"t": time.time(), "segment": segment, "pid": pid, **m})
        prune_checkpoints(run_dir, a.keep_checkpoints)
        if time.time() - last_print > 600:
            print(f"{time.strftime('%H:%M:%S')} rss {m['rss_mb']:.0f} MB, cpu {m['cpu_s']:.0f} s", flush=True)
            last_print = time.time()
        time.sleep(a.interval)
    rc = proc.wait() if proc is not None else None
    append(samples, {"event": "exit", "t": time.time(), "segment": segment, "pid": pid, "rc": rc})
    prune_checkpoints(run_dir, a.keep_checkpoints)
    print(f"trainer pid {pid} exited (rc {rc})", flush=True)
    return rc


def run(a: argparse.Namespace, out: Path, run_dir: Path) -> bool:
    """Start, re-attach or restart the trainer and monitor it; True when the run finished."""
    rows = read_jsonl(out / "samples.jsonl")
    if rows and not a.resume:
        raise SystemExit(f"{out / 'samples.jsonl'} exists: pass --resume to continue or --report to report")
    starts = [r for r in rows if r.get("event") == "start"]
    if starts and (run_dir / "summary.json").exists():
        print("the run has finished: reporting only", flush=True)
        return True
    out.mkdir(parents=True, exist_ok=True)
    if starts and is_trainer(starts[-1]["pid"]):  # the monitor died, the trainer did not: re-attach
        segment, pid = starts[-1]["segment"], starts[-1]["pid"]
        append(out / "samples.jsonl", {"event": "attach", "t": time.time(), "segment": segment, "pid": pid})
        print(f"re-attached to trainer pid {pid}", flush=True)
        rc = monitor(a, out, run_dir, pid, segment, None)
    else:
        proc = launch(a, out, run_dir, len(starts))
        rc = monitor(a, out, run_dir, proc.pid, len(starts), proc)
    done = (run_dir / "summary.json").exists()
    if not done:
        print(f"the trainer stopped before the end (rc {rc}): see {out / 'train.log'}; rerun with --resume",
              flush=True)
    return done


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    out = Path(a.out_dir).resolve()
    run_dir = out / "run"
    if not a.report:
        run(a, out, run_dir)
    if not (out / "samples.jsonl").exists():
        raise SystemExit(f"no samples at {out / 'samples.jsonl'}: start a run first")
    report(out, run_dir, a)


if __name__ == "__main__":
    main()
