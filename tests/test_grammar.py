import json
import random
from collections import Counter

from dgpo.toy import grammar


def test_every_category_reachable_with_grammar_sizes():
    allp = grammar.all_prompts()
    assert set(allp) == set(grammar.CATEGORIES)
    assert len(grammar.SHAPES) >= 3 and len(grammar.COLORS) >= 6 and len(grammar.RELATIONS) == 4
    assert max(o["count"] for m in allp["counting"] for o in m["include"]) == 4
    rels = {m["include"][1]["position"][0] for m in allp["position"]}
    assert rels == set(grammar.RELATIONS)
    pool = grammar.pretrain_pool()
    rng = random.Random(0)
    seen = Counter(grammar.sample_pretrain(rng, pool)["tag"] for _ in range(600))
    assert set(seen) == set(grammar.CATEGORIES)


def test_splits_deterministic_disjoint_and_test_probes_unseen_bindings():
    test, train = grammar.split("test"), grammar.split("train")
    assert test == grammar.split("test") and len(test) >= 300
    assert {m["tag"] for m in test} == set(grammar.CATEGORIES)
    assert not {m["prompt"] for m in test} & {m["prompt"] for m in train}
    held = [m for m in test if grammar.has_heldout(m)]
    assert len(held) >= 20 and {m["tag"] for m in held} >= {"colors", "color_attr"}
    pretrain_bindings = set().union(*(grammar.bindings(m) for m in grammar.pretrain_pool()))
    assert not pretrain_bindings & grammar.HELDOUT_BINDINGS
    assert not any(grammar.has_heldout(m) for m in train)


def test_metadata_matches_geneval_format_and_round_trips(tmp_path):
    rows = grammar.split("test")
    for m in rows:
        assert set(m) <= {"tag", "include", "exclude", "prompt"}
        for o in m["include"]:
            assert set(o) <= {"class", "count", "color", "position"}
    path = tmp_path / "t.jsonl"
    grammar.write_jsonl(rows, path)
    assert grammar.read_jsonl(path) == rows
    assert json.loads(path.read_text().splitlines()[0]) == rows[0]


def test_position_metadata_uses_geneval_order():
    m = grammar.position("circle", "left of", "square")
    assert m["prompt"] == "a photo of a circle left of a square"
    assert m["include"] == [{"class": "square", "count": 1},
                            {"class": "circle", "count": 1, "position": ["left of", 0]}]


def test_bad_jsonl_names_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "include": []}\n{oops\n')
    import pytest

    with pytest.raises(ValueError, match="bad.jsonl:2"):
        grammar.read_jsonl(p)
