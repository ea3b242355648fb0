"""Compare a killed-and-resumed run folder with an uninterrupted one, bit for bit (wall-clock fields aside):
the crash-resume harness's verdict (benchmarks/robustness/crash_resume.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

WALL_CLOCK = re.compile(r"^(wall_time|time_.*|train_time_s|train_time|eval/train_time_s)$")


def _rows(path: Path) -> list:
    """A JSONL file's rows (a torn line as the string "torn")."""
    lines = path.read_text().splitlines() if path.is_file() else []
    try:
        return [json.loads(line) for line in lines]
    except ValueError:
        return ["torn"]


def _strip(obj):
    """A JSON value without its wall-clock fields."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not WALL_CLOCK.match(k)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _tensors_differ(a: Path, b: Path) -> list[str]:
    ta, tb = load_file(str(a)), load_file(str(b))
    if ta.keys() != tb.keys():
        return [f"{b.parent.name}/{b.name}: keys differ"]
    return [f"{b.parent.name}/{b.name}[{k}]" for k in ta if not torch.equal(ta[k], tb[k])]


def tensorboard_scalars(tb: Path) -> tuple[dict, list[str]]:
    """({(tag, step): value} as TensorBoard shows it, tags with a step more than once)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    out, dup = {}, []
    for tag in acc.Tags()["scalars"]:
        if WALL_CLOCK.match(tag):
            continue
        events = acc.Scalars(tag)
        if len({e.step for e in events}) != len(events):
            dup.append(tag)
        out.update({(tag, e.step): e.value for e in events})
    return out, dup


def compare(ref: Path, run: Path) -> list[str]:
    """Every difference between an uninterrupted run and a killed-and-resumed one (empty: none)."""
    diffs = []
    names = sorted(p.name for p in (ref / "checkpoints").iterdir())
    got = sorted(p.name for p in (run / "checkpoints").iterdir())
    if names != got:
        diffs.append(f"checkpoint folders {got} != {names}")
    for name in set(names) & set(got):
        a, b = ref / "checkpoints" / name, run / "checkpoints" / name
        for f in ("policy", "ema_old", "ema_slow", "optimizer"):
            diffs += _tensors_differ(a / f"{f}.safetensors", b / f"{f}.safetensors")
        for f in ("optimizer.json", "state.json"):
            if _strip(json.loads((a / f).read_text())) != _strip(json.loads((b / f).read_text())):
                diffs.append(f"{name}/{f}")
    for f in ("metrics.jsonl", "evals.jsonl"):
        ra, rb = _strip(_rows(ref / f)), _strip(_rows(run / f))
        if ra != rb:
            diffs.append(f"{f}: {[r['step'] if isinstance(r, dict) else r for r in rb]} vs "
                         f"{[r['step'] for r in ra]}" if len(ra) != len(rb) else f"{f}: values differ")
    if _strip(json.loads((ref / "summary.json").read_text())) != _strip(json.loads((run / "summary.json").read_text())):
        diffs.append("summary.json")
    pngs = sorted(p.relative_to(ref).as_posix() for p in [*ref.glob("samples/*.png"), *ref.glob("plots/*.png")])
    if pngs != sorted(p.relative_to(run).as_posix() for p in [*run.glob("samples/*.png"), *run.glob("plots/*.png")]):
        diffs.append("PNG files (samples/, plots/) differ in names")
    diffs += [f"{p}: bytes differ" for p in pngs
              if (run / p).is_file() and (ref / p).read_bytes() != (run / p).read_bytes()]
    sa, _ = tensorboard_scalars(ref / "tb")
    sb, dup = tensorboard_scalars(run / "tb")
    diffs += [f"TensorBoard tag {t}: a step shown twice" for t in dup]
    if sa != sb:
        diffs.append(f"TensorBoard scalars: {len(set(sa) ^ set(sb))} (tag, step) differ in presence, "
                     f"{sum(sa[k] != sb[k] for k in set(sa) & set(sb))} in value")
    left = [p.name for p in (run / "checkpoints").iterdir() if p.suffix in (".tmp", ".trash")]
    diffs += [f"left over: checkpoints/{n}" for n in left]
    return diffs
