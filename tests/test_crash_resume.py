"""A run killed (SIGKILL) in a checkpoint write, or torn as a kill and bit rot would, then resumed, ends
bit for bit as the uninterrupted run: weights, EMAs, optimizer state, metrics and eval rows, summary,
grids, TensorBoard scalars (the short version of benchmarks/crash_resume.py, with the same code)."""

import json
import random
import shutil
import sys
from pathlib import Path

import pytest

from dgpo.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import crash_resume as harness  # noqa: E402

EPOCHS = 3  # 2 optimizer steps each; checkpoints after every epoch, the newest 2 kept; an eval after epoch 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(toy model folder, the uninterrupted run), trained in this process with the same CLI."""
    work = tmp_path_factory.mktemp("crash")
    model = harness.make_tiny_model(work / "tiny")
    assert main(["train", *harness.overrides(model, work / "reference", EPOCHS)]) == 0
    return model, work / "reference"


def test_killed_in_a_checkpoint_write_resumes_bit_for_bit(reference, tmp_path):
    model, ref = reference
    plan = [harness.Trigger("checkpoint", n=2)]  # SIGKILL as soon as the second save starts
    ep = harness.episode(model, ref, tmp_path / "run", EPOCHS, plan, random.Random(0), run_s=0.0)
    assert [k["phase"] for k in ep["kills"]] == ["checkpoint write"] and ep["launches"] == 2
    assert ep["kills"][0]["rows_past_checkpoint"] >= 3  # steps 3, 4 and the eval at step 4 were logged
    assert ep["diffs"] == []


def test_resume_repairs_what_a_kill_tore_and_skips_a_corrupted_checkpoint(reference, tmp_path, caplog):
    """The finished run, damaged as a kill and bit rot would: the newest checkpoint corrupted, a save cut
    short, a torn metrics line, a torn TensorBoard record, a torn summary.json, compare.png missing."""
    model, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
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
    assert "skipped step_000006" in caplog.text and "ema_slow.safetensors does not match its SHA-256" in caplog.text
    assert harness.compare(ref, run) == []
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
