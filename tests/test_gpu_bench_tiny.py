"""benchmarks/gpu/sd35m_gpu.py --tiny: the GPU benchmark's every non-compiled arm runs on the CPU and
writes a complete result (the compiled path is tested in test_speed.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # make test-all (CI); not in the fast tier

ROOT = Path(__file__).resolve().parents[1]


def test_sd35m_benchmark_tiny_smoke_run(tmp_path):
    out = tmp_path / "r.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    arms = "official_dgpo,dgpo_bf16,official_flow_grpo,dgpo_fp32,dgpo_fp8,dgpo_bf16_rb"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu.sd35m_gpu", "--tiny", "--arms", arms, "--epochs", "2",
                           "--iters", "1", "--profile", "dgpo_bf16", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["tiny"] and list(r["arms"]) == arms.split(",") and not r["skipped"]
    assert 0 < r["flops"]["forward"] < r["flops"]["forward_backward"] < r["flops"]["iteration_per_sample"]
    for name, arm in r["arms"].items():
        assert "error" not in arm, (name, arm.get("error"))
        assert arm["seconds_per_sample"]["total"] > 0 and arm["achieved_tflops"] > 0
        if name != "official_flow_grpo":  # DGPO arms time their model calls alone for the loop overhead
            assert arm["calls"]["composed_per_sample"] > 0 and arm["loop_overhead"] < 1
    assert r["arms"]["dgpo_bf16"]["trainable_dtype"] == "torch.float32"
    assert r["arms"]["dgpo_fp8"]["fp8_info"] == {"recipe": "rowwise", "fp8_linears": 29}  # 2 blocks, one dual
    assert r["arms"]["dgpo_bf16"]["fp8_info"] is None
    rb, plain = r["arms"]["dgpo_bf16_rb"]["calls"], r["arms"]["dgpo_bf16"]["calls"]
    assert rb["frozen_batch"] == 16 and plain["frozen_batch"] == 4  # 4 timesteps x 4 samples in one forward
    assert rb["reference_fwd_at_B"] > 0 and "reference_fwd_at_B" not in plain
    prof = r["arms"]["dgpo_bf16"]["profile"]  # one more epoch (index 2) under the profiler, after the timings
    assert prof["epoch"] == 2 and prof["epoch_s"] > 0 and prof["gpu_busy"] == 0.0  # no GPU here
    assert "aten::" in (tmp_path / "r.dgpo_bf16.profile.txt").read_text() and "profile" not in r["arms"]["dgpo_fp32"]
    assert {"official_dgpo/dgpo_bf16", "official_flow_grpo/official_dgpo"} <= set(r["speedups"])
