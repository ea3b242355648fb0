"""GenEval's prompt sets, shipped with the package.

* ``evaluation_metadata.jsonl``: GenEval's 553 evaluation prompts with their metadata, and
  ``object_names.txt``: its 80 object names (COCO's classes, COCO order). Both copied unchanged from
  github.com/djghosh13/geneval @ af4902f (``prompts/``), MIT License, Copyright (c) 2023 Dhruba Ghosh:
  see ``LICENSE`` beside them.
* ``train_metadata.jsonl``: GenEval-style training prompts made by :mod:`.generate`
  (seed ``DEFAULT_SEED``, ``DEFAULT_SIZE`` rows), disjoint from the evaluation prompts; regenerate
  with ``dgpo geneval prompts``.

Prompt specs for configs and the CLI: ``geneval:test`` (the 553) and ``geneval:train``.
"""

from __future__ import annotations

from pathlib import Path

from dgpo.data.geneval.generate import DEFAULT_SEED, DEFAULT_SIZE, train_prompts, write_jsonl
from dgpo.errors import InputError

DATA_DIR = Path(__file__).resolve().parent
TEST_FILE = DATA_DIR / "evaluation_metadata.jsonl"
TRAIN_FILE = DATA_DIR / "train_metadata.jsonl"
NAMES_FILE = DATA_DIR / "object_names.txt"
SPLITS = {"test": TEST_FILE, "train": TRAIN_FILE}


def object_names() -> list[str]:
    """GenEval's 80 class names (COCO order, with "computer mouse", "tv remote", "computer keyboard")."""
    return [line.strip() for line in NAMES_FILE.read_text().splitlines() if line.strip()]


def load_split(name: str) -> list[dict]:
    """``test``: the 553 official prompts; ``train``: the shipped training prompts."""
    from dgpo.toy.grammar import read_jsonl

    if name not in SPLITS:
        raise InputError(f"unknown GenEval split {name!r}; allowed: {sorted(SPLITS)}")
    return read_jsonl(SPLITS[name])


def official_prompts() -> list[dict]:
    return load_split("test")


def make_train_prompts(seed: int = DEFAULT_SEED, size: int = DEFAULT_SIZE) -> list[dict]:
    """The training prompts for (seed, size); the defaults rebuild the shipped file."""
    return train_prompts(object_names(), official_prompts(), seed, size)


__all__ = ["DATA_DIR", "DEFAULT_SEED", "DEFAULT_SIZE", "SPLITS", "load_split", "make_train_prompts",
           "object_names", "official_prompts", "write_jsonl"]
