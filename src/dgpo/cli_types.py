"""Command-line building blocks: a parser whose errors are one line, bounded number types, --debug."""

from __future__ import annotations

import argparse
import math
import sys

from dgpo.errors import one_line

SEED_MAX = 2**32 - 1


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (what is wrong, where the help is) and exit 2."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")
        sys.exit(2)


def integer(lo: int, hi: int = 2**63 - 1):
    """An argparse type: an integer in [lo, hi] (a bad one is a one-line usage error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range [{lo}, {hi}]")
        return value
    return parse


def number(lo: float, hi: float = math.inf, above: bool = False):
    """An argparse type: a finite number in [lo, hi] (``above``: strictly greater than lo)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
        if not math.isfinite(value) or value < lo or value > hi or (above and value == lo):
            raise argparse.ArgumentTypeError(f"{text[:40]!r} must be a finite number {'>' if above else '>='} {lo}"
                                             + (f" and <= {hi}" if hi < math.inf else ""))
        return value
    return parse


def channel_list(text: str) -> tuple[int, int, int]:
    """An argparse type: three UNet widths, multiples of 8 in [8, 4096], e.g. ``16,32,64``."""
    parts = text.split(",")
    try:
        widths = tuple(int(p) for p in parts)
    except ValueError:
        widths = ()
    if len(widths) != 3 or any(not 8 <= w <= 4096 or w % 8 for w in widths):
        raise argparse.ArgumentTypeError("expected three multiples of 8 in [8, 4096] such as 16,32,64, got "
                                         f"{text[:40]!r}")
    return widths


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_file(text: str) -> str:
    """An argparse type: where to write an image, checked before any work is done. An existing folder
    means ``FOLDER/samples.png``; otherwise the name must end in an image suffix PIL writes."""
    from pathlib import Path

    path = Path(text)
    if path.is_dir():
        return str(path / "samples.png")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not an image file name: end it in "
                                         f"{', '.join(IMAGE_SUFFIXES)}, or give an existing folder")
    return text


def debug_flag(p: argparse.ArgumentParser, default=argparse.SUPPRESS) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the Python traceback of an input error too")


def leaf_parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``p`` and every sub-command's parser under it."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return [p, *(q for a in subs for child in dict.fromkeys(a.choices.values()) for q in leaf_parsers(child))]
