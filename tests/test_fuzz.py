"""A fast subset of benchmarks/fuzz/inputs.py: every target, a few Hypothesis cases each, must end in
"ok" or a clear error -- no crash, no hang (the full run: README "Robustness")."""

import pytest

from benchmarks.fuzz import inputs as fuzz_inputs

FAST = {"config_yaml": 40, "overrides": 40, "prompts": 25, "server_requests": 60, "server_http": 20,
        "checkpoints": 25, "model_folders": 12, "run_dirs": 4, "lora_folders": 6, "diffusers_lora": 3}


@pytest.fixture(scope="module")
def results():
    out = {}
    for name, n in FAST.items():
        out.update(fuzz_inputs.fuzz(0, seed_value=7, timeout_s=20.0, names=[name], per_target=n)["targets"])
    return out


@pytest.mark.parametrize("name", list(FAST))
def test_fuzz_target_has_no_crash_and_no_hang(results, name):
    r = results[name]
    assert r["cases"] == FAST[name]
    assert r["crashes"] == 0 and r["hangs"] == 0, r["examples"]
    if FAST[name] >= 20:
        assert r["clear_errors"] > 0 and r["ok"] + r["clear_errors"] == r["cases"]  # the damage reaches the checks
