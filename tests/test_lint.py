"""The code stays clean under the project's linter: `ruff check src tests benchmarks` with the rules of
pyproject.toml's [tool.ruff.lint] (pinned in the dev extra and in `make test`'s install line)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str] | None:
    """The ruff of this interpreter's environment, else one on PATH (None: not installed)."""
    beside = Path(sys.executable).with_name("ruff")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("ruff")
    return [found] if found else None


def test_ruff_finds_nothing():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install '.[dev]', or `make test` installs the pinned version)")
    proc = subprocess.run([*ruff, "check", "--no-cache", "--output-format", "concise", "src", "tests", "benchmarks"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    findings = [line for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode == 0, ("`ruff check src tests benchmarks` reports (fix them; `ruff check --fix` applies "
                                  "the safe fixes):\n" + "\n".join(findings) + proc.stderr)
