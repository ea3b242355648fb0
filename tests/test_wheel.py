"""The built wheel, installed into a fresh virtual environment, trains the toy: package data (toy
base, configs, prompt sets, LICENSE/NOTICE) and the `dgpo` entry point come from the wheel alone."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # make test-all (CI); not in the fast tier

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_wheel_installs_into_a_fresh_venv_and_trains_the_toy(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools here")
    src = tmp_path / "project"  # build from a copy: the build leaves build/ and egg-info behind
    src.mkdir()
    for name in ["pyproject.toml", "README.md", "LICENSE", "NOTICE"]:
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
          str(tmp_path / "dist"), str(src)], env=env)
    (wheel,) = (tmp_path / "dist").glob("dgpo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ["dgpo/toy/base/model.safetensors", "dgpo/toy/base/config.json", "dgpo/configs/toy_demo.yaml",
              "dgpo/toy/video_base/model.safetensors", "dgpo/toy/edit_base/model.safetensors",
              "dgpo/toy/edit_base/config.json",
              "dgpo/data/geneval/evaluation_metadata.jsonl", "dgpo/data/geneval/LICENSE",
              "dgpo/data/eval_prompts/ocr/test.txt", "dgpo/data/eval_prompts/LICENSE"]:
        assert f in names, f
    assert {n.rsplit("/", 1)[-1] for n in names if "/licenses/" in n} == {"LICENSE", "NOTICE"}

    # a fresh venv; the heavy dependencies (torch, diffusers, ...) come from this environment's
    # site-packages through a .pth, so nothing is downloaded; dgpo itself only from the wheel
    vdir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(vdir)
    py = vdir / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([str(py), "-c", purelib]).stdout.strip())
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(py), "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", str(wheel)], env=env)

    run = tmp_path / "work"
    run.mkdir()  # not the repository: `import dgpo` must find the installed copy
    where = _run([str(py), "-c", "import dgpo; print(dgpo.__file__)"], env=env, cwd=run).stdout.strip()
    assert Path(where).is_relative_to(site), where
    version = _run([str(vdir / "bin" / "dgpo"), "--version"], env=env, cwd=run).stdout.strip()
    assert version == "dgpo 0.1.0"
    _run([str(vdir / "bin" / "dgpo"), "train", "run.out_dir=out", "run.epochs=1", "train.prompts_per_epoch=2",
          "train.group_size=4", "train.batch_size=8", "sampler.steps=3", "timesteps.trunc_steps=2",
          "timesteps.count=2", "eval.max_prompts=4", "eval.min_per_category=0"], env=env, cwd=run)
    out = run / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and 0.0 <= summary["eval_after"]["overall"] <= 1.0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert (out / "samples" / "compare.png").is_file() and list((out / "tb").glob("events.out.tfevents.*"))
