"""Fuzz targets for files and folders: training checkpoints (the trainer's resume), toy model folders
(``--model``), run directories (``dgpo export``), exported LoRA folders (toy peft folders and diffusers'
``pytorch_lora_weights.safetensors``). Each case starts from a real artefact written by dgpo's own save
path (a tiny toy model trained one step) and damages it: bytes truncated, flipped or replaced, files
deleted or swapped for folders, JSON values of any type anywhere, tensors of other shapes, dtypes or
names, safetensors headers rewritten, pickles that would run code. What loads must then work: the
optimizer steps, the model runs a forward pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from benchmarks.fuzz.strategies import byte_mutation, json_mutation, mutate_bytes, mutate_json

DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.float16, torch.bfloat16, torch.float64, torch.int8]


# ---------------------------------------------------------------------------- damage, applied in order
def tensor_op():
    name = st.one_of(st.text(min_size=1, max_size=10), st.sampled_from(["0", "-1", "999", "policy", "a.b.weight"]))
    return st.one_of(st.tuples(st.just("shape"), st.integers(0, 999),
                               st.sampled_from(["transpose", "flatten", "unsqueeze", "scalar", "double", "empty"])),
                     st.tuples(st.just("dtype"), st.integers(0, 999), st.sampled_from(range(len(DTYPES)))),
                     st.tuples(st.just("drop"), st.integers(0, 999)), st.tuples(st.just("add"), name),
                     st.tuples(st.just("rename"), st.integers(0, 999), name),
                     st.tuples(st.just("header"), json_mutation), st.tuples(st.just("nan"), st.integers(0, 999)))


def _reshape(t: torch.Tensor, how: str) -> torch.Tensor:
    return {"transpose": lambda: t.T.contiguous() if t.dim() == 2 else t.flip(0).unsqueeze(-1),
            "flatten": lambda: t.flatten(), "unsqueeze": lambda: t.unsqueeze(0), "scalar": lambda: torch.tensor(1.0),
            "double": lambda: torch.cat([t, t]), "empty": lambda: t[:0]}[how]().contiguous()


def damage_tensors(path: Path, op) -> None:
    data = path.read_bytes()
    if op[0] == "header":
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        new = mutate_json(header, op[1]).encode("utf-8", "surrogatepass")
        path.write_bytes(len(new).to_bytes(8, "little") + new + data[8 + n :])
        return
    tensors = load_file(str(path))
    keys = sorted(tensors)
    key = keys[op[1] % len(keys)] if keys and op[0] != "add" else None
    if op[0] == "shape" and key:
        tensors[key] = _reshape(tensors[key], op[2])
    elif op[0] == "dtype" and key:
        tensors[key] = tensors[key].to(DTYPES[op[2]])
    elif op[0] == "drop" and key:
        del tensors[key]
    elif op[0] == "add":
        tensors[op[1]] = torch.zeros(2, 3)
    elif op[0] == "rename" and key:
        tensors[op[2]] = tensors.pop(key)
    elif op[0] == "nan" and key and tensors[key].is_floating_point():
        tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(path))


def damage_op(files: list[str], tensor_files: list[str], json_files: list[str]):
    ops = [st.tuples(st.just("bytes"), st.sampled_from(files), byte_mutation),
           st.tuples(st.just("delete"), st.sampled_from(files)), st.tuples(st.just("folder"), st.sampled_from(files))]
    if tensor_files:
        ops.append(st.tuples(st.just("tensors"), st.sampled_from(tensor_files), tensor_op()))
        ops.append(st.tuples(st.just("tensors"), st.sampled_from(tensor_files), tensor_op()))
    if json_files:
        ops.append(st.tuples(st.just("json"), st.sampled_from(json_files), json_mutation))
        ops.append(st.tuples(st.just("json"), st.sampled_from(json_files), json_mutation))
    return st.one_of(*ops)


def apply_damage(folder: Path, op) -> None:
    path = folder / op[1]
    if op[0] == "delete":
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return
    if op[0] == "folder":
        path.unlink(missing_ok=True) if path.is_file() else None
        path.mkdir(parents=True, exist_ok=True)
        return
    if not path.is_file():
        return
    if op[0] == "bytes":
        path.write_bytes(mutate_bytes(path.read_bytes(), op[2]))
    elif op[0] == "json":
        try:
            doc = json.loads(path.read_bytes())
        except (ValueError, RecursionError):
            doc = {}
        try:
            text = mutate_json(doc, op[2])
        except RecursionError:  # an earlier damage nested it too deeply to copy: keep it so
            return
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    elif op[0] == "tensors":
        try:
            damage_tensors(path, op[2])
        except Exception:  # noqa: BLE001 - an earlier damage made the file unreadable: keep it so
            pass


def _fresh(pristine: Path, dest: Path) -> Path:
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(pristine, dest)
    return dest


# ---------------------------------------------------------------------------- a tiny trained run
_RUN: list = []  # built once per process, shared by the targets


def _tiny_run(folder: Path):
    """(trainer, toy folder, the trainer's run directory, a pristine copy of it): a tiny toy model, a
    Trainer on it (LoRA rank 4) after one optimizer step, and the checkpoint it saved."""
    if not _RUN or not _RUN[0][3].is_dir():  # a new run of the fuzzer, in a new temporary folder
        _RUN[:] = [_build_run(folder)]
    return _RUN[0]


def _build_run(folder: Path):
    from dgpo.config import load_config
    from dgpo.toy.model import ToyModelConfig, ToyUNet
    from dgpo.toy.weights import save_toy
    from dgpo.training.trainer import Trainer

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = ToyUNet(ToyModelConfig(channels=(8, 16, 16), text_dim=16, heads=2))
    save_toy(net, folder / "tiny")
    cfg = load_config(None, [f"model.path={folder / 'tiny'}", f"run.out_dir={folder / 'run'}", "run.log_with=none",
                             "train.lora_rank=4", "train.lora_alpha=8", "reward.name=jpeg_incompressibility",
                             "eval.max_prompts=4"])
    tr = Trainer(cfg)
    for p in tr.policy.params:
        p.grad = torch.randn_like(p)
    tr.opt.step()
    tr.step = 1
    tr._save(1)  # the trainer's own checkpoint writer (checkpoints.save_checkpoint)
    return tr, folder / "tiny", folder / "run", shutil.copytree(folder / "run", folder / "run_pristine")


CKPT_FILES = ["policy.safetensors", "ema_old.safetensors", "ema_slow.safetensors", "optimizer.safetensors",
              "optimizer.json", "state.json"]


def _setup_checkpoints(folder: Path):
    tr, _, run, clean = _tiny_run(folder)
    pristine = clean / "checkpoints" / "step_000001"
    shapes = [tuple(p.shape) for p in tr.policy.params]
    return SimpleNamespace(trainer=tr, run=run, pristine=pristine, shapes=shapes)


def _checkpoint_strategy(state):
    layout = st.tuples(st.just("layout"), st.sampled_from(["ckpt_is_file", "newer_empty", "newer_partial",
                                                           "checkpoints_is_file", "no_checkpoints", "tmp_dir"]))
    return st.lists(st.one_of(damage_op(CKPT_FILES, CKPT_FILES[:4], CKPT_FILES[4:]), layout), max_size=3)


def _layout(run: Path, ckpt: Path, kind: str) -> None:
    checkpoints = run / "checkpoints"
    if kind == "ckpt_is_file":
        shutil.rmtree(ckpt)
        ckpt.write_bytes(b"not a folder")
    elif kind in ("newer_empty", "newer_partial"):
        newer = checkpoints / "step_999999"
        newer.mkdir(exist_ok=True)
        if kind == "newer_partial":
            shutil.copy(ckpt / "state.json", newer / "state.json") if (ckpt / "state.json").is_file() else None
    elif kind == "checkpoints_is_file":
        shutil.rmtree(checkpoints)
        checkpoints.write_bytes(b"")
    elif kind == "no_checkpoints":
        shutil.rmtree(checkpoints)
    elif kind == "tmp_dir":  # a save that crashed half-way
        shutil.rmtree(checkpoints / "step_000002.tmp", ignore_errors=True)
        shutil.copytree(ckpt, checkpoints / "step_000002.tmp")


def _run_checkpoints(state, ops) -> str:
    checkpoints = state.run / "checkpoints"
    if checkpoints.is_file():
        checkpoints.unlink()
    shutil.rmtree(checkpoints, ignore_errors=True)
    ckpt = _fresh(state.pristine, checkpoints / "step_000001")
    for op in ops:
        if op[0] == "layout":
            if checkpoints.is_dir() and ckpt.is_dir():
                _layout(state.run, ckpt, op[1])
        elif ckpt.is_dir():
            apply_damage(ckpt, op)
    from dgpo.training.checkpoints import check_run_dir

    tr = state.trainer
    check_run_dir(state.run, resume=True)  # what `dgpo train --resume` checks before building the trainer
    tr._resume()  # then Trainer(cfg, resume=True) runs exactly this
    for p, shape in zip(tr.policy.params, state.shapes):
        assert tuple(p.shape) == shape
        p.grad = torch.zeros_like(p)
    tr.opt.step()  # the loaded optimizer state works
    return "ok"


# ---------------------------------------------------------------------------- toy model folders
def _setup_models(folder: Path):
    from dgpo.toy.model import ToyModelConfig, ToyUNet
    from dgpo.toy.weights import save_toy

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_toy(ToyUNet(ToyModelConfig(channels=(8, 16, 16), text_dim=16, heads=2, image_size=16)), folder / "pristine")
    return SimpleNamespace(folder=folder, pristine=folder / "pristine")


def _model_strategy(state):
    files = ["config.json", "model.safetensors"]
    spec = st.tuples(st.just("spec"), st.sampled_from(["", "missing", "a/b", "./a/b", "~nobody/x", "a\x00b", "\udcff",
                                                       "model.safetensors", "."]))
    return st.one_of(st.lists(damage_op(files, files[1:], files[:1]), max_size=3), spec)


def _run_models(state, case) -> str:
    from dgpo.training.export import load_any

    folder = _fresh(state.pristine, state.folder / "m")
    if isinstance(case, tuple):  # a --model string
        spec = case[1] if case[1] in ("", "a/b", "a\x00b", "\udcff", "~nobody/x") else str(folder / case[1])
    else:
        for op in case:
            apply_damage(folder, op)
        spec = str(folder)
    model = load_any(spec)
    x = torch.randn(1, *model.latent_shape())
    v = model.velocity(x, torch.tensor([500.0]), model.encode_prompts(["a photo of a red circle"]))
    assert v.shape == x.shape
    return "ok"


TARGETS_FILES = {
    "checkpoints": SimpleNamespace(name="checkpoints", setup=_setup_checkpoints, strategy=_checkpoint_strategy,
                                   run=_run_checkpoints),
    "model_folders": SimpleNamespace(name="model_folders", setup=_setup_models, strategy=_model_strategy,
                                     run=_run_models),
}

