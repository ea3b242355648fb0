"""Fuzz targets for text inputs: YAML config files and ``key=value`` overrides (through ``dgpo config
show``, the CLI's own error path), prompt files, and the reward server's requests (in-process and over
HTTP). A target is ``setup(folder) -> state``, ``strategy(state)`` and ``run(state, case)``, which
returns "ok", ("error", kind) for a clear error it checked itself, or raises (UserError: a clear error;
anything else: a crash)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import typing
from pathlib import Path
from types import SimpleNamespace

import yaml
from hypothesis import strategies as st

from benchmarks.fuzz.strategies import (
    MARKER_NAME,
    deep,
    json_mutation,
    json_text,
    json_values,
    mutate_json,
    raw_json_lines,
    yaml_payloads,
)
from benchmarks.fuzz.strategies import scalars as scalar_values


def _marker_check(state) -> None:
    if state.marker.exists():
        state.marker.unlink()
        raise AssertionError("a payload ran: the marker file was created")


# ============================================================================ config files and overrides
def _options() -> dict[str, list[str]]:
    from dgpo.config import Config

    return {s.name: [f.name for f in dataclasses.fields(typing.get_type_hints(Config)[s.name])]
            for s in dataclasses.fields(Config)}


def _literals() -> list[str]:
    return ["dpm", "euler", "toy", "sd3", "flux", "sana", "qwenimage", "fp32", "bf16", "dgpo", "flow_grpo", "dpo",
            "grid", "uniform", "toy_geneval", "remote", "per_step", "weighted_sum", "tensorboard", "none", "no", "yes"]


def _yaml_snippets(marker: str) -> list[str]:
    return [*yaml_payloads(marker), deep(100), deep(5_000), "{a: " * 2000 + "1" + "}" * 2000, "&a [*a]",
            "&a {x: *a}", "*undefined", "1" * 5000, "1e99999", "0x" + "f" * 5000, "0b101", "0o17", "1_000",
            ".nan", "-.inf", "~", "'unterminated", '"\\ud800"', '"\\x00"', "? [a, b]\n: 1", "[1, 2, 3]",
            "{lr: 1, lr: 2}", "|\n  block", ">-\n  folded", "\t1", "2001-12-14", "yes", "on", "!!"]


def _config_strategy(state):
    opts = state.options
    value = st.one_of(scalar_values, json_values, st.sampled_from(_literals()), st.sampled_from(state.snippet_values))
    keys = st.one_of(st.sampled_from(sorted({k for v in opts.values() for k in v})), st.text(max_size=8))
    section = st.dictionaries(keys, value, max_size=6)
    doc = st.dictionaries(st.one_of(st.sampled_from(list(opts)), st.text(max_size=8), st.integers()),
                          st.one_of(section, value), max_size=5)
    structured = st.tuples(st.just("doc"), doc, st.booleans())
    snippet = st.tuples(st.just("snippet"), st.sampled_from(list(opts)),
                        st.sampled_from(sorted(opts["train"] + opts["run"])), st.sampled_from(state.snippets))
    laughs = st.tuples(st.just("laughs"), st.sampled_from(["train: {lr: LAUGHS}", "reward: {weights: LAUGHS}",
                                                          "reward: {name: LAUGHS}", "run: LAUGHS"]))
    raw = st.tuples(st.just("bytes"), st.one_of(st.binary(max_size=400), st.sampled_from(
        [b"\xff\xfe" + "run: {}".encode("utf-16-le"), b"\xef\xbb\xbfrun: {seed: 1}", b"run:\n  out_dir: caf\xe9\n",
         b"---\nrun: {}\n---\ntrain: {}\n", b"%YAML 1.1\n---\nrun: {}", b"run: {seed: 1}\x00"])))
    overrides = st.one_of(st.just([]), st.lists(_override(state), max_size=2))
    return st.tuples(st.one_of(structured, structured, snippet, laughs, raw), overrides)


def _render_config(case, state) -> bytes:
    kind = case[0]
    if kind == "doc":
        try:
            return yaml.safe_dump(case[1], allow_unicode=case[2]).encode("utf-8", "surrogatepass")
        except (yaml.YAMLError, ValueError):
            return repr(case[1]).encode("utf-8", "surrogatepass")
    if kind == "snippet":
        return f"{case[1]}:\n  {case[2]}: {case[3]}\n".encode("utf-8", "surrogatepass")
    if kind == "laughs":  # a billion laughs: 3**24 leaves through aliases, if anything walked or printed them all
        return (case[1].replace("LAUGHS", state.laughs) + "\n").encode()
    return case[1]


def _override(state):
    key = st.one_of(st.sampled_from(state.keys), st.sampled_from(state.keys).map(lambda k: k + ".x"),
                    st.sampled_from(["", ".", "train.", ".lr", "train..lr", " train.lr ", "TRAIN.LR", "run.seed.x.y",
                                     "é.ü", "train.lr\x00", "\udcff"]), st.text(max_size=12))
    val = st.one_of(scalar_values.map(str), json_values.map(json_text), st.sampled_from(_literals()),
                    st.sampled_from(state.snippet_values), st.text(max_size=30),
                    st.sampled_from(["9" * 5000, "1e400", "-1", "0", "[]", "{}", "[1, 2", "nan", "\udcff\udcfe",
                                     "a\x00b", "'", '"', "=", "true", "Null"]))
    return st.one_of(st.tuples(key, val).map(lambda kv: f"{kv[0]}={kv[1]}"),
                     st.sampled_from(["train", "-h", "--version", "--debug", "--bogus", "-", "--", "a b"]))


def _setup_config(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    opts = _options()
    marker = folder / MARKER_NAME
    snippets = _yaml_snippets(str(marker))
    laughs = "[&l0 [x], " + ", ".join(f"&l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}]" for i in range(1, 25)) + "]"
    return SimpleNamespace(folder=folder, options=opts, keys=[f"{s}.{k}" for s, ks in opts.items() for k in ks],
                           snippets=snippets, snippet_values=[s for s in snippets if "\n" not in s], laughs=laughs,
                           marker=marker)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """``dgpo ARGV`` in this process: (exit status, stdout, stderr). Non-user exceptions propagate."""
    from dgpo.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse: --help, --version, a bad command line
            rc = e.code if isinstance(e.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def _check_cli(rc: int, out: str, err: str, cmd: str, argv: list[str]):
    """Exit 0, or exit 2 with exactly one line on stderr that starts with the command's name."""
    lines = err.splitlines()
    if rc == 0:
        return "ok"
    debug = "--debug" in argv and len(lines) > 1 and lines[0].startswith("Traceback")  # --debug: the traceback too
    if rc == 2 and (len(lines) == 1 or debug) and lines[-1].startswith(("dgpo: error:", f"dgpo {cmd}: error:")):
        return "error", "exit 2: " + lines[-1].split("error:", 1)[-1].strip()[:80]
    raise AssertionError(f"exit status {rc} with stderr {err[-300:]!r}")


