"""Optional parts: pyproject's extras, one clear "pip install 'dgpo[extra]'" error each, --version."""

import sys
import tomllib
from pathlib import Path

import pytest

import dgpo
from dgpo.cli import main
from dgpo.extras import EXTRAS, require

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_extras_and_version():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = meta["project"]["optional-dependencies"]
    assert set(extras) == {"dev", "ocr", "geneval", "hps", "server", "wandb", "fp8", "video"}
    assert set(EXTRAS) <= set(extras) and all(extras[e] for e in EXTRAS)  # a guarded part has packages
    assert meta["project"]["license"] == "Apache-2.0" and "Apache License" in (ROOT / "LICENSE").read_text()
    notice = (ROOT / "NOTICE").read_text()
    for path in ["data/geneval/LICENSE", "data/eval_prompts/LICENSE", "drawbench/test.txt", "toy/base/"]:
        assert path in notice, path


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_a_missing_module_names_the_extra(extra, monkeypatch):
    monkeypatch.setitem(sys.modules, EXTRAS[extra][0], None)  # as if its package were not installed
    with pytest.raises(ImportError, match=rf"the part needs the '{EXTRAS[extra][0]}' module .*"
                                          rf"pip install 'dgpo\[{extra}\]'"):
        require(extra, "the part")


def test_ocr_reward_and_cli_errors_name_the_extra(monkeypatch, capsys, tmp_path):
    from dgpo.rewards import build_reward

    monkeypatch.setitem(sys.modules, "rapidocr", None)
    with pytest.raises(ImportError, match=r"the ocr reward needs the 'rapidocr' module.*dgpo\[ocr\]"):
        build_reward("ocr")
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(["train", "run.log_with=wandb", f"run.out_dir={tmp_path / 'run'}"]) == 2
    assert "dgpo train: error: run.log_with=wandb" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"dgpo {dgpo.__version__}"
