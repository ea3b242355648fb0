"""GenEval's shipped prompt sets and the training-prompt generator."""

import json
from collections import Counter
from pathlib import Path

import pytest

from dgpo.data import geneval
from dgpo.data.geneval import generate
from dgpo.data.prompts import load_prompts
from dgpo.rewards.geneval.rules import score_image

TAG_COUNTS = {"position": 100, "color_attr": 100, "two_object": 99, "colors": 94, "single_object": 80,
              "counting": 80}


def test_shipped_official_prompts_and_names():
    rows = load_prompts("geneval:test")
    assert len(rows) == 553 and Counter(r["tag"] for r in rows) == TAG_COUNTS
    names = geneval.object_names()
    assert len(names) == 80 and names[:3] == ["person", "bicycle", "car"]
    assert {"computer mouse", "tv remote", "computer keyboard"} <= set(names)
    assert "MIT License" in (geneval.DATA_DIR / "LICENSE").read_text()
    assert rows[0] == {"tag": "single_object", "include": [{"class": "bench", "count": 1}],
                       "prompt": "a photo of a bench"}


def _rebuild(row: dict) -> dict:
    """The same row from our generator's templates, given only what it asks for."""
    inc = row["include"]
    tag = row["tag"]
    if tag == "single_object":
        return generate.single_object(inc[0]["class"])
    if tag == "two_object":
        return generate.two_object(inc[0]["class"], inc[1]["class"])
    if tag == "counting":
        return generate.counting(inc[0]["class"], inc[0]["count"])
    if tag == "colors":
        return generate.colors(inc[0]["class"], inc[0]["color"])
    if tag == "position":
        return generate.position(inc[1]["class"], inc[1]["position"][0], inc[0]["class"])
    return generate.color_attr(inc[0]["class"], inc[0]["color"], inc[1]["class"], inc[1]["color"])


def test_templates_reproduce_every_official_row():
    """Our six families write GenEval's rows byte for byte (articles, plurals, key order, metadata)."""
    for line in (geneval.DATA_DIR / "evaluation_metadata.jsonl").read_text().splitlines():
        assert json.dumps(_rebuild(json.loads(line))) == line


def test_each_family_spans_geneval_combinations():
    names = geneval.object_names()
    sizes = {t: generate.space(t, names)[0] for t in generate.TAGS}
    assert sizes == {"single_object": 80, "two_object": 80 * 79, "counting": 240, "colors": 790,
                     "position": 80 * 79 * 4, "color_attr": 79 * 78 * 90}
    size, make = generate.space("color_attr", names)
    rows = [make(i) for i in range(0, size, 997)]
    assert all(r["include"][0]["class"] != "person" and r["include"][0]["color"] != r["include"][1]["color"]
               for r in rows)
    size, make = generate.space("two_object", names)
    assert len({make(i)["prompt"] for i in range(size)}) == size  # every ordered pair once


def test_shipped_train_prompts_are_the_generators_output_and_disjoint_from_test():
    train = load_prompts("geneval:train")
    assert train == geneval.make_train_prompts()  # the file is reproducible from its seed
    test = load_prompts("geneval:test")
    test_keys = {generate.key(r) for r in test}
    assert not {generate.key(r) for r in train} & test_keys
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    # "A and B" is the test's "B and A", "A left of B" its "B right of A": both count as seen
    pos = next(r for r in test if r["tag"] == "position")
    (b, a), rel = [c["class"] for c in pos["include"]], pos["include"][1]["position"][0]
    assert generate.key(generate.position(b, generate.INVERSE[rel], a)) in test_keys
    two = next(r for r in test if r["tag"] == "two_object")
    swapped = generate.two_object(two["include"][1]["class"], two["include"][0]["class"])
    assert generate.key(swapped) in test_keys
    # Flow-GRPO's mix 7:5:3:1:1:0 of 5,000; counting has only 160 fresh prompts, so they repeat
    assert Counter(r["tag"] for r in train) == {"position": 2059, "counting": 1471, "color_attr": 882,
                                                "colors": 294, "two_object": 294}
    assert len({r["prompt"] for r in train if r["tag"] == "counting"}) == 240 - 80
    unique = {r["prompt"] for r in train if r["tag"] != "counting"}
    assert len(unique) == 5000 - 1471
    for r in train[:200]:  # valid metadata for the rule engine
        score_image([], r)


def test_generator_is_deterministic_under_its_seed():
    names, test = geneval.object_names(), geneval.official_prompts()
    a = generate.train_prompts(names, test, seed=7, size=300)
    assert a == generate.train_prompts(names, test, seed=7, size=300)
    assert a != generate.train_prompts(names, test, seed=8, size=300)
    assert len(a) == 300


def test_generator_bad_mix_is_named():
    names, test = geneval.object_names(), geneval.official_prompts()
    with pytest.raises(ValueError, match="single_object prompt is left"):
        generate.train_prompts(names, test, size=10, ratio={"single_object": 1})
    with pytest.raises(ValueError, match="bad prompt mix"):
        generate.train_prompts(names, test, size=10, ratio={"shapes": 1})
    with pytest.raises(ValueError, match="unknown GenEval split"):
        load_prompts("geneval:val")


def test_cli_regenerates_the_shipped_file(tmp_path: Path, capsys):
    from dgpo.cli import main

    out = tmp_path / "train.jsonl"
    assert main(["geneval", "prompts", "--out", str(out)]) == 0
    assert out.read_text() == (geneval.DATA_DIR / "train_metadata.jsonl").read_text()
    assert main(["geneval", "prompts", "--out", str(out), "--seed", "3", "--size", "50"]) == 0
    assert len(out.read_text().splitlines()) == 50 and "wrote 50" in capsys.readouterr().out


def test_geneval_recipe_is_the_official_config():
    """configs/sd35m_geneval.yaml against DGPO's config/dgpo.py geneval_sd3_4gpu (@01ceb4b)."""
    from dgpo.config import load_config

    c = load_config(Path(__file__).resolve().parents[1] / "configs" / "sd35m_geneval.yaml")
    assert (c.model.kind, c.model.resolution, c.model.max_sequence_length) == ("sd3", 512, 128)
    assert (c.sampler.method, c.sampler.steps, c.sampler.shift, c.sampler.cfg_scale) == ("dpm", 10, 3.0, 4.5)
    assert (c.dgpo.beta_dpo, c.dgpo.kl_beta, c.dgpo.clip_range, c.timesteps.trunc_steps) == (100, 0.02, 0.01, 4)
    assert (c.dgpo.switch_ema_ref, c.advantages.std, c.timesteps.count) == (500, "group", 4)
    assert (c.train.prompts_per_epoch, c.train.group_size, c.train.lr, c.train.lora_rank) == (8, 16, 3e-4, 64)
    assert c.reward.name == "geneval" and not c.train.balance_categories
    assert (c.eval.images_per_prompt, c.eval.steps) == (4, 14)
    assert len(load_prompts(c.train.prompts)) == 5000 and len(load_prompts(c.eval.split)) == 553