def _run_config(state, case) -> object:
    source, overrides = case
    path = state.folder / "config.yaml"
    path.write_bytes(_render_config(source, state))
    argv = ["config", "show", str(path), *overrides]
    try:
        rc, out, err = _cli(argv)
    finally:
        _marker_check(state)
    result = _check_cli(rc, out, err, "config", argv)
    if rc == 0 and _plain(overrides):
        _round_trip(state, out, path, overrides)
    return result


def _plain(args: list[str]) -> bool:
    return all("=" in a and not a.startswith("-") for a in args)


def _round_trip(state, shown: str, path, overrides: list[str]) -> None:
    """What ``config show`` printed loads back to the same config."""
    from dgpo.config import load_config

    again = state.folder / "shown.yaml"
    again.write_text(shown)
    assert load_config(again) == load_config(path, overrides), "config show does not round-trip"


def _override_strategy(state):
    return st.lists(_override(state), min_size=1, max_size=6)


def _run_overrides(state, overrides) -> object:
    argv = ["config", "show", *overrides]
    rc, out, err = _cli(argv)
    _marker_check(state)
    result = _check_cli(rc, out, err, "config", argv)
    if rc == 0 and _plain(overrides):
        _round_trip(state, out, None, overrides)
    return result


# ============================================================================ prompt files
def _setup_prompts(folder: Path):
    from dgpo.data.prompts import load_prompts

    folder.mkdir(parents=True, exist_ok=True)
    rows = load_prompts("toy:test")[::25] + load_prompts("geneval:test")[::40]
    return SimpleNamespace(folder=folder, rows=rows, n=0)


