"""GenEval's rule engine on hand-built detections: every rule of the official evaluator
(djghosh13/geneval evaluation/evaluate_images.py, summary_scores.py) and both partial-credit
variants, with values computed by hand in the comments."""

import json
import random

import pytest

from dgpo.data.geneval import official_prompts
from dgpo.rewards.geneval.rules import Detection, relative_position, score_image, summarize

D = Detection


def _meta(tag, include, exclude=(), prompt="p"):
    return {"tag": tag, "include": list(include), "exclude": list(exclude), "prompt": prompt}


def _counting(cls, n):
    return _meta("counting", [{"class": cls, "count": n}], [{"class": cls, "count": n + 1}])


def _box(x, y, w=10, h=10):
    return (x, y, x + w, y + h)


SINGLE_DOG = _meta("single_object", [{"class": "dog", "count": 1}])


def _cat_left_of_dog():  # GenEval's layout: B (the cat) carries position [rel, 0] against include[0]
    return _meta("position", [{"class": "dog", "count": 1},
                              {"class": "cat", "count": 1, "position": ["left of", 0]}])


# --- filtering ---------------------------------------------------------------------------------

def test_score_threshold_is_strict_and_counting_uses_0_9():
    assert not score_image([D("dog", 0.3, _box(0, 0))], SINGLE_DOG).correct  # > 0.3, not >=
    assert score_image([D("dog", 0.3001, _box(0, 0))], SINGLE_DOG).correct
    two = _counting("dog", 2)
    assert not score_image([D("dog", 0.9, _box(0, 0)), D("dog", 0.95, _box(50, 0))], two).correct
    assert score_image([D("dog", 0.91, _box(0, 0)), D("dog", 0.95, _box(50, 0))], two).correct
    # below the counting threshold a third dog does not break "two dogs"
    assert score_image([D("dog", 0.91, _box(0, 0)), D("dog", 0.95, _box(50, 0)), D("dog", 0.8, _box(0, 50))],
                       two).correct
    # other classes and the thresholds are the caller's to change
    low = [D("dog", 0.25, _box(0, 0)), D("cat", 0.99, _box(0, 0))]
    assert score_image(low, SINGLE_DOG, threshold=0.2).correct


def test_overlapping_duplicates_all_count_no_nms():
    same = [D("dog", 0.95, _box(0, 0)), D("dog", 0.94, _box(0, 0))]
    assert score_image(same, _counting("dog", 2)).correct
    v = score_image([*same, D("dog", 0.93, _box(1, 1))], _counting("dog", 2))
    assert not v.correct and v.reason == "expected dog<3, found 3"


def test_at_most_16_per_class_and_the_official_reward_is_unbounded_below():
    dogs = [D("dog", 0.5 + i / 100, _box(i, i)) for i in range(20)]
    # 20 detections, 16 kept: an exclude clause at 17 holds, one at 16 fails
    meta = _meta("counting", [{"class": "dog", "count": 2}], [{"class": "dog", "count": 17}])
    assert score_image(dogs, {**meta, "tag": "x"}).correct
    meta["exclude"][0]["count"] = 16
    assert not score_image(dogs, {**meta, "tag": "x"}).correct
    # "a photo of a dog" with 16 kept dogs: correct; Flow-GRPO's count term 1 - |1 - 16| / 1 = -14
    v = score_image(dogs, SINGLE_DOG, partial="official")
    assert v.correct and v.reward == -14.0
    assert score_image(dogs, SINGLE_DOG).reward == 1.0  # corrected: extra dogs are allowed here


# --- include / exclude clauses -----------------------------------------------------------------

def test_two_object_include_clauses_are_anded():
    meta = _meta("two_object", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}])
    assert score_image([D("dog", 0.9, _box(0, 0)), D("cat", 0.4, _box(50, 0))], meta).correct
    v = score_image([D("dog", 0.9, _box(0, 0))], meta)
    assert not v.correct and v.reason == "expected cat>=1, found 0"


def test_counting_wants_exactly_n():
    meta = _counting("cat", 3)
    cats = [D("cat", 0.95, _box(20 * i, 0)) for i in range(5)]
    assert [score_image(cats[:k], meta).correct for k in range(6)] == [0, 0, 0, 1, 0, 0]
    assert score_image(cats[:2], meta).reason == "expected cat>=3, found 2"


def test_colour_is_checked_on_the_top_count_objects_lazily():
    calls = []

    def color_fn(dets):
        calls.append([d.score for d in dets])
        return ["blue" if d.score > 0.85 else "red" for d in dets]

    meta = _meta("colors", [{"class": "car", "count": 1, "color": "red"}])
    blue_first = [D("car", 0.8, _box(0, 0)), D("car", 0.9, _box(50, 0)), D("dog", 0.99, _box(0, 50))]
    v = score_image(blue_first, meta, color_fn)
    assert not v.correct and calls == [[0.9]]  # only the most confident car is classified
    assert v.reason == "expected red car>=1, found 0 red; and 1 blue"
    assert score_image([D("car", 0.8, _box(0, 0))], meta, color_fn).correct
    calls.clear()
    score_image(blue_first, SINGLE_DOG, color_fn)
    assert calls == []  # no colour clause: no classification
    with pytest.raises(ValueError, match="color_fn"):
        score_image(blue_first, meta)
    # a known colour (the toy detector) needs no color_fn
    assert score_image([D("car", 0.8, _box(0, 0), color="red")], meta).correct


