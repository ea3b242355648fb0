"""Checkpoints that survive crashes: integrity, choice at resume, retention.

A checkpoint is the folder ``checkpoints/step_NNNNNN``. It is written as ``step_NNNNNN.tmp``, its files
flushed to disk, then ``manifest.json`` (every file's size and SHA-256) last, then renamed into place:
a folder under the final name always has a manifest, so a kill at any moment leaves either the whole
checkpoint or a ``.tmp`` folder that the next save removes. ``--resume`` takes the newest checkpoint
whose files match its manifest and says which newer ones it skipped and why; a failed save (disk full,
permission denied) is a :class:`CheckpointError` that names the file and leaves the previous checkpoint
as it was. After each save, all but the newest ``run.keep_checkpoints`` are deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from dgpo.errors import CheckpointError, InputError, MissingPathError

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT = "dgpo-checkpoint-1"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, step: int) -> None:
    """Flush every file of ``folder`` to disk, then write ``manifest.json`` (sizes, SHA-256) and flush it."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    for p in files:
        _fsync(p)
    entries = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "step": step, "files": entries}, indent=1))
    _fsync(folder / MANIFEST)
    _fsync(folder)


def problem(folder: Path, hashes: bool = True) -> str | None:
    """Why ``folder`` is not a usable checkpoint, or None. ``hashes=False``: sizes only (cheap).
    A folder without a manifest but with ``state.json`` was written before manifests: accepted."""
    path = folder / MANIFEST
    if not path.is_file():
        return None if (folder / "state.json").is_file() else f"no {MANIFEST} (the save did not finish)"
    try:
        files = json.loads(path.read_text())["files"]
        items = [(name, int(e["bytes"]), str(e["sha256"])) for name, e in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{path} is unreadable ({e})"
    for name, size, digest in items:
        f = folder / name
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != size:
            return f"{f} has {f.stat().st_size} bytes, its manifest says {size} (truncated?)"
        if hashes and sha256(f) != digest:
            return f"{f} does not match its SHA-256 in {MANIFEST} (corrupted)"
    return None


def _step(folder: Path) -> int:
    return int(folder.name.removeprefix("step_"))


def candidates(ckpt_dir: Path) -> list[Path]:
    """``step_N`` folders, newest first."""
    found = [p for p in ckpt_dir.glob("step_*") if p.is_dir() and p.name.removeprefix("step_").isdigit()]
    return sorted(found, key=_step, reverse=True)


def pick(run_dir: Path, hashes: bool = True) -> tuple[Path | None, list[str]]:
    """(the newest usable checkpoint of a run or None, a line for each newer folder skipped and why)."""
    ckpt_dir = run_dir / "checkpoints"
    skipped = [f"{p.name}: an interrupted save" for p in sorted(ckpt_dir.glob("step_*.tmp"))]
    for c in candidates(ckpt_dir):
        reason = problem(c, hashes)
        if reason is None:
            return c, skipped
        skipped.append(f"{c.name}: {reason}")
    return None, skipped


def for_resume(run_dir: Path) -> Path:
    """The checkpoint ``--resume`` continues from (logged, with the folders it skipped)."""
    ckpt, skipped = pick(run_dir)
    for line in skipped:
        log.warning("--resume: skipped %s", line)
    if ckpt is None:
        why = f" (skipped {'; '.join(skipped)})" if skipped else ""
        raise MissingPathError(f"--resume: no checkpoint under {run_dir / 'checkpoints'} is complete{why}; "
                                "start the run again without --resume")
    log.info("--resume: continuing from %s", ckpt)
    return ckpt


def read_tensors(path: Path) -> dict:
    """A checkpoint's safetensors file; a truncated or corrupted one is a CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint file {path} is unreadable (truncated or corrupted): {e}") from None


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint file {path} is unreadable (truncated or corrupted): {e}") from None


def _remove(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


@contextmanager
def writing(path: Path, step: int, keep: int) -> Iterator[Path]:
    """Yield a temporary folder to write checkpoint ``path`` into; then manifest, rename, retention.
    An OSError or safetensors error on the way is a CheckpointError; the previous checkpoints stay."""
    tmp, trash = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".trash")
    try:
        _remove(tmp)  # left by a killed save
        tmp.mkdir(parents=True)
        yield tmp
        write_manifest(tmp, step)
        if path.exists():  # the same step saved again (a resumed run replaces a torn or skipped one)
            _remove(trash)
            path.rename(trash)
        tmp.rename(path)
        _fsync(path.parent)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if trash.exists() and not path.exists():
            trash.rename(path)
        prev, _ = pick(path.parent.parent, hashes=False)
        kept = f"the previous checkpoint {prev} is intact" if prev else "no earlier checkpoint exists"
        raise CheckpointError(f"saving checkpoint {path} failed: {e}; {kept}. Free disk space or fix "
                              "permissions, then continue with --resume") from e
    try:
        _remove(trash)
        prune(path.parent, path, keep)
    except OSError as e:
        log.warning("checkpoint retention: could not delete an old checkpoint (%s)", e)


def remove_leftovers(ckpt_dir: Path) -> None:
    """The ``.tmp`` and ``.trash`` folders of saves and deletions that a kill cut short."""
    for p in [*ckpt_dir.glob("step_*.tmp"), *ckpt_dir.glob("step_*.trash")]:
        shutil.rmtree(p, ignore_errors=True)


def prune(ckpt_dir: Path, current: Path, keep: int) -> None:
    """Delete leftovers and all checkpoints older than ``current`` except the newest ``keep - 1``
    complete ones (``keep`` 0: keep all). Newer folders (a resumed run's future, skipped at resume) are
    left for the run to overwrite."""
    remove_leftovers(ckpt_dir)
    if keep <= 0:
        return
    older = [c for c in candidates(ckpt_dir) if _step(c) < _step(current)]
    kept = [c for c in older if problem(c, hashes=False) is None][: keep - 1]
    for c in older:
        if c not in kept:
            doomed = c.with_name(c.name + ".trash")  # renamed first: a kill mid-delete leaves no torn step_N
            c.rename(doomed)
            shutil.rmtree(doomed)
            log.info("checkpoint retention: deleted %s (run.keep_checkpoints=%d)", c.name, keep)


def check_run_dir(run: Path, resume: bool) -> None:
    """Before a run is built: run.out_dir must be a folder we can write (or create), and hold a
    usable checkpoint for --resume (a UserError otherwise)."""
    if run.exists() and not run.is_dir():
        raise InputError(f"run.out_dir={str(run)!r} is a file, not a folder; choose another run.out_dir")
    parent = next((p for p in [run, *run.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"run.out_dir={str(run)!r}: cannot write in {str(parent)!r}; choose a writable run.out_dir")
    if resume and not candidates(run / "checkpoints"):
        raise MissingPathError(f"--resume: no checkpoint under {run / 'checkpoints'}; train without --resume, or "
                               "set run.out_dir to the run to continue")
    if resume and pick(run, hashes=False)[0] is None:  # sizes only; the trainer checks the hashes
        for_resume(run)  # raises, naming each checkpoint and what is wrong with it
