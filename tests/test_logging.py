"""Trackers (TensorBoard, W&B offline, none) get the same metrics, evals and grids; grids people read."""

import json
import logging
import os
import struct
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from dgpo.config import load_config
from dgpo.training import plots, runlog
from dgpo.training.trainer import Trainer


def _fit(tiny, out, log_with):
    cfg = load_config(None, [
        f"model.path={tiny}", f"run.out_dir={out}", "run.epochs=2", "run.sample_every=1", "run.save_every=0",
        "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=4", "train.lora_rank=4",
        "train.lora_alpha=8", "sampler.steps=3", "timesteps.trunc_steps=2", "timesteps.count=2",
        "dgpo.switch_ema_ref=0", "eval.max_prompts=4", "eval.batch_size=8",
        "reward.name=jpeg_incompressibility", f"run.log_with={log_with}"])
    Trainer(cfg).fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]
    return rows, evals


def _expected(rows, evals):
    """(tag, step) -> value: every number of metrics.jsonl and evals.jsonl (evals under eval/)."""
    out = {(k, r["step"]): v for r in rows for k, v in runlog.scalars(r).items()}
    out.update({(k, e["step"]): v for e in evals for k, v in runlog.scalars(e, "eval/").items()})
    return out


GRIDS = {"samples/before", "samples/step_00001", "samples/after", "samples/compare"}