def test_color_attr_needs_each_colour_on_its_own_class():
    meta = _meta("color_attr", [{"class": "car", "count": 1, "color": "red"},
                                {"class": "bench", "count": 1, "color": "blue"}])
    right = [D("car", 0.9, _box(0, 0), color="red"), D("bench", 0.9, _box(50, 0), color="blue")]
    swapped = [D("car", 0.9, _box(0, 0), color="blue"), D("bench", 0.9, _box(50, 0), color="red")]
    assert score_image(right, meta).correct
    v = score_image(swapped, meta)
    assert not v.correct and v.reward == 0.5  # terms: count 1, colour 0, count 1, colour 0


def test_an_exclude_clause_with_a_colour_counts_that_colour_only():
    meta = _meta("counting", [{"class": "square", "count": 2, "color": "red"}],
                 [{"class": "square", "count": 3, "color": "red"}])
    dets = [D("square", 0.95, _box(0, 0), color="red"), D("square", 0.94, _box(20, 0), color="red"),
            D("square", 0.93, _box(40, 0), color="blue")]
    v = score_image(dets, meta)
    assert v.correct and v.reward == 1.0
    assert score_image(dets, meta, partial="official").reward == 0.25  # n = 3 != 2: [1 - 1/2, 0]
    dets[2].color = "red"
    assert not score_image(dets, meta).correct


# --- position ----------------------------------------------------------------------------------

def test_each_relation_and_the_margin():
    a = _box(0, 0)
    assert relative_position(a, _box(11, 0)) == {"left of"}  # dx = (-11 + 2) / 11 = -0.82
    assert relative_position(_box(11, 0), a) == {"right of"}
    assert relative_position(a, _box(0, 11)) == {"above"}  # y points down
    assert relative_position(_box(0, 11), a) == {"below"}
    assert relative_position(a, _box(20, 20)) == {"left of", "above"}  # -0.64 on both axes
    # margin 0.1 x (10 + 10) = 2 per axis: an offset of 2 or less is no relation
    assert relative_position(a, _box(2, 0)) == set()
    assert relative_position(a, _box(4, 0)) == set()  # (-4 + 2) / 4 = -0.5: not below -0.5
    assert relative_position(a, _box(4.5, 0)) == {"left of"}  # -2.5 / 4.5 = -0.56
    # the divisor is the original offset: (-10, -8) -> revised (-8, -6) / 12.81 = (-0.62, -0.47):
    # left of only (dividing by the revised offset's norm, 10, would add "above" at -0.6)
    assert relative_position(a, _box(10, 8)) == {"left of"}
    assert relative_position(a, _box(10, 0), margin=0.0) == {"left of"}


def test_position_prompt_every_pair_and_the_target_group():
    meta = _cat_left_of_dog()
    dog, cat_left = D("dog", 0.9, _box(50, 0)), D("cat", 0.9, _box(0, 0))
    cat_right = D("cat", 0.8, _box(90, 0))
    assert score_image([dog, cat_left], meta).correct
    v = score_image([dog, D("cat", 0.9, _box(90, 0))], meta)
    assert not v.correct and v.reason == "expected cat left of target, found right of target"
    assert score_image([dog, cat_left, cat_right], meta).correct  # only the top-1 cat is placed
    v = score_image([cat_left], meta)
    assert v.reason == "expected dog>=1, found 0\nno target for cat to be left of"
    # two cats must both stand left of the dog
    two = _meta("position", [{"class": "dog", "count": 1},
                             {"class": "cat", "count": 2, "position": ["left of", 0]}])
    assert score_image([dog, cat_left, D("cat", 0.8, _box(20, 30))], two).correct
    assert not score_image([dog, cat_left, cat_right], two).correct


# --- partial credit ----------------------------------------------------------------------------

def test_position_partial_credit_official_bug_and_corrected():
    meta = _cat_left_of_dog()
    wrong = [D("dog", 0.9, _box(0, 0)), D("cat", 0.9, _box(50, 0))]
    # official: [1] + [1, 0 (failed pair), 1 (appended after the loop)] -> 0.75
    assert score_image(wrong, meta, partial="official").reward == 0.75
    assert score_image(wrong, meta).reward == pytest.approx(2 / 3)  # corrected: [1] + [1, 0]
    no_target = [D("cat", 0.9, _box(0, 0))]
    # both: [0] + [1, 0]
    assert score_image(no_target, meta, partial="official").reward == pytest.approx(1 / 3)
    assert score_image(no_target, meta).reward == pytest.approx(1 / 3)
    two_dogs = [D("dog", 0.9, _box(50, 0)), D("dog", 0.8, _box(50, 50)), D("cat", 0.9, _box(0, 0))]
    # correct (the top dog is the target); official: [1 - |1 - 2|] + [1, 0 (no target: dog group failed)]
    assert score_image(two_dogs, meta).correct
    assert score_image(two_dogs, meta, partial="official").reward == pytest.approx(1 / 3)
    assert score_image(two_dogs, meta).reward == 1.0


