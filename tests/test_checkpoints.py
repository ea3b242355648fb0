"""Checkpoint integrity and retention: a manifest written last, --resume skips what is torn or corrupted
and says why, a failed save (disk full, permission denied) is a clear error that leaves the previous
checkpoint intact."""

import errno
import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dgpo.cli import main
from dgpo.training import checkpoints
from dgpo.training.checkpoints import CheckpointError


def _opt(step: int):
    p = torch.nn.Parameter(torch.arange(4.0))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.full((4,), float(step))
    opt.step()
    return p, opt


def _save(run: Path, step: int, keep: int = 0) -> Path:
    p, opt = _opt(step)
    path = run / "checkpoints" / f"step_{step:06d}"
    checkpoints.save_checkpoint(path, {"policy": {"w": p.detach() + step}}, opt, {"step": step, "epoch": step}, keep)
    return path


def test_manifest_names_every_file_with_size_and_sha256_and_retention_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000003", "step_000004"]
    ckpt = tmp_path / "checkpoints" / "step_000004"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    files = {p.name for p in ckpt.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == files == {"policy.safetensors", "optimizer.safetensors", "optimizer.json",
                                               "state.json"}
    for name, entry in manifest["files"].items():
        data = (ckpt / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    for step in (5, 6):
        _save(tmp_path, step, keep=0)
    assert len(list((tmp_path / "checkpoints").iterdir())) == 4  # keep=0: nothing deleted


def test_resume_skips_torn_corrupted_and_unfinished_checkpoints_and_says_why(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    paths = [_save(tmp_path, step) for step in (1, 2, 3, 4)]
    pol = paths[3] / "policy.safetensors"
    pol.write_bytes(pol.read_bytes()[:-9])  # torn
    data = bytearray((paths[2] / "optimizer.safetensors").read_bytes())
    data[-3] ^= 0x01  # one flipped bit
    (paths[2] / "optimizer.safetensors").write_bytes(bytes(data))
    (paths[1] / "manifest.json").unlink()
    (paths[1] / "state.json").unlink()
    (tmp_path / "checkpoints" / "step_000005.tmp").mkdir()  # a save killed half-way
    ckpt, skipped = checkpoints.pick(tmp_path)
    assert ckpt == paths[0]
    assert skipped[0] == "step_000005.tmp: an interrupted save"
    assert "step_000004" in skipped[1] and "policy.safetensors has" in skipped[1] and "truncated" in skipped[1]
    assert "optimizer.safetensors does not match its SHA-256" in skipped[2]
    assert "step_000002: no manifest.json" in skipped[3]
    assert checkpoints.for_resume(tmp_path) == paths[0]
    assert "skipped step_000004" in caplog.text and "continuing from" in caplog.text
    (paths[0] / "state.json").write_text("{")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint .* is complete \(skipped .*step_000001: .*state.json"):
        checkpoints.for_resume(tmp_path)


def test_a_torn_or_corrupted_checkpoint_file_is_a_clear_error_naming_it(tmp_path):
    path = _save(tmp_path, 1)
    _, opt = _opt(0)
    pol = path / "policy.safetensors"
    pol.write_bytes(pol.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"step_000001/policy.safetensors: not a readable safetensors file"):
        checkpoints.load_checkpoint(path, ["policy"], opt)
    path = _save(tmp_path, 2)
    (path / "optimizer.json").write_text('{"param_groups": [')
    with pytest.raises(CheckpointError, match=r"step_000002/optimizer.json: not readable JSON"):
        checkpoints.load_checkpoint(path, ["policy"], opt)
    (path / "optimizer.json").write_text('{"param_groups": [], "scalars": {}}')
    with pytest.raises(CheckpointError, match=r"step_000002/optimizer.json: not the optimizer of this run"):
        checkpoints.load_checkpoint(path, ["policy"], opt)


def _failing_save_file(monkeypatch, failing_name: str, err: OSError):
    real = checkpoints.save_file

    def save_file(tensors, filename):
        if filename.endswith(failing_name):
            Path(filename).write_bytes(b"\0" * 10)  # what got written before the disk filled up
            raise err
        real(tensors, filename)

    monkeypatch.setattr(checkpoints, "save_file", save_file)


def test_disk_full_while_saving_is_a_clear_error_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    first = _save(tmp_path, 1)
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    _failing_save_file(monkeypatch, "optimizer.safetensors", OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(CheckpointError, match=r"saving checkpoint .*step_000002 failed: .*No space left on device; "
                       r"the previous checkpoint .*step_000001 is intact"):
        _save(tmp_path, 2)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000001"]  # no half step_000002(.tmp)
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert checkpoints.pick(tmp_path) == (first, [])


def test_permission_denied_when_replacing_a_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    path = _save(tmp_path, 2)
    old = load_file(str(path / "policy.safetensors"))["w"]
    real = Path.rename

    def rename(self, target):
        if self.name.endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(CheckpointError, match=r"step_000002 failed: .*Permission denied"):
        _save(tmp_path, 2)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000002"]
    assert checkpoints.problem(path) is None and torch.equal(load_file(str(path / "policy.safetensors"))["w"], old)


def test_dgpo_train_reports_a_full_disk_and_a_fresh_start_replaces_the_failed_run(tiny_toy, tmp_path, monkeypatch,
                                                                                  capsys):
    run = tmp_path / "run"
    args = ["train", f"model.path={tiny_toy}", f"run.out_dir={run}", "run.epochs=2", "run.sample_every=0",
            "run.save_every=1", "run.log_with=none", "train.prompts_per_epoch=2", "train.group_size=4",
            "train.batch_size=4", "train.lora_rank=4", "train.lora_alpha=8", "sampler.steps=3",
            "timesteps.trunc_steps=2", "timesteps.count=2", "dgpo.switch_ema_ref=0", "eval.max_prompts=4",
            "eval.batch_size=8", "reward.name=jpeg_incompressibility"]
    real, calls = checkpoints.save_file, []

    def save_file(tensors, filename):  # the second checkpoint hits a full disk
        calls.append(filename)
        if "step_000002" in filename:
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        real(tensors, filename)

    monkeypatch.setattr(checkpoints, "save_file", save_file)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "dgpo train: error: saving checkpoint" in err and "No space left on device" in err
    assert "step_000001 is intact" in err
    assert checkpoints.pick(run) == (run / "checkpoints" / "step_000001", [])
    monkeypatch.undo()
    assert main(args) == 0  # a fresh start: the failed run's rows and checkpoints do not mix in
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (run / "evals.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and [e["step"] for e in evals] == [0, 2]
