"""A run killed (SIGKILL) in a checkpoint write, or torn as a kill and bit rot would, then resumed, ends
bit for bit as the uninterrupted run: weights, EMAs, optimizer state, metrics and eval rows, summary,
grids, TensorBoard scalars (the short version of benchmarks/robustness/crash_resume.py, with the same
code)."""

import json
import logging
import random
import shutil

import pytest

from dgpo.cli import main
from dgpo.testing.toy import tiny_toy_checkpoint

from benchmarks.robustness import crash_resume as harness

pytestmark = pytest.mark.slow  # make test-all (CI); not in the fast tier

EPOCHS = 3  # 2 optimizer steps each; checkpoints after every epoch, the newest 2 kept; an eval after epoch 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(toy model folder, the uninterrupted run), trained in this process with the same CLI."""
    work = tmp_path_factory.mktemp("crash")
    model = tiny_toy_checkpoint(work / "tiny")
    assert main(["train", *harness.overrides(model, work / "reference", EPOCHS)]) == 0
    return model, work / "reference"


def test_killed_in_a_checkpoint_write_resumes_bit_for_bit(reference, tmp_path):
    model, ref = reference
    for attempt in range(3):  # a loaded machine may let the save finish before the kill lands: try again
        plan = [harness.Trigger("checkpoint", n=2)]  # SIGKILL as soon as the second save has started
        ep = harness.episode(model, ref, tmp_path / f"run{attempt}", EPOCHS, plan, random.Random(0), run_s=0.0)
        assert ep["diffs"] == [] and ep["launches"] == 2 and len(ep["kills"]) == 1
        if ep["kills"][0]["phase"] == "checkpoint write":
            break
    assert ep["kills"][0]["phase"] == "checkpoint write"
    assert ep["kills"][0]["rows_past_checkpoint"] >= 3  # steps 3, 4 and the eval at step 4 were logged


@pytest.mark.parametrize("corrupt", [True, False])
def test_resume_repairs_what_a_kill_tore_and_skips_a_corrupted_checkpoint(reference, tmp_path, caplog, corrupt):
    """The finished run, damaged as a kill in its final eval would (a torn metrics line, TensorBoard record
    and summary.json, a save cut short, compare.png missing; the final eval logged already) and, with
    ``corrupt``, bit rot in the newest checkpoint: the resume continues from step 6, or skips to step 4."""
    caplog.set_level(logging.INFO)
    model, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    if corrupt:
        newest = run / "checkpoints" / "step_000006" / "ema_slow.safetensors"
        data = bytearray(newest.read_bytes())
        data[-1] ^= 0x10
        newest.write_bytes(bytes(data))
    (run / "checkpoints" / "step_000008.tmp").mkdir()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "epoch": 3, "rew')
    event = sorted((run / "tb").glob("events.out.tfevents.*"))[-1]
    event.write_bytes(event.read_bytes()[:-5])
    (run / "summary.json").write_text('{"steps": ')
    (run / "samples" / "compare.png").unlink()
    assert main(["train", *harness.overrides(model, run, EPOCHS), "--resume"]) == 0
    assert ("ema_slow.safetensors does not match its SHA-256" in caplog.text) == corrupt
    assert f"continuing from {run / 'checkpoints' / ('step_000004' if corrupt else 'step_000006')}" in caplog.text
    assert harness.compare(ref, run) == []  # incl. one TensorBoard value per tag and step
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
