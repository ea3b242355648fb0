import json

from dgpo.cli import main


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
