import json
import re

import pytest

from dgpo.cli import main


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """Tiny offline Wan pipelines: Wan2.1 and TI2V-5B (16x VAE: sides multiples of 32)."""
    from tiny_diffusers import build_wan

    root = tmp_path_factory.mktemp("wan")
    return {v: build_wan(root / v, v) for v in ("2.1", "ti2v")}


def test_eval_oracle_proves_the_scorer(tmp_path, capsys):
    split = tmp_path / "p.jsonl"
    assert main(["toy", "prompts", "test", "--out", str(split)]) == 0
    rows = split.read_text().splitlines()[::8]
    split.write_text("\n".join(rows) + "\n")
    assert main(["eval", "--model", "oracle", "--split", str(split), "--out", str(tmp_path / "ev"),
                 "--min-per-category", "0"]) == 0
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert res["overall"] >= 0.99 and len(res["rows"]) == len(rows)
    assert "| oracle (renderer) |" in (tmp_path / "ev" / "eval.md").read_text()


def test_sample_and_eval_on_a_model(tiny_toy, tmp_path):
    out = tmp_path / "g.png"
    assert main(["sample", "a photo of a red circle", "--model", str(tiny_toy), "--n", "2",
                 "--steps", "2", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["sample", "a photo of a red circle", "--model", str(tiny_toy), "--n", "1", "--steps", "1",
                 "--out", str(tmp_path)]) == 0  # an existing folder: FOLDER/samples.png
    assert (tmp_path / "samples.png").stat().st_size > 0
    bad = main(["eval", "--model", str(tmp_path / "missing")])
    assert bad == 2


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.rstrip("\n").splitlines()
    assert err[-1].startswith("dgpo sample: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_dgpo_sample_makes_videos_at_the_frame_count_and_size_it_is_asked_for(wan, tmp_path, capsys):
    """--frames / --height / --width reach the Wan pipeline: 5 frames of 16 x 32 (the folder's defaults are 81
    frames of 480 x 832); --resolution alone makes square frames, as model.resolution does."""
    from dgpo.video_io import read_video

    out = tmp_path / "s.png"
    assert main(["sample", "a red cube", "--model", str(wan["2.1"]), "--kind", "wan", "--frames", "5", "--height",
                 "16", "--width", "32", "--steps", "1", "--n", "1", "--out", str(out)]) == 0
    assert "1 videos of 5 frames" in capsys.readouterr().out
    (gif,) = (tmp_path / "s").glob("*.gif")
    assert read_video(gif).shape == (5, 3, 16, 32)
    assert main(["sample", "a red cube", "--model", str(wan["2.1"]), "--frames", "1", "--resolution", "16",
                 "--steps", "1", "--n", "1", "--out", str(tmp_path / "q.png")]) == 0
    (gif,) = (tmp_path / "q").glob("*.gif")
    assert read_video(gif).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("flags, match", [
    (["--frames", "8"], r"--frames=8: Wan's VAE compresses time 4x .* \(e\.g\. 5 or 9\)"),
    (["--height", "20"], r"--height=20: Wan frame sides are multiples of 16"),
    (["--width", "100"], r"--width=100: Wan frame sides are multiples of 16"),
    (["--height", "32", "--resolution", "32"], r"--height and --resolution both set the height"),
])
def test_dgpo_sample_refuses_sizes_wan_cannot_make_before_loading(flags, match, capsys, tmp_path):
    """Wan's rules (config/rules.py) on the flags, before any model loads: the folder does not exist."""
    line = _cli_error(capsys, ["sample", "x", "--model", str(tmp_path / "not_loaded"), *flags])
    assert re.search(match, line), line


def test_dgpo_sample_checks_sizes_against_the_loaded_pipeline_and_refuses_video_flags_elsewhere(wan, tiny_toy,
                                                                                             capsys, tmp_path):
    """TI2V-5B's 16x VAE needs sides that are multiples of 32 (48 passes the generic rule of 16); an image
    model takes no video flags; a toy model's size is its checkpoint's."""
    out = ["--steps", "1", "--n", "1", "--out", str(tmp_path / "s.png")]
    line = _cli_error(capsys, ["sample", "x", "--model", str(wan["ti2v"]), "--width", "48", *out])
    assert "--width=48: Wan frame sides are multiples of 32 (the VAE's 16x" in line
    line = _cli_error(capsys, ["sample", "x", "--model", str(tiny_toy), "--frames", "9", "--width", "32", *out])
    assert "--frames, --width: only video models read them; this model makes images" in line
    line = _cli_error(capsys, ["sample", "x", "--model", str(tiny_toy), "--resolution", "64", *out])
    assert "--resolution: this toy model's size is fixed by its checkpoint" in line

