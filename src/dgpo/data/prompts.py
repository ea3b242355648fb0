"""Prompt sources: the toy grammar's splits, GenEval's shipped prompt sets, GenEval-format JSONL
files, or plain text files."""

from __future__ import annotations

import random
from pathlib import Path

from dgpo.errors import InputError, MissingPathError, short, user_path
from dgpo.toy import grammar

SHIPPED_TEST_SETS = ("ocr", "pickscore", "drawbench")  # data/eval_prompts/<name>/test.txt (Flow-GRPO's, DrawBench)
NAMED = ("named sets: toy:train / toy:test / toy_video:train / toy_video:test / toy_edit:train / toy_edit:test / "
         "geneval:train / geneval:test; for evaluation: ocr:test / pickscore:test / drawbench:test")


def load_prompts(spec: str) -> list[dict]:
    """``toy:train`` / ``toy:test``, ``toy_video:train`` / ``toy_video:test`` (the toy video world's
    motion prompts), ``toy_edit:train`` / ``toy_edit:test`` (the toy editing world's instructions and
    scenes), ``geneval:train`` / ``geneval:test`` (GenEval's 553 prompts and
    the shipped training prompts), ``ocr:test`` / ``pickscore:test`` / ``drawbench:test`` (the shipped
    evaluation sets), a GenEval-format ``.jsonl`` (metadata per prompt, checked as the GenEval rules
    read it), an edit prompt file (a ``.jsonl`` whose rows name source images: ``dgpo.data.edits``) or a
    ``.txt`` with one prompt per line (metadata = {"prompt": ...}, for rewards that need no metadata)."""
    if spec.startswith("toy:"):
        return grammar.split(spec[4:])
    if spec.startswith("toy_video:"):  # the toy video world's motion prompts (dgpo.toy.video_grammar)
        from dgpo.toy import video_grammar

        return video_grammar.split(spec[10:])
    if spec.startswith("toy_edit:"):  # the toy editing world's instructions with their scenes (dgpo.toy.edit_grammar)
        from dgpo.toy import edit_grammar

        return edit_grammar.split(spec[9:])
    if spec.startswith("geneval:"):
        from dgpo.data.geneval import load_split

        return load_split(spec[8:])
    name, _, split = spec.partition(":")
    if name in SHIPPED_TEST_SETS and not Path(spec).is_file():  # a file of that name wins
        if split != "test":
            raise InputError(f"prompt set {spec!r}: only {name}:test ships with dgpo (the training prompts of "
                             f"Flow-GRPO's dataset/{name}/train.txt are a file to point at)")
        return load_prompts(str(Path(__file__).parent / "eval_prompts" / name / "test.txt"))
    path = user_path(spec, "prompt file")
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise MissingPathError(f"prompt file {spec!r} {what} ({NAMED})")
    if path.suffix == ".jsonl":
        from dgpo.data.edits import is_edit_file, read_edits

        if is_edit_file(path):  # rows with source images (dgpo.data.edits)
            return read_edits(path)
        return grammar.read_jsonl(path, check=check_row)
    if path.suffix != ".txt":
        raise InputError(f"prompt file {spec!r}: name it .jsonl (GenEval metadata, one JSON object per line) "
                         "or .txt (one prompt per line)")
    lines = grammar.read_utf8(path).splitlines()
    rows = [{"prompt": line.strip(), "include": []} for line in lines if line.strip()]
    if not rows:
        raise InputError(f"prompt file {spec!r} has no prompts; write one prompt per line")
    return rows


def check_row(row: dict) -> None:
    """A GenEval metadata row as every consumer reads it: a non-empty ``prompt`` string, an optional
    ``tag`` string, and ``include`` / ``exclude`` clauses as GenEval's rules take them."""
    from dgpo.rewards.geneval.rules import check_meta

    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"'prompt' must be a non-empty string, got {short(prompt)}")
    if "tag" in row and not isinstance(row["tag"], str):
        raise InputError(f"'tag' must be a string (GenEval's category), got {short(row['tag'])}")
    check_meta(row)


def epoch_prompts(prompts: list[dict], n: int, seed: int, epoch: int, balance: bool = False) -> list[dict]:
    """The ``n`` prompts of an epoch: a deterministic function of (seed, epoch).

    ``balance``: first a category (``tag``) uniformly, then a prompt within it, so that a category
    with many prompts (toy position: 80 % of the train split) does not crowd out the others.
    """
    rng = random.Random(f"{seed}/{epoch}/prompts")
    if balance:
        by_tag = grammar.by_category(prompts)
        tags = sorted(by_tag)
        return [rng.choice(by_tag[tags[(epoch * n + i) % len(tags)]]) for i in range(n)]
    if n <= len(prompts):
        return rng.sample(prompts, n)
    return [rng.choice(prompts) for _ in range(n)]
