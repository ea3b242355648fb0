"""Fuzz targets for what ``dgpo export`` reads and writes: run directories (config.yaml + checkpoints),
toy LoRA folders (peft: adapter_config.json + adapter_model.safetensors) applied with ``--lora``, and
diffusers LoRA files (``pytorch_lora_weights.safetensors``) applied to a tiny SD3 pipeline. A pickled
adapter that would create a marker file when loaded is planted beside them: loading must never run it."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from hypothesis import strategies as st

from benchmarks.fuzz.file_targets import _fresh, _tiny_run, apply_damage, damage_op
from benchmarks.fuzz.strategies import MARKER_NAME, json_values, pickle_payload

ROOT = Path(__file__).resolve().parents[2]


def _marker_check(marker: Path) -> None:
    if marker.exists():
        marker.unlink()
        raise AssertionError("a pickled payload ran while loading")


# ---------------------------------------------------------------------------- run directories
RUN_FILES = ["config.yaml", "checkpoints/step_000001/ema_slow.safetensors",
             "checkpoints/step_000001/policy.safetensors", "checkpoints", "checkpoints/step_000001"]
CONFIG_EDITS = [("model", "path", "/nonexistent"), ("train", "lora_rank", 8), ("train", "lora_rank", 0),
                ("train", "lora_targets", "to_q"), ("model", "kind", "sd3"), ("train", "lora_alpha", -1.0)]


def _setup_runs(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(folder=folder, pristine=_tiny_run(folder)[3])


def _run_strategy(state):
    edit = st.tuples(st.just("config_edit"), st.one_of(st.sampled_from(CONFIG_EDITS), st.tuples(
        st.sampled_from(["model", "train", "run"]), st.sampled_from(["path", "lora_rank", "seed", "kind"]),
        json_values)))
    ops = st.lists(st.one_of(damage_op(RUN_FILES, RUN_FILES[1:3], []), edit), max_size=3)
    return st.tuples(ops, st.booleans(), st.sampled_from(["ema_slow", "policy"]), st.sampled_from(["", "named"]))


def _run_runs(state, case) -> str:
    from dgpo.training.export import export_run

    ops, merge, weights, checkpoint = case
    run = _fresh(state.pristine, state.folder / "run_copy")
    for op in ops:
        if op[0] == "config_edit":
            try:
                cfg = yaml.safe_load((run / "config.yaml").read_text())
                cfg[op[1][0]][op[1][1]] = op[1][2]
                (run / "config.yaml").write_text(yaml.safe_dump(cfg))
            except Exception:  # noqa: BLE001 - config.yaml already damaged: leave it so
                pass
        else:
            apply_damage(run, op)
    out = state.folder / "out"
    shutil.rmtree(out, ignore_errors=True)
    ckpt = str(run / "checkpoints" / "step_000001") if checkpoint else None
    path = export_run(run, out, merge=merge, weights=weights, checkpoint=ckpt)
    if merge:
        from dgpo.toy.weights import load_toy

        load_toy(path)  # the merged export loads back
    else:
        assert (path / "adapter_model.safetensors").is_file()
    return "ok"


# ---------------------------------------------------------------------------- toy LoRA folders
LORA_FILES = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]


def _setup_lora(folder: Path):
    from dgpo.toy.weights import load_toy
    from dgpo.training.export import export_run

    _, tiny, _, run = _tiny_run(folder)
    pristine = export_run(run, folder / "pristine")
    return SimpleNamespace(folder=folder, pristine=pristine, base=load_toy(tiny), marker=folder / MARKER_NAME)


def _lora_strategy(state):
    plant = st.tuples(st.just("pickle"), st.booleans())  # a pickled adapter_model.bin, with or without safetensors
    return st.lists(st.one_of(damage_op(LORA_FILES[:2], LORA_FILES[1:2], LORA_FILES[:1]), plant), max_size=3)


def _plant(folder: Path, marker: Path, keep_safetensors: bool) -> None:
    apply_damage(folder, ("delete", "adapter_model.bin"))
    (folder / "adapter_model.bin").write_bytes(pickle_payload(str(marker)))
    if not keep_safetensors:
        apply_damage(folder, ("delete", "adapter_model.safetensors"))


def _run_lora(state, ops) -> str:
    from dgpo.models.loading import apply_lora
    from dgpo.models.toy import ToyFlowModel

    folder = _fresh(state.pristine, state.folder / "lora")
    for op in ops:
        _plant(folder, state.marker, op[1]) if op[0] == "pickle" else apply_damage(folder, op)
    model = ToyFlowModel(copy.deepcopy(state.base))
    try:
        apply_lora(model, str(folder))
    finally:
        _marker_check(state.marker)
    x = torch.randn(1, *model.latent_shape())
    assert model.velocity(x, torch.tensor([500.0]), model.encode_prompts(["a red circle"])).shape == x.shape
    return "ok"


# ---------------------------------------------------------------------------- diffusers LoRA files
def _setup_diffusers(folder: Path):
    sys.path.insert(0, str(ROOT / "tests"))  # the test suite's tiny SD3 builder (tests/tiny_diffusers.py)
    from diffusers.utils import logging as diffusers_logging
    from tiny_diffusers import build_sd3
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    from dgpo.training.export import LORA_FILE, load_any, lora_state_dict
    from dgpo.training.policy import Policy

    folder.mkdir(parents=True, exist_ok=True)
    sd3 = build_sd3(folder / "sd3")
    donor = load_any(str(sd3))
    policy = Policy(donor, lora_rank=4, lora_alpha=8)
    with torch.no_grad():
        for n, p in zip(policy.names, policy.params):
            p.normal_(std=0.01) if "lora_B" in n else None
    sd, meta = lora_state_dict(policy)
    pristine = folder / "pristine"
    type(donor.pipe).save_lora_weights(pristine, transformer_lora_layers=sd, transformer_lora_adapter_metadata=meta,
                                       weight_name=LORA_FILE)  # as `dgpo export` writes it
    return SimpleNamespace(folder=folder, pristine=pristine, model=load_any(str(sd3)), marker=folder / MARKER_NAME)


def _diffusers_strategy(state):
    name = st.sampled_from(["", "", "pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin",
                            "missing.safetensors"])
    plant = st.tuples(st.just("pickle"), st.booleans())
    files = ["pytorch_lora_weights.safetensors"]
    return st.tuples(st.lists(st.one_of(damage_op(files, files, []), plant), max_size=3), name)


def _run_diffusers(state, case) -> str:
    from dgpo.models.loading import apply_lora

    ops, name = case
    folder = _fresh(state.pristine, state.folder / "lora")
    for op in ops:
        if op[0] == "pickle":
            apply_damage(folder, ("delete", "pytorch_lora_weights.bin"))
            (folder / "pytorch_lora_weights.bin").write_bytes(pickle_payload(str(state.marker)))
            if not op[1]:
                apply_damage(folder, ("delete", "pytorch_lora_weights.safetensors"))
        else:
            apply_damage(folder, op)
    before = {k: v.shape for k, v in state.model.pipe.transformer.state_dict().items()}
    try:
        apply_lora(state.model, str(folder / name) if name else str(folder))
    finally:
        _marker_check(state.marker)
        assert not getattr(state.model.pipe.transformer, "peft_config", None), "an adapter was left behind"
    after = {k: v.shape for k, v in state.model.pipe.transformer.state_dict().items()}
    assert after == before, "the LoRA changed the transformer's layout"
    return "ok"


TARGETS_EXPORTS = {
    "run_dirs": SimpleNamespace(name="run_dirs", setup=_setup_runs, strategy=_run_strategy, run=_run_runs),
    "lora_folders": SimpleNamespace(name="lora_folders", setup=_setup_lora, strategy=_lora_strategy, run=_run_lora),
    "diffusers_lora": SimpleNamespace(name="diffusers_lora", setup=_setup_diffusers, strategy=_diffusers_strategy,
                                      run=_run_diffusers),
}
