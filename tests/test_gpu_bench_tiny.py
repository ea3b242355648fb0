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


def test_wan_benchmark_tiny_smoke_run(tmp_path):
    """benchmarks/gpu/wan_gpu.py --tiny: Flow-GRPO's Wan structure, the official DGPO structure and dgpo's
    Trainer on the Wan recipe run on the CPU and write a complete result; a DGPO iteration counts fewer
    transformer FLOPs than Flow-GRPO's (4 steps: 3 trained SDE steps of 2 + 2 CFG forwards each)."""
    out = tmp_path / "w.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    argv = [sys.executable, "-m", "benchmarks.gpu.wan_gpu", "--tiny", "--epochs", "2", "--out", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["tiny"] and list(r["arms"]) == ["official_flow_grpo", "official_dgpo", "dgpo_bf16"] and not r["skipped"]
    assert r["latent_shape"] == [16, 2, 4, 4] and r["flow_grpo_train_steps"] == 3 and r["samples_per_iteration"] == 4
    f = r["flops"]
    assert 0 < f["forward"] < f["forward_backward"] < f["dgpo_iteration_per_sample"]
    assert f["dgpo_iteration_per_sample"] < f["flow_grpo_iteration_per_sample"]
    for name, arm in r["arms"].items():
        assert "error" not in arm, (name, arm.get("error"))
        assert arm["seconds_per_sample"]["total"] > 0 and arm["achieved_tflops"] > 0
    assert r["arms"]["dgpo_bf16"]["trainable_dtype"] == "torch.float32"
    assert set(r["speedups"]) == {"official_flow_grpo/official_dgpo", "official_flow_grpo/dgpo_bf16"}


def test_levers_benchmark_tiny_smoke_run(tmp_path):
    """benchmarks/gpu/levers_gpu.py --tiny: the official structure, dgpo and dgpo + each lever in one run,
    with ratios; CUDA graphs' bookkeeping (without graphs on the CPU) and cast-once FP8 keep the rollouts'
    rewards of dgpo and of per-call FP8 exactly; FP8 attention is refused on the CPU and recorded so."""
    out = tmp_path / "levers.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu.levers_gpu", "--tiny", "--epochs", "2", "--iters", "1",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    arms = r["arms"]
    assert list(arms) == ["official_dgpo", "dgpo", "cuda_graphs", "fp8_attention", "fp8_cast_once", "fp8_per_call",
                          "levers_all"] and not r["skipped"]
    assert "ConfigError: train.fp8_attention needs a CUDA GPU" in arms["fp8_attention"]["error"]
    for name, arm in arms.items():
        if name != "fp8_attention":
            assert "error" not in arm, (name, arm.get("error"))
            assert arm["seconds_per_sample"]["total"] > 0 and arm["vs_official"] > 0
            assert name == "official_dgpo" or arm["vs_dgpo"] > 0
    graphs = arms["cuda_graphs"]["rollout_levers"]["cuda_graphs"]
    assert graphs["recorded"] == 1 and graphs["replays"] == 2 * 10 and graphs["plain"] == 0  # 2 epochs x 10 steps
    assert arms["cuda_graphs"]["mean_reward"] == arms["dgpo"]["mean_reward"]
    assert arms["fp8_cast_once"]["fp8_info"] == {"recipe": "rowwise", "fp8_linears": 29, "cast_once_linears": 29}
    fp8_rewards = [arms[k]["mean_reward"] for k in ("fp8_cast_once", "fp8_per_call", "levers_all")]
    assert fp8_rewards[0] == fp8_rewards[1] == fp8_rewards[2]
    assert arms["fp8_cast_once"]["mean_reward"] != arms["dgpo"]["mean_reward"]  # FP8 rounding changes the samples
    assert arms["dgpo"]["vs_dgpo"] == 1.0 and r["table"][0].split()[:2] == ["arm", "s/sample"]