def _prompt_line(state):
    row = st.sampled_from(state.rows)
    return st.one_of(
        row.map(json.dumps), st.tuples(row, json_mutation).map(lambda rm: mutate_json(rm[0], rm[1])),
        json_values.map(json_text), raw_json_lines, st.text(max_size=60), st.just(""),
        st.tuples(st.sampled_from([10_000, 1_000_000]), st.sampled_from(["a", "é", "🙂", " "]))
        .map(lambda nc: json.dumps({"prompt": nc[1] * nc[0], "include": []})))


def _prompt_strategy(state):
    jsonl = st.tuples(st.just(".jsonl"), st.lists(_prompt_line(state), max_size=6), st.sampled_from(["\n", "\r\n"]))
    txt_line = st.one_of(st.text(max_size=80), st.sampled_from(["", " ", "\x00", "\x0c", "\u2028", "\udcff"]),
                         st.sampled_from([10_000, 2_000_000]).map(lambda n: "x" * n))
    txt = st.tuples(st.just(".txt"), st.lists(txt_line, max_size=8), st.sampled_from(["\n", "\r", "\r\n"]))
    encoding = st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"])
    content = st.tuples(st.one_of(jsonl, txt), encoding, st.sampled_from(["", ".jsonl", ".txt"]))
    binary = st.tuples(st.just("bytes"), st.binary(max_size=500), st.sampled_from([".jsonl", ".txt", ".json", ""]))
    spec = st.tuples(st.just("spec"), st.sampled_from(["toy:", "toy:val", "geneval:", "geneval:val", "", ".", "/",
                                                       "missing.jsonl", "dir.jsonl", "a\x00b.txt", "\udcff.txt"]))
    return st.one_of(content, content, content, binary, spec)


def _write_prompts(state, case) -> str:
    state.n += 1
    if case[0] == "spec":
        if case[1] == "dir.jsonl":
            (state.folder / "dir.jsonl").mkdir(exist_ok=True)
            return str(state.folder / "dir.jsonl")
        return case[1] if ":" in case[1] or case[1] in ("", ".", "/") else str(state.folder / case[1])
    if case[0] == "bytes":
        path = state.folder / f"p{state.n % 4}{case[2]}"
        path.write_bytes(case[1])
        return str(path)
    (suffix, lines, newline), encoding, rename = case
    path = state.folder / f"p{state.n % 4}{rename or suffix}"
    path.write_bytes(newline.join(lines).encode(encoding, "surrogatepass" if "utf" in encoding else "replace"))
    return str(path)


def _run_prompts(state, case) -> str:
    import torch

    from dgpo.data.prompts import epoch_prompts, load_prompts
    from dgpo.evaluation import per_category
    from dgpo.rewards.toy import ToyGenEvalReward
    from dgpo.toy.model import tokenize

    rows = load_prompts(_write_prompts(state, case))
    assert rows and all(isinstance(r, dict) and isinstance(r["prompt"], str) and r["prompt"] for r in rows)
    for balance in (False, True):
        epoch_prompts(rows, 3, 0, 0, balance)
    per_category(rows, 2)
    tokenize([r["prompt"] for r in rows[:4]], 16)
    some = rows[:3]
    images = torch.rand(len(some), 3, 32, 32)
    ToyGenEvalReward().eval_scores(images, some)  # the GenEval rules read every clause of the metadata
    return "ok"


TARGETS_TEXT = {
    "config_yaml": SimpleNamespace(name="config_yaml", setup=_setup_config, strategy=_config_strategy, run=_run_config),
    "overrides": SimpleNamespace(name="overrides", setup=_setup_config, strategy=_override_strategy,
                                 run=_run_overrides),
    "prompts": SimpleNamespace(name="prompts", setup=_setup_prompts, strategy=_prompt_strategy, run=_run_prompts),
}

