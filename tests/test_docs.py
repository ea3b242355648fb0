"""The README stays a short front page whose links resolve, and the docs site (mkdocs.yml, docs/) builds
with `mkdocs build --strict`: no broken link, anchor or image, no page left out of the nav."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 250

# [text](target) and ![alt](target); a target ends at whitespace or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _outside_code(markdown: str) -> str:
    """The markdown without fenced code blocks and inline code spans (their brackets are not links)."""
    text = re.sub(r"^(```|~~~).*?^\1", "", markdown, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's (and mkdocs' toc) anchor of a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_\[\]()]", "", heading).strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def _anchors(markdown: str) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", _outside_code(markdown), flags=re.M)}


def test_readme_is_a_short_front_page():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move the detail into docs/"


def test_every_relative_link_in_the_readme_resolves():
    text = README.read_text(encoding="utf-8")
    anchors = _anchors(text)
    targets = LINK.findall(_outside_code(text))
    assert targets, "no links found in README.md"
    broken = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        if not path:
            if anchor not in anchors:
                broken.append(f"{target} (no such heading in README.md)")
        elif not (ROOT / path).exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.endswith(".md") and anchor not in _anchors((ROOT / path).read_text(encoding="utf-8")):
            broken.append(f"{target} (no such heading in {path})")
    assert not broken, "README.md links that do not resolve:\n" + "\n".join(broken)


@pytest.mark.slow
def test_mkdocs_site_builds_strict(tmp_path):
    missing = [m for m in ("mkdocs", "material") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: pip install '.[dev]' (mkdocs, mkdocs-material)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                          str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, "mkdocs build --strict failed:\n" + log[-6000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "options" / "index.html").is_file()
