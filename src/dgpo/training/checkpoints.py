"""Checkpoints: the one module that writes and reads them; they survive crashes (integrity, choice at
resume, retention).

A checkpoint is the folder ``checkpoints/step_NNNNNN``. It is written as ``step_NNNNNN.tmp``, its files
flushed to disk, then ``manifest.json`` (every file's size and SHA-256) last, then renamed into place:
a folder under the final name always has a manifest, so a kill at any moment leaves either the whole
checkpoint or a ``.tmp`` folder that the next save removes. ``--resume`` takes the newest checkpoint
whose files match its manifest and says which newer ones it skipped and why; a failed save (disk full,
permission denied) is a :class:`CheckpointError` that names the file and leaves the previous checkpoint
as it was. After each save, all but the newest ``run.keep_checkpoints`` are deleted.

Tensors are safetensors and everything else JSON: no pickle, nothing in a checkpoint can run code. Reading
one back trusts none of it: every failure is a :class:`CheckpointError` naming the file and the fix, and
the contents are checked (:mod:`dgpo.training.checkpoint_checks`) before anything goes into a model or an
optimizer.
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

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dgpo.errors import CheckpointError, InputError, MissingPathError, short
from dgpo.training.checkpoint_checks import FIX, check_trainer_state, optimizer_state

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


def read_tensors(path: Path, fix: str = FIX) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file; missing, truncated or corrupted: a CheckpointError naming it
    and ``fix``."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; {fix}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({short(str(e))}); {fix}") from None


def read_json(path: Path, fix: str = FIX) -> dict:
    """A checkpoint's JSON file, which must hold an object; missing, unreadable or not an object: a
    CheckpointError naming it and ``fix``."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; {fix}")
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({short(str(e))}); {fix}") from None
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deeply
        raise CheckpointError(f"{path}: not readable JSON ({type(e).__name__}); {fix}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}; {fix}")
    return data


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


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(the optimizer state's tensors by ``"<param index>.<key>"``, the rest for optimizer.json)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(path: Path, parts: dict[str, dict[str, torch.Tensor]], opt, state: dict, keep: int = 0) -> None:
    """Tensors in safetensors (one file per part), optimizer in safetensors + JSON, state in JSON; written
    through :func:`writing` (a temporary folder, the manifest last, a rename); afterwards only the newest
    ``keep`` checkpoints stay (0: all)."""
    tensors, meta = _flatten_optimizer(opt)
    with writing(path, state["step"], keep) as tmp:
        for name, part in parts.items():
            save_file({k: v.detach().contiguous() for k, v in part.items()}, str(tmp / f"{name}.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        (tmp / "state.json").write_text(json.dumps(state, indent=1))


def load_checkpoint(path: Path, names: list[str], opt) -> tuple[dict, dict]:
    """(parts, trainer state) of a checkpoint written by :func:`save_checkpoint`; the optimizer state
    goes into ``opt``. A checkpoint that cannot be read back (a file missing, truncated or corrupt, the
    optimizer of another model) raises a CheckpointError naming the file, before ``opt`` is touched."""
    for f in [*(f"{n}.safetensors" for n in names), "optimizer.safetensors", "optimizer.json", "state.json"]:
        if not (path / f).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: missing {f}; {FIX}")
    parts = {n: read_tensors(path / f"{n}.safetensors") for n in names}
    opt_state = optimizer_state(read_tensors(path / "optimizer.safetensors"), read_json(path / "optimizer.json"),
                                opt, path)
    state = read_json(path / "state.json")
    check_trainer_state(state, path / "state.json")
    opt.load_state_dict(opt_state)
    return parts, state


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of a run whose files match their manifest (newer broken ones are logged)."""
    ckpt, skipped = pick(run_dir)
    for line in skipped:
        log.warning("skipped checkpoint %s", line)
    return ckpt


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
