"""benchmarks/perf/host_overhead.py (without --compiled): runs on the SD3.5-M module tree on the meta
device and writes every before/after pair."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # make test-all (CI); not in the fast tier

ROOT = Path(__file__).resolve().parents[1]


def test_host_overhead_benchmark_writes_every_pair(tmp_path):
    out = tmp_path / "h.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.perf.host_overhead", "--reps", "2", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["modules"] > 2900 and r["lora_layers"] == 191 and r["lora_tensors"] == 382  # SD3.5-M, official targets
    assert set(r["calls"]) == {"reference", "compute_dtype", "ema_swap"}
    for call in r["calls"].values():
        assert call["before_ms"] > 0 and call["after_ms"] > 0 and call["per_iteration"] in (4, 22)
    assert "compiled_forwards_ms" not in r
