"""Multi-process runs that lose a process: the survivors stop with one line instead of hanging, a kill on
process 1 while process 0 writes a checkpoint leaves the previous checkpoint as the one to resume, a resumed
2-process run (DDP and FSDP2) ends bit-identical to an uninterrupted one, and a checkpoint resumes on another
process count only where it can and when asked (benchmarks/robustness/crash_resume_multi.py at full size)."""

import random
import sys

import pytest
import torch
from safetensors.torch import load_file

from dgpo.testing.toy import tiny_toy_checkpoint

from benchmarks.robustness import crash_resume_multi as multi
from benchmarks.robustness.crash_compare import compare
from benchmarks.robustness.crash_resume import has_checkpoint, newest_state

pytestmark = pytest.mark.slow  # several 2-process launches: make test-all (CI)
EPOCHS = 4


@pytest.fixture(scope="module")
def tiny_toy(tmp_path_factory):
    """The tiny toy checkpoint, shared by this module's runs."""
    return tiny_toy_checkpoint(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def reference(tiny_toy, tmp_path_factory):
    """An uninterrupted 2-process DDP run."""
    run = tmp_path_factory.mktemp("multi") / "reference"
    res = multi.launch("ddp", multi.run_args("ddp", tiny_toy, run, EPOCHS), run, run.parent / "ref.log", None)
    assert res["rc"] == 0, (run.parent / "ref.log").read_text()[-3000:]
    return run


def _finish(launcher, model, run, epochs=EPOCHS):
    res = multi.launch(launcher, [*multi.run_args(launcher, model, run, epochs), "--resume"], run,
                       run.parent / f"{run.name}.finish.log", None)
    assert res["rc"] == 0, (run.parent / f"{run.name}.finish.log").read_text()[-3000:]


def test_a_kill_on_process_1_during_process_0s_checkpoint_write_keeps_the_previous_one(tiny_toy, reference, tmp_path):
    run = tmp_path / "run"
    args = multi.run_args("ddp", tiny_toy, run, EPOCHS)
    plan = {"kind": "checkpoint", "rank": 1, "fault": "slowsave:0:1", "signal": multi.signal.SIGKILL, "n": 2}
    res = multi.launch("ddp", args, run, tmp_path / "k.log", plan)  # as the second checkpoint's write starts
    assert res["killed"] and res["phase"] == "checkpoint write", res
    assert res["rc"] != 0 and res["said_why"] and res["survivor_exit_s"] < 60, res
    assert newest_state(run)["epoch"] == 1  # the torn save is not a checkpoint: resume takes the previous one
    _finish("ddp", tiny_toy, run)
    assert compare(reference, run) == []


@pytest.mark.parametrize("kind", ["allreduce", "evalgather", "hang"])
def test_the_survivors_stop_with_one_line_and_the_resume_is_bit_identical(tiny_toy, reference, tmp_path, kind):
    run = tmp_path / "run"
    plan = multi.plan_kill(kind, random.Random(3), run_s=6.0)
    res = multi.launch("ddp", multi.run_args("ddp", tiny_toy, run, EPOCHS), run, tmp_path / "k.log", plan)
    assert res["killed"] and res["rc"] != 0, res
    assert res["said_why"], (tmp_path / "k.log").read_text()[-2000:]
    bound = multi.HANG_TIMEOUT_S + 60 if kind == "hang" else 60  # a stopped peer: the collective timeout
    assert res["survivor_exit_s"] < bound, res
    if has_checkpoint(run):
        _finish("ddp", tiny_toy, run)
    else:  # killed before the first checkpoint: a fresh start
        res = multi.launch("ddp", multi.run_args("ddp", tiny_toy, run, EPOCHS), run, tmp_path / "f.log", None)
        assert res["rc"] == 0
    assert compare(reference, run) == []


def test_fsdp2_resumes_after_a_kill_bit_identical(tiny_toy, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert multi.launch("fsdp2", multi.run_args("fsdp2", tiny_toy, ref, 3), ref, tmp_path / "r.log", None)["rc"] == 0
    args = multi.run_args("fsdp2", tiny_toy, run, 3)
    plan = {"kind": "checkpoint", "rank": 1, "fault": "slowsave:0:1", "signal": multi.signal.SIGKILL, "n": 2}
    res = multi.launch("fsdp2", args, run, tmp_path / "k.log", plan)  # process 1 dies as the 2nd save starts
    assert res["killed"] and res["said_why"], (tmp_path / "k.log").read_text()[-2000:]
    assert newest_state(run)["epoch"] == 1
    _finish("fsdp2", tiny_toy, run, 3)
    assert compare(ref, run) == []


def _single(model, run, epochs, extra=()):
    import subprocess

    from benchmarks.robustness.crash_resume import child_env

    cmd = [sys.executable, "-m", "dgpo.cli", "train", *multi.run_args("ddp", model, run, epochs), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600)


def test_resume_on_another_process_count_is_refused_unless_asked_and_then_equal_up_to_float_order(
        tiny_toy, reference, tmp_path):
    run = tmp_path / "run"
    multi.launch("ddp", multi.run_args("ddp", tiny_toy, run, 2), run, tmp_path / "two.log", None)  # 2 epochs, 2 procs
    refused = _single(tiny_toy, run, EPOCHS, ["--resume"])
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert "written by 2 process(es) and this run has 1" in last and "--change-processes" in last, last
    done = _single(tiny_toy, run, EPOCHS, ["--resume", "--change-processes"])
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_file(str(reference / f"checkpoints/step_{2 * EPOCHS:06d}/policy.safetensors"))
    b = load_file(str(run / f"checkpoints/step_{2 * EPOCHS:06d}/policy.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, (a[k] - b[k]).abs().max())


def test_one_process_checkpoint_resumes_on_two_when_asked_but_flow_grpo_never(tiny_toy, tmp_path):
    run = tmp_path / "one"
    assert _single(tiny_toy, run, 1).returncode == 0
    res = multi.launch("ddp", [*multi.run_args("ddp", tiny_toy, run, 2), "--resume", "--change-processes"], run,
                       tmp_path / "two.log", None)
    assert res["rc"] == 0, (tmp_path / "two.log").read_text()[-3000:]
    assert newest_state(run)["processes"] == 2
    grpo = tmp_path / "grpo"
    assert _single(tiny_toy, grpo, 1, ["train.algorithm=flow_grpo"]).returncode == 0
    res = multi.launch("ddp", [*multi.run_args("ddp", tiny_toy, grpo, 2), "train.algorithm=flow_grpo", "--resume",
                               "--change-processes"], grpo, tmp_path / "g.log", None)
    log = (tmp_path / "g.log").read_text()
    assert res["rc"] != 0 and "draws its SDE windows and zero-advantage refill per process" in log