def test_tensorboard_gets_every_metric_eval_and_grid(tiny_toy, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows, evals = _fit(tiny_toy, tmp_path / "run", "tensorboard")
    acc = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    got = {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    want = _expected(rows, evals)
    assert len(want) > 40 and "eval/overall" in {k for k, _ in want}
    assert set(got) == set(want)
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-6, abs=1e-6), key
    assert set(acc.Tags()["images"]) == GRIDS
    tb_img = acc.Images("samples/compare")[-1]
    png = np.asarray(Image.open(tmp_path / "run" / "samples" / "compare.png").convert("RGB"))
    assert (tb_img.width, tb_img.height) == (png.shape[1], png.shape[0])


def _wandb_records(path):
    """The protobuf Records of a .wandb file (a LevelDB-style log: 7-byte header, 32 KiB blocks of
    [crc32 u32, length u16, type u8] chunks), decoded with W&B's own Record message."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if (kind == 0 and length == 0) or pos + 7 + length > len(data):  # the end, or a chunk being written
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            rec = Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


@pytest.mark.slow
def test_wandb_offline_gets_the_same_metrics_without_a_login(tiny_toy, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for k in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no cached API key
    (tmp_path / "wb").mkdir()
    rows, evals = _fit(tiny_toy, tmp_path / "run", "wandb")
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and not (tmp_path / "run" / "tb").exists()
    records, deadline = [], time.time() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.time() < deadline:
        time.sleep(0.2)  # W&B's service process may still be writing the file after wandb.finish()
        records = _wandb_records(next(runs[0].glob("run-*.wandb")))
    got, images = {}, set()
    for rec in records:
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {}  # one history row per step: its numbers, with the step under "_step"
        for item in rec.history.item:
            value = json.loads(item.value_json)
            if len(item.nested_key) > 1:  # an image: its fields under [tag, field]
                if item.nested_key[-1] == "_type" and value == "images/separated":
                    images.add(item.nested_key[0])
                continue
            key = item.key or item.nested_key[0]
            row[key] = value
        got.update({(k, row["_step"]): v for k, v in row.items() if not k.startswith("_")})
    want = _expected(rows, evals)
    assert set(got) == set(want)
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-6, abs=1e-6), key
    assert images == GRIDS
    assert len(list(runs[0].glob("files/media/images/samples/compare_*.png"))) == 1


def _offline_wandb(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    for k in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no cached API key
    (tmp_path / "wb").mkdir()


def _history(run_folder):
    """(the run id of an offline W&B run folder, {step: {key: value}} of its history rows)."""
    records, deadline = [], time.time() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.time() < deadline:
        time.sleep(0.2)  # W&B's service process may still be writing the file after wandb.finish()
        records = _wandb_records(next(run_folder.glob("run-*.wandb")))
    run_ids = {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"}
    steps = {}
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            row = {(i.key or i.nested_key[0]): json.loads(i.value_json) for i in rec.history.item
                   if len(i.nested_key) <= 1}
            steps.setdefault(row["_step"], {}).update({k: v for k, v in row.items() if not k.startswith("_")})
    return run_ids, steps


@pytest.mark.slow
def test_a_resumed_run_continues_its_wandb_run(tiny_toy, tmp_path, monkeypatch):
    """--resume logs into the W&B run the first process started (its id kept in the run folder), on the same
    step axis: the second process's rows start at the checkpoint's step, not at 0."""
    _offline_wandb(monkeypatch, tmp_path)
    monkeypatch.delenv("WANDB_DIR")  # W&B keeps the first WANDB_DIR it saw in a process; the run folder's own
    out = tmp_path / "run"

    def fit(epochs, resume):
        cfg = load_config(None, [
            f"model.path={tiny_toy}", f"run.out_dir={out}", f"run.epochs={epochs}", "run.sample_every=0",
            "run.save_every=1", "run.eval_at_ends=false", "train.prompts_per_epoch=2", "train.group_size=4",
            "train.batch_size=4", "train.lora_rank=4", "train.lora_alpha=8", "sampler.steps=3",
            "timesteps.trunc_steps=2", "timesteps.count=2", "dgpo.switch_ema_ref=0",
            "reward.name=jpeg_incompressibility", "run.log_with=wandb"])
        Trainer(cfg, resume=resume).fit()

    fit(2, False)
    fit(4, True)
    first, second = sorted((out / "wandb").glob("offline-run-*"))  # `wandb sync` merges them
    run_id = first.name.rsplit("-", 1)[1]
    assert second.name.rsplit("-", 1)[1] == run_id  # one W&B run
    assert (out / "wandb_run_id").read_text().strip() == run_id
    (ids1, steps1), (ids2, steps2) = _history(first), _history(second)
    assert ids1 == ids2 == {run_id}
    assert sorted(steps1) == [1, 2] and sorted(steps2) == [2, 3, 4]  # step 2 (the checkpoint's) logged again
    rows = {r["step"]: r for r in (json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())}
    for step, got in {**steps1, **steps2}.items():
        assert got["reward_mean"] == pytest.approx(rows[step]["reward_mean"], rel=1e-6), step
    fit(1, False)  # a fresh start in the folder is a new W&B run
    assert (out / "wandb_run_id").read_text().strip() != run_id


def test_wandb_run_id_is_kept_in_the_run_folder(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    kwargs = {"wandb": {"name": "run"}}
    assert runlog.wandb_resume({}, tmp_path, False) == {}  # TensorBoard or none: nothing to keep
    fresh = runlog.wandb_resume(kwargs, tmp_path, False)["wandb"]
    assert fresh["resume"] == "allow" and fresh["name"] == "run" and len(fresh["id"]) == 8
    assert (tmp_path / "wandb_run_id").read_text() == fresh["id"] + "\n"
    assert runlog.wandb_resume(kwargs, tmp_path, True)["wandb"]["id"] == fresh["id"]  # --resume: the same run
    assert runlog.wandb_resume(kwargs, tmp_path, False)["wandb"]["id"] != fresh["id"]  # a fresh start: a new one
    (tmp_path / "wandb_run_id").write_text("not an id!\n")
    monkeypatch.setattr(runlog.log, "disabled", False)  # other tests' libraries may have turned loggers off
    monkeypatch.setattr(runlog.log, "propagate", True)
    caplog.set_level(logging.WARNING, logger=runlog.log.name)
    again = runlog.wandb_resume(kwargs, tmp_path, True)["wandb"]["id"]
    assert "not a W&B run id" in caplog.text and (tmp_path / "wandb_run_id").read_text() == again + "\n"
    monkeypatch.setenv("WANDB_RUN_ID", "mine-42")  # the user's own id, kept for the resumes
    (tmp_path / "new").mkdir()
    assert runlog.wandb_resume(kwargs, tmp_path / "new", False)["wandb"]["id"] == "mine-42"
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "wandb_run_id").write_text("x")
    runlog.clear_run(tmp_path / "keep")
    assert not (tmp_path / "keep" / "wandb_run_id").exists()  # a fresh start forgets the old W&B run


@pytest.mark.slow
def test_log_with_none_and_a_missing_wandb(tiny_toy, tmp_path, monkeypatch):
    rows, _ = _fit(tiny_toy, tmp_path / "run", "none")
    assert rows and not (tmp_path / "run" / "tb").exists() and not (tmp_path / "run" / "wandb").exists()
    assert (tmp_path / "run" / "samples" / "compare.png").is_file()
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"run\.log_with=wandb .*needs the 'wandb' module.*'dgpo\[wandb\]'"):
        runlog.tracker_setup("wandb", "dgpo", tmp_path)


def test_captions_wrap_instead_of_being_cut():
    font = ImageFont.load_default()
    text = "a red circle left of a blue square"
    lines = plots.wrap_caption(text, font, 124)
    assert len(lines) > 1 and " ".join(lines) == text  # no word lost
    assert all(font.getlength(line) <= 124 for line in lines)
    long = plots.wrap_caption("word " * 200, font, 124)
    assert len(long) == plots.CAPTION_LINES and long[-1].endswith("...")
    assert [len(x) for x in plots.wrap_caption("x" * 100, font, 30)] and all(
        font.getlength(x) <= 30 for x in plots.wrap_caption("x" * 100, font, 30))


def test_grid_and_compare_layout(tmp_path):
    g = torch.Generator().manual_seed(0)
    before, after = torch.rand(3, 3, 8, 8, generator=g), torch.rand(3, 3, 8, 8, generator=g)
    caps = ["a photo of a red circle left of a blue square", "a cross", "a green triangle"]
    plots.save_grid(before, caps, tmp_path / "g.png", cols=8, scale=4)
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape[1] == 3 * 32  # as many columns as images
    plots.save_grid(before, ["a cross"] * 3, tmp_path / "short.png", cols=8, scale=4)
    short = np.asarray(Image.open(tmp_path / "short.png"))
    assert grid.shape[0] > short.shape[0]  # room for the wrapped lines
    plots.save_compare(before, after, caps, tmp_path / "c.png", cols=2, scale=4)
    cmp = np.asarray(Image.open(tmp_path / "c.png").convert("RGB")).astype(int)
    font = ImageFont.load_default()
    head = font.getbbox("Ag")[3] + 4
    up = lambda t: np.kron((t.permute(1, 2, 0).numpy() * 255).round(), np.ones((4, 4, 1)))  # noqa: E731
    pair_w = 2 * 32 + plots.COMPARE_GAP
    assert cmp.shape[1] == 2 * pair_w
    assert np.array_equal(cmp[head:head + 32, 0:32], up(before[0]))  # prompt 0: before on the left ...
    right = cmp[head:head + 32, 32 + plots.COMPARE_GAP:pair_w]
    assert np.array_equal(right, up(after[0]))  # ... after on the right
    assert np.array_equal(cmp[head:head + 32, pair_w:pair_w + 32], up(before[1]))