def test_counting_partial_credit():
    meta = _counting("dog", 2)
    dogs = [D("dog", 0.95, _box(20 * i, 0)) for i in range(6)]
    cases = ((0, 0.0, 0.0), (1, 0.5, 0.5), (2, 1.0, 1.0), (3, 0.5, 0.5), (6, -1.0, 0.0))
    for k, official, corrected in cases:
        assert score_image(dogs[:k], meta, partial="official").reward == official, k
        assert score_image(dogs[:k], meta).reward == corrected, k


def test_extra_objects_without_an_exclude_clause_are_not_penalised_by_corrected():
    meta = _meta("two_object", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}])
    dets = [D("dog", 0.9, _box(0, 0)), D("dog", 0.8, _box(0, 50)), D("cat", 0.9, _box(50, 0))]
    v = score_image(dets, meta, partial="official")
    assert v.correct and v.reward == 0.5  # [1 - |1 - 2|, 1]
    assert score_image(dets, meta).reward == 1.0
    col = _meta("color_attr", [{"class": "car", "count": 1, "color": "red"},
                               {"class": "bench", "count": 1, "color": "blue"}])
    dets = [D("car", 0.9, _box(0, 0), color="red"), D("car", 0.8, _box(0, 50), color="blue"),
            D("bench", 0.9, _box(50, 0), color="blue")]
    assert score_image(dets, col, partial="official").reward == 0.5  # [0, 0] + [1, 1]
    assert score_image(dets, col).reward == 1.0
    # a missing object: colour share over the requested count, 0 for missing objects
    counting_red = _meta("counting", [{"class": "car", "count": 2, "color": "red"}],
                         [{"class": "car", "count": 3}])
    one_red = [D("car", 0.95, _box(0, 0), color="red")]
    assert score_image(one_red, counting_red).reward == 0.5  # [1 - 1/2, 1/2]
    assert score_image(one_red, counting_red, partial="official").reward == 0.25  # [1 - 1/2, 0]


def test_corrected_reward_is_bounded_and_one_exactly_when_correct():
    rows = official_prompts()
    rng = random.Random(0)
    classes = sorted({c["class"] for m in rows for c in m["include"]})
    colours = ["red", "blue", "green"]
    seen_correct = 0
    for i in range(600):
        meta = rows[i % len(rows)]
        named = [c["class"] for c in meta["include"]]
        dets = []
        for _ in range(rng.randint(0, 6)):
            cls = rng.choice(named) if rng.random() < 0.8 else rng.choice(classes)
            x, y = rng.uniform(0, 400), rng.uniform(0, 400)
            box = (x, y, x + rng.uniform(5, 100), y + rng.uniform(5, 100))
            dets.append(D(cls, rng.uniform(0.2, 1.0), box, color=rng.choice(colours)))
        v = score_image(dets, meta)
        assert 0.0 <= v.reward <= 1.0
        assert (v.reward == 1.0) == v.correct, (meta, dets)
        assert score_image(dets, meta, partial="official").reward <= 1.0
        seen_correct += v.correct
    assert 20 < seen_correct < 580


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="partial-credit variant 'strict'"):
        score_image([], SINGLE_DOG, partial="strict")
    with pytest.raises(ValueError, match="include"):
        score_image([], {"prompt": "x"})
    bad = _meta("position", [{"class": "cat", "count": 1, "position": ["left of", 0]}], prompt="q")
    with pytest.raises(ValueError, match=r"'q'.*earlier include clause"):
        score_image([], bad)
    with pytest.raises(ValueError, match="count"):
        score_image([], _meta("counting", [{"class": "cat", "count": 0}]))


# --- summary -----------------------------------------------------------------------------------

def test_summary_overall_is_the_mean_of_tag_accuracies():
    rows = [
        {"tag": "single_object", "prompt": "a", "correct": True, "reward": 1.0},
        {"tag": "counting", "prompt": "b", "correct": True, "reward": 1.0},
        {"tag": "counting", "prompt": "b", "correct": False, "reward": 0.5},
        {"tag": "counting", "prompt": "c", "correct": False, "reward": 0.0},
    ]
    s = summarize(rows)
    assert s["single_object"] == 1.0 and s["counting"] == pytest.approx(1 / 3)
    assert s["overall"] == pytest.approx(2 / 3)  # not the image mean 0.5
    assert s["image_accuracy"] == 0.5 and s["prompt_accuracy"] == pytest.approx(2 / 3)
    assert s["reward"] == 0.625 and s["n_images"] == 4 and s["n_prompts"] == 3
    assert list(s)[:3] == ["overall", "single_object", "counting"]
    json.dumps(s)
