"""benchmarks/robustness/long_run.py: the process-tree measurement and the report's statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks.robustness import long_run
from benchmarks.robustness import long_run_report as rep


def test_measure_counts_children_and_proc_fallback_agrees(monkeypatch):
    hold = "x = bytearray(200 * 2**20); import time; time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", hold])
    try:
        time.sleep(1.5)
        alone = long_run.measure(child.pid)
        tree = long_run.measure(os.getpid())
        assert alone["rss_mb"] > 190 and alone["procs"] == 1
        assert tree["procs"] >= 2 and tree["rss_mb"] > alone["rss_mb"]  # the child's 200 MB is included
        monkeypatch.setattr(long_run, "psutil", None)
        via_proc = long_run.measure(os.getpid())
        assert via_proc["procs"] == tree["procs"] and abs(via_proc["rss_mb"] - tree["rss_mb"]) < 20
    finally:
        child.kill()
        child.wait()
    assert long_run.measure(child.pid) is None and not long_run.is_trainer(os.getpid())


def test_common_slope_ignores_restarts_and_warmup():
    segs = []
    for start, level in ((0.0, 900.0), (10_000.0, 600.0)):  # a restart: a lower level, same slope
        t = start + np.arange(0, 3 * 3600, 10.0)
        rss = level + 12.0 * (t - start) / 3600  # 12 MB/h
        rss[(t - start) < 600] = 100.0  # warm-up values that must not count
        segs.append({"start": start, "warm_end": start + 600, "t": t, "rss": rss, "cpu": t * 0})
    assert abs(rep._common_slope(segs) - 12.0) < 1e-6
    stats = rep.rss_stats(segs[:1], 50.0, None)
    assert abs(stats["median_growth_mb"] - 12.0 * (10_490 - 900) / 3600) < 1.0  # median times of the windows
    assert stats["within_bound"]
    assert not rep.rss_stats(segs[:1], 20.0, None)["within_bound"]


def test_epoch_rows_replace_epochs_redone_after_resume(tmp_path):
    rows = [(0, 10.0), (1, 20.0), (2, 30.0), (1, 100.0), (2, 110.0), (3, 120.0)]  # restart from epoch 1
    with (tmp_path / "metrics.jsonl").open("w") as f:
        for e, wall in rows:
            f.write(json.dumps({"epoch": e, "wall_time": wall, "time_rollout": 1.0, "time_reward": 0.5,
                                "time_train": e + 1.0}) + "\n")
        f.write('{"epoch": 4, "wall_ti')  # a row being written by the live trainer
    got = rep.epoch_rows(tmp_path)
    assert [(r["epoch"], r["end"]) for r in got] == [(0, 10.0), (1, 100.0), (2, 110.0), (3, 120.0)]
    assert got[3]["epoch_s"] == 1.0 + 0.5 + 4.0


def test_drift_flags_a_slowdown():
    n, hours = 400, np.linspace(0, 2, 400)
    flat = rep._drift(np.full(n, 10.0) + np.random.default_rng(0).normal(0, 1, n), hours)
    slow = rep._drift(10.0 * (1 + 0.2 * hours / 2), hours)  # 20 % slower at the end
    assert abs(flat["drift"]) < 0.05 and slow["drift"] > 0.12 and slow["slope_pct_per_hour"] > 8


def test_trainer_command_resumes_with_the_same_overrides():
    a = SimpleNamespace(hours=2.0, save_every=30, eval_every=60, sample_every=60, overrides=["run.seed=3"])
    fresh = long_run.trainer_command(a, Path("/x/run"), False)
    again = long_run.trainer_command(a, Path("/x/run"), True)
    assert again == fresh + ["--resume"]
    assert "run.time_budget_s=7200" in fresh and "run.seed=3" in fresh and "run.out_dir=/x/run" in fresh


def test_report_on_a_live_run_is_strict_json(tmp_path):
    """Right after launch: no post-warm-up samples, no epochs; the slope is null, not NaN."""
    start = {"event": "start", "t": 0.0, "segment": 0, "pid": 1, "cmd": ["dgpo"]}
    rows = [start] + [{"t": float(t), "segment": 0, "pid": 1, "rss_mb": 500.0 + t, "cpu_s": t / 2,
                       "procs": 1, "load1": 1.0} for t in range(0, 60, 5)]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"t": 6')
    a = SimpleNamespace(warmup_min=10.0, rss_bound_mb=50.0, drift_bound=0.1,
                        json=str(tmp_path / "r.json"), png=str(tmp_path / "r.png"))
    rep.report(tmp_path, tmp_path / "run", a)
    res = json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: 1 / 0)  # NaN raises
    assert res["samples"] == 12 and res["rss"]["max_mb"] == 555.0 and res["rss"]["slope_mb_per_hour"] is None
    assert (tmp_path / "r.png").stat().st_size > 10_000
