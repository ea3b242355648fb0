"""What a run logs: ``metrics.jsonl`` and ``evals.jsonl``, mirrored to the run's tracker (TensorBoard or
W&B), their repair at a resume, and the cleanup of a fresh start."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from pathlib import Path

import numpy as np
from PIL import Image

from dgpo.extras import require

log = logging.getLogger(__name__)


class MetricsLog:
    """One JSON object per optimizer step in ``metrics.jsonl``, mirrored to the run's tracker
    (``log``: accelerate's ``Accelerator.log``, a no-op without trackers)."""

    def __init__(self, run_dir: Path, log=None):
        self.path = run_dir / "metrics.jsonl"
        self.log = log

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.log is not None:
            self.log(scalars(row), step=row["step"])

    def read(self) -> list[dict]:
        return read_jsonl(self.path)[0]


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """(the rows of a JSONL file, the number of unreadable lines: a last line torn by a kill)."""
    if not path.exists():
        return [], 0
    rows, torn = [], 0
    for line in filter(str.strip, path.read_text().splitlines()):
        try:
            rows.append(json.loads(line))
        except ValueError:
            torn += 1
    return rows, torn


def write_text_atomic(path: Path, text: str) -> None:
    """The file whole or not at all: a temporary file, renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def repair_logs(run_dir: Path, step: int, epoch: int, evals: list[dict]) -> None:
    """At a resume from the checkpoint of ``step`` written after ``epoch`` epochs: ``metrics.jsonl`` keeps
    its rows of those epochs (the killed run's later rows are recomputed, a skipped step's too although it
    did not advance the step; a torn line goes) and ``evals.jsonl`` is rewritten from the checkpoint's
    evals, so no row appears twice or goes missing."""
    rows, torn = read_jsonl(run_dir / "metrics.jsonl")
    kept = [r for r in rows if r["step"] <= step and r.get("epoch", -1) < epoch]
    write_text_atomic(run_dir / "metrics.jsonl", _jsonl(kept))
    write_text_atomic(run_dir / "evals.jsonl", _jsonl(evals))
    if torn or len(kept) < len(rows):
        log.info("resume at step %d: dropped %d metrics rows of later steps and %d torn lines",
                 step, len(rows) - len(kept), torn)


def relog_step(acc, run_dir: Path, step: int, evals: list[dict]) -> None:
    """After a resume from the checkpoint of ``step``, whose tracker hides what was logged from ``step`` on
    (a killed process may have logged the final eval there after the checkpoint): that step's metrics,
    evals and sample grid again, from the run's files."""
    for row in MetricsLog(run_dir).read():
        if row["step"] == step:
            acc.log(scalars(row), step=step)
    for row in evals:
        if row["step"] == step:
            acc.log(scalars(row, "eval/"), step=step)
    grid = run_dir / "samples" / f"step_{step:05d}.png"
    if grid.is_file():
        log_image(acc.trackers, f"samples/{grid.stem}", grid, step)


WANDB_ID = "wandb_run_id"  # the run's W&B id: a --resume continues that W&B run
FRESH_START_REMOVES = ("metrics.jsonl", "evals.jsonl", "summary.json", "checkpoints", "samples/before.safetensors",
                       WANDB_ID)


def clear_run(run_dir: Path) -> None:
    """A fresh start (no ``--resume``) in a folder that holds an earlier run: that run's logs, summary
    and checkpoints go, so rows and checkpoints of two runs never mix."""
    import shutil

    old = [run_dir / n for n in FRESH_START_REMOVES if (run_dir / n).exists()]
    if old:
        log.warning("fresh start in %s (no --resume): removing the earlier run's %s", run_dir,
                    ", ".join(p.name for p in old))
    for p in old:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def scalars(row: dict, prefix: str = "") -> dict:
    """The numbers of a metrics or eval row (not its step) for a tracker, keys prefixed; an eval's
    out-of-domain rewards (``extra: {name: mean}``) as ``eval_extra/<name>`` (prefix "eval/")."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    out = {prefix + k: v for k, v in row.items() if number(v) and k != "step"}
    group = prefix.rstrip("/") + "_extra/" if prefix else "extra/"
    out.update({group + k: v for k, v in (row.get("extra") or {}).items() if number(v)})
    return out


def tracker_setup(log_with: str, project: str, run_dir: Path) -> tuple[str | None, str, dict]:
    """``Accelerator(log_with=...)``, then ``init_trackers``' project name and init_kwargs for
    ``run.log_with``: TensorBoard writes ``<run_dir>/tb``; W&B names the run after the run folder and
    keeps its files there unless ``WANDB_DIR`` says otherwise (its id: :func:`wandb_resume`)."""
    if log_with == "none":
        return None, "", {}
    if log_with == "tensorboard":
        return "tensorboard", "tb", {}
    require("wandb", "run.log_with=wandb (or set run.log_with=none)")
    kwargs = {"name": run_dir.name}
    if not os.environ.get("WANDB_DIR"):
        kwargs["dir"] = str(run_dir)
    return "wandb", project, {"wandb": kwargs}


def wandb_resume(init_kwargs: dict, run_dir: Path, resume: bool) -> dict:
    """``init_trackers`` kwargs with the run's W&B id (``resume="allow"``), kept in ``<run_dir>/wandb_run_id``:
    a fresh start draws one (``$WANDB_RUN_ID`` if set) and writes it, a ``--resume`` reads it, so that the
    resumed process logs into the same W&B run and its steps continue that run's step axis. Without W&B the
    kwargs are returned as they are; a run folder without the file (a run started before dgpo kept it)
    gets a new id. Call it on the main process only (it writes the file)."""
    if "wandb" not in init_kwargs:
        return init_kwargs
    path = run_dir / WANDB_ID
    run_id = path.read_text().strip() if resume and path.is_file() else ""
    if run_id and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id):
        log.warning("%s holds %r, not a W&B run id; the resumed run starts a new W&B run", path, run_id[:80])
        run_id = ""
    if not run_id:
        if resume:
            log.warning("no W&B run id in %s: the resumed run starts a new W&B run", path)
        run_id = os.environ.get("WANDB_RUN_ID") or "".join(secrets.choice(ID_CHARS) for _ in range(8))
        write_text_atomic(path, run_id + "\n")
    return {**init_kwargs, "wandb": {**init_kwargs["wandb"], "id": run_id, "resume": "allow"}}


ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"  # as W&B's own ids


def purge_from(init_kwargs: dict, step: int) -> dict:
    """``init_trackers`` kwargs with TensorBoard's ``purge_step``: TensorBoard hides what earlier processes
    of the run logged at ``step`` and later (a resumed run logs that step again: :func:`relog_step`)."""
    return {**init_kwargs, "tensorboard": {**init_kwargs.get("tensorboard", {}), "purge_step": step}}


def flat_config(data: dict, prefix: str = "") -> dict:
    """A nested config as ``section.key`` -> bool / int / float / str (what trackers' hparams take)."""
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


def log_image(trackers: list, tag: str, path: Path, step: int) -> None:
    """A saved PNG (a sample grid) to each tracker, under ``tag`` at ``step``."""
    if not trackers:
        return
    arr = np.asarray(Image.open(path).convert("RGB"))
    for t in trackers:
        if t.name == "tensorboard":
            t.log_images({tag: arr[None]}, step=step, dataformats="NHWC")
        else:
            t.log_images({tag: [arr]}, step=step)


def log_video(trackers: list, tag: str, path: Path, step: int) -> None:
    """A saved animated grid (GIF) to each tracker: TensorBoard shows it in its images tab (the encoded
    GIF as an image summary, as ``add_video`` writes it, without moviepy); W&B as a video."""
    for t in trackers:
        if t.name == "tensorboard":
            from tensorboard.compat.proto.summary_pb2 import Summary

            with Image.open(path) as im:
                width, height = im.size
            img = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=path.read_bytes())
            t.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=img)]), step)
        else:
            import wandb

            t.log({tag: wandb.Video(str(path), format="gif")}, step=step)
