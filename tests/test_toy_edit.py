"""The toy editing world: instructions with their scenes and splits, the edit scorer (the edit done, the rest
kept), the ``toy_edit`` reward, the editing model and its adapter, pretraining, and a run of the loop."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dgpo.data.prompts import check_row, load_prompts
from dgpo.errors import InputError, MissingPathError
from dgpo.rewards.geneval.rules import relative_position
from dgpo.testing.toy import tiny_edit_checkpoint
from dgpo.toy import edit_grammar as eg
from dgpo.toy.edit_scorer import score_edit
from dgpo.toy.grammar import HELDOUT_BINDINGS, SHAPES
from dgpo.toy.scorer import detect


def _xyxy(o):
    x, y, s = o["box"]
    return (x, y, x + s, y + s)


def _found(img):
    return sorted((d.cls, d.color, d.box) for d in detect(img))


def _scene(objs):
    return sorted((o["class"], o["color"], _xyxy(o)) for o in objs)


@pytest.fixture
def tiny_edit(tmp_path):
    return tiny_edit_checkpoint(tmp_path / "tiny_edit")


# --- grammar and splits ----------------------------------------------------------------------------


def test_rows_are_geneval_metadata_with_scenes_that_say_what_the_instruction_says():
    rows = eg.split("test") + eg.split("train")[::5]
    assert {m["tag"] for m in rows} == set(eg.CATEGORIES)
    assert eg.recolor("circle", "red", "blue")["prompt"] == "make the red circle blue"
    assert eg.move("square", "left of", "triangle")["prompt"] == "move the square to the left of the triangle"
    assert (eg.add("circle", "green")["prompt"], eg.remove("square", "blue")["prompt"]) == \
        ("add a green circle", "remove the blue square")
    for m in rows:
        check_row(m)
        eg.check_edit_row(m)
        src, tgt, e = m["source_scene"], m["target_scene"], m["edit"]
        assert len({o["class"] for o in src}) == len(src) and len({o["class"] for o in tgt}) == len(tgt)
        named = src[m["edited"]] if m["edited"] is not None else None
        rest_src = [o for i, o in enumerate(src) if i != m["edited"]]
        if m["tag"] == "recolor":
            assert (named["class"], named["color"]) == (e["class"], e["color"])
            assert tgt[m["edited"]] == {**named, "color": e["to"]} and len(tgt) == len(src)
        elif m["tag"] == "move":
            ref = next(o for o in src if o["class"] == e["reference"])
            moved = next(o for o in tgt if o["class"] == e["class"])
            assert e["relation"] not in relative_position(_xyxy(named), _xyxy(ref))  # not done already
            assert e["relation"] in relative_position(_xyxy(moved), _xyxy(ref))
            assert moved["color"] == named["color"] and moved["box"] != named["box"]
        elif m["tag"] == "add":
            assert named is None and tgt[-1]["class"] == e["class"] and tgt[-1]["color"] == e["color"]
            assert e["class"] not in {o["class"] for o in src} and tgt[:-1] == src
        else:
            assert (named["class"], named["color"]) == (e["class"], e["color"])
        if m["tag"] != "add":  # everything but the named object is the same in both scenes
            assert [o for o in tgt if o["class"] != e["class"]] == rest_src


def test_every_instruction_word_is_in_the_editing_vocabulary():
    from dgpo.toy.edit_model import EDIT_VOCAB
    from dgpo.toy.model import VOCAB, tokenize

    assert EDIT_VOCAB[: len(VOCAB)] == VOCAB  # an image base's word embeddings carry over
    prompts = [m["prompt"] for ms in eg.instructions().values() for m in ms]
    ids = tokenize(prompts, 16, EDIT_VOCAB)
    assert not (ids == 1).any()  # no <unk>
    assert all(len(p.split()) <= 16 for p in prompts)


def test_splits_are_deterministic_disjoint_and_the_test_split_probes_held_out_edits():
    test, train = eg.split("test"), eg.split("train")
    assert test == eg.split("test") and train == eg.split("train")
    assert len(test) == sum(eg.TEST_SIZES.values()) and len(train) >= 300
    assert {m["tag"] for m in test} == set(eg.CATEGORIES) == {m["tag"] for m in train}
    assert not {m["prompt"] for m in test} & {m["prompt"] for m in train}
    held = [m for m in test if eg.has_heldout(m)]
    assert {m["tag"] for m in held} == set(eg.CATEGORIES)
    assert sum(eg.TEST_SIZES[c] // 4 for c in eg.CATEGORIES) == len(held)
    assert not any(eg.has_heldout(m) for m in train) and not any(eg.has_heldout(m) for m in eg.pretrain_pool())
    assert eg.has_heldout(eg.with_scene(eg.recolor("triangle", "blue", "red")))  # to a held-out binding
    assert eg.has_heldout(eg.with_scene(eg.move("circle", "above", "cross")))
    assert not eg.has_heldout(eg.with_scene(eg.recolor("triangle", "red", "blue")))  # from one: seen
    assert ("red", "triangle") in HELDOUT_BINDINGS
    # the same instruction has other scenes in training (as a prompt has other seeds)
    by_prompt = {}
    for m in train:
        by_prompt.setdefault(m["prompt"], []).append(m["source_scene"])
    assert all(len(v) == eg.TRAIN_SCENES and v[0] != v[1] for v in by_prompt.values())
    assert load_prompts("toy_edit:test") == test and load_prompts("toy_edit:train") == train
    with pytest.raises(InputError, match="unknown split 'dev'"):
        load_prompts("toy_edit:dev")


def test_pretraining_draws_fresh_scenes_of_pool_instructions():
    by_cat = eg.by_category(eg.pretrain_pool())
    rng = random.Random(0)
    rows = [eg.sample_pretrain(rng, by_cat) for _ in range(40)]
    assert {m["tag"] for m in rows} == set(eg.CATEGORIES)
    assert rows == [eg.sample_pretrain(r, by_cat) for r in [random.Random(0)] for _ in range(40)]
    only = [eg.sample_pretrain(rng, by_cat, {"move": 1.0, "add": 0.0, "recolor": 0.0, "remove": 0.0})
            for _ in range(10)]
    assert {m["tag"] for m in only} == {"move"}


def test_scenes_draw_what_the_detector_finds_and_bad_scenes_are_refused():
    for m in eg.split("test")[::3]:
        for key in ("source_scene", "target_scene"):
            img = eg.render_scene(m[key])
            assert img.shape == (3, 32, 32) and img.dtype == np.float32
            assert _found(img) == _scene(m[key])
    bad = [[{"class": "star", "color": "red", "box": [0, 0, 8]}],
           [{"class": "circle", "color": "red", "box": [30, 0, 8]}],  # off the canvas
           [{"class": "circle", "color": "red", "box": [0, 0]}], "a circle"]
    for scene in bad:
        with pytest.raises(InputError, match="scene"):
            eg.render_scene(scene)
    with pytest.raises(InputError, match="needs 'source_scene'"):
        eg.check_edit_row({"prompt": "add a red circle", "include": []})


# --- the scorer and the reward ---------------------------------------------------------------------


def test_the_oracle_scores_one_the_source_and_noise_score_zero():
    rows = eg.split("test") + eg.split("train")[::7]
    gen = np.random.default_rng(0)
    for m in rows:
        oracle = score_edit(eg.render_scene(m["target_scene"]), m)
        assert oracle.correct and oracle.reward == 1.0, (m["prompt"], oracle.reason)
        same = score_edit(eg.render_scene(m["source_scene"]), m)
        assert not same.correct and same.reward == 0.0 and same.checks["kept"] <= 1.0
    noise = [score_edit(gen.normal(0.5, 0.5, (3, 32, 32)).clip(0, 1), m) for m in rows]
    blank = [score_edit(np.zeros((3, 32, 32), np.float32), m) for m in rows]
    for res in (noise, blank):
        assert np.mean([v.correct for v in res]) == 0.0 and np.mean([v.reward for v in res]) <= 0.02


def test_partial_credit_is_the_edit_times_the_share_kept():
    from dgpo.toy.canvas import draw

    row = eg.with_scene(eg.add("circle", "green"))
    rest = row["source_scene"]
    assert row["target_scene"][-1]["color"] == "green"
    plan = lambda objs: [(o["class"], o["color"], tuple(o["box"])) for o in objs]  # noqa: E731
    wrong = dict(row["target_scene"][-1], color="red")  # a red circle added: the colour term fails
    v = score_edit(draw(plan([*rest, wrong])), row)
    assert not v.correct and v.reward == pytest.approx(0.5) and v.checks["kept"] == 1.0  # (1 + 0) / 2 x 1
    # the right edit, but one kept object lost: kept = (n - 1) / n
    v = score_edit(draw(plan([*rest[1:], row["target_scene"][-1]])), row)
    n = len(rest)
    assert not v.correct and v.checks["edit"] == 1.0 and v.reward == pytest.approx((n - 1) / n)
    # the right edit plus an extra object: kept = n / (n + 1)
    free = next(s for s in SHAPES if s not in {o["class"] for o in row["target_scene"]})
    taken = [tuple(o["box"]) for o in row["target_scene"]]
    from dgpo.toy.canvas import boxes_clear

    box = next((x, y, 7) for x in range(0, 26, 2) for y in range(0, 26, 2) if boxes_clear((x, y, 7), taken))
    v = score_edit(draw(plan(row["target_scene"]) + [(free, "white", box)]), row)
    assert not v.correct and v.checks["extras"] == 1.0 and v.reward == pytest.approx(n / (n + 1))
    # a kept object moved by more than the tolerance is no longer kept
    shifted = [dict(rest[0], box=[rest[0]["box"][0] + 3, *rest[0]["box"][1:]])]
    if boxes_clear(tuple(shifted[0]["box"]), [tuple(o["box"]) for o in row["target_scene"][1:]]):
        v = score_edit(draw(plan(shifted + row["target_scene"][1:])), row)
        assert not v.correct and v.checks["kept"] < 1.0


def test_reward_strict_and_partial_and_eval_flags():
    from dgpo.rewards import build_reward

    rows = eg.split("test")[::7]
    good = torch.stack([torch.from_numpy(eg.render_scene(m["target_scene"])) for m in rows])
    same = torch.stack([torch.from_numpy(eg.render_scene(m["source_scene"])) for m in rows])
    partial, strict = build_reward("toy_edit"), build_reward("toy_edit_strict")
    assert partial(good, rows).tolist() == [1.0] * len(rows) and strict(same, rows).tolist() == [0.0] * len(rows)
    scores = partial.eval_scores(same, rows)
    assert all(ok is False and part == 0.0 and set(flags) == {"edit_ok", "kept_ok"} for ok, part, flags in scores)
    assert all(flags["edit_ok"] == 0.0 for _, _, flags in scores)
    with pytest.raises(InputError, match=r"toy_edit scores images \[B, 3, H, W\]"):
        partial(good[:, None], rows)
    with pytest.raises(InputError, match="metadata rows"):
        partial(good, rows[:-1])


# --- the model, its adapter and pretraining ---------------------------------------------------------


def test_edit_unet_starts_as_the_image_unet_and_then_sees_the_source(tiny_toy):
    from dgpo.toy.edit_model import from_image_base
    from dgpo.toy.model import tokenize
    from dgpo.toy.weights import load_toy

    img = load_toy(tiny_toy)
    net = from_image_base(img)
    x, t, prompts = torch.randn(2, 3, 32, 32), torch.rand(2), ["a photo of a red circle", ""]
    with torch.no_grad():
        text = net.text_encoder(tokenize(prompts, 16, net.vocab))
        got = net(x, t, {**text, "source": torch.randn(2, 3, 32, 32)})
        want = img(x, t, img.text_encoder(tokenize(prompts, 16)))
        assert got.shape == (2, 3, 32, 32) and torch.allclose(got, want, atol=1e-5)
        net.stem.weight[:, 3:6].normal_(0, 0.5)  # the source channels, zero at the start
        a = net(x, t, {**text, "source": torch.zeros(2, 3, 32, 32)})
        b = net(x, t, {**text, "source": torch.ones(2, 3, 32, 32)})
    assert (a - b).abs().max() > 1e-3


def test_adapter_encodes_rows_with_their_drawn_sources_and_cfg_keeps_them(tiny_edit):
    from dgpo.config import ModelConfig
    from dgpo.models.base import encode_nulls, encode_rows
    from dgpo.models.families import MODEL_KINDS
    from dgpo.models.loading import load_model
    from dgpo.samplers.rollout import generate

    assert "toy_edit" in MODEL_KINDS
    model = load_model(ModelConfig(kind="toy_edit", path=str(tiny_edit)))
    rows = eg.split("test")[:3]
    cond, null = encode_rows(model, rows), encode_nulls(model, rows)
    assert cond["source"].shape == (3, 3, 32, 32) and cond["tokens"].shape == (3, 16, 16)
    want = torch.stack([torch.from_numpy(eg.render_scene(m["source_scene"])) for m in rows]) * 2 - 1
    assert torch.equal(cond["source"], want) and torch.equal(null["source"], want)
    assert not torch.equal(cond["pooled"], null["pooled"])
    assert torch.equal(model.source_images(rows), (want + 1) / 2)
    x0 = generate(model, cond, null, [0, 1, 2], 2, 1.0, 4.5, "dpm")
    assert x0.shape == (3, 3, 32, 32) and torch.isfinite(x0).all()
    with pytest.raises(InputError, match="has no 'source_scene'"):
        model.encode_metas([{"prompt": "make the red circle blue"}])
    with pytest.raises(InputError, match="encode_metas"):
        model.velocity(x0, torch.tensor([500, 500, 500]), model.encode_prompts(["a", "b", "c"]))


def test_edit_checkpoint_errors_name_the_folder(tmp_path, tiny_toy):
    from dgpo.toy import edit_model

    with pytest.raises(InputError, match="not a toy edit checkpoint"):
        edit_model.load_edit_toy(tiny_toy)  # an image checkpoint
    with pytest.raises(MissingPathError, match="missing config.json"):
        edit_model.load_edit_toy(tmp_path)
    from dataclasses import replace

    from dgpo.toy.weights import load_kind

    with pytest.raises(MissingPathError, match="pretrain one with `dgpo toy pretrain --world edit"):
        load_kind(None, replace(edit_model.EDIT_KIND, builtin=tmp_path / "absent"))  # a build without the base
    shipped = edit_model.load_edit_toy()  # model.path '': the shipped editing base
    assert shipped.cfg.source_channels == 3 and shipped.stem.weight[:, 3:6].abs().max() > 0


def test_edit_pretraining_learns_resumes_bit_for_bit_and_writes_loadable_snapshots(tmp_path, tiny_toy):
    from safetensors.torch import load_file

    from dgpo.models.toy_edit import ToyEditFlowModel
    from dgpo.toy.edit_pretrain import pretrain_edit

    kw = dict(minutes=5, batch_size=2, lr=1e-3, save_every=2, init=str(tiny_toy), weights={"move": 2.0}, seed=3)
    whole = pretrain_edit(tmp_path / "whole", max_steps=4, **kw)
    pretrain_edit(tmp_path / "parts", max_steps=3, **kw)  # the state of step 2, then killed at 3
    parts = pretrain_edit(tmp_path / "parts", max_steps=4, resume=True, **kw)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(parts / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["stem.weight"][:, 3:6].abs().max() > 0  # the source channels left zero and learned
    with pytest.raises(InputError, match="lr"):
        pretrain_edit(tmp_path / "parts", max_steps=6, resume=True, **{**kw, "lr": 2e-3})
    model = ToyEditFlowModel.load(tmp_path / "whole" / "step_000002")
    assert model.latent_shape() == (3, 32, 32) and model.net.cfg.source_channels == 3
    more = pretrain_edit(tmp_path / "more", max_steps=1, **{**kw, "init": str(whole)})  # an edit checkpoint goes on
    assert ToyEditFlowModel.load(more).net.cfg.channels == (8, 16, 16)


# --- the loop and the command line -----------------------------------------------------------------

SMALL = ["run.epochs=2", "run.sample_every=0", "run.log_with=none", "train.prompts_per_epoch=2", "train.group_size=4",
         "train.batch_size=4", "train.lr=1e-2", "sampler.steps=3", "timesteps.trunc_steps=2", "timesteps.count=2",
         "eval.per_category=1", "eval.batch_size=8", "eval.min_per_category=0", "eval.extra_rewards=[]"]


def test_two_epochs_on_a_tiny_edit_model_train_evaluate_by_category_and_draw_triptychs(tiny_edit, tmp_path):
    from PIL import Image

    from dgpo.config import load_config
    from dgpo.training.trainer import Trainer

    config = Path(__file__).resolve().parents[1] / "configs" / "toy_edit.yaml"
    cfg = load_config(config, [f"model.path={tiny_edit}", f"run.out_dir={tmp_path / 'run'}", *SMALL])
    tr = Trainer(cfg)
    start = [p.detach().clone() for p in tr.policy.params]
    summary = tr.fit()
    assert summary["steps"] >= 2 and any(not torch.equal(a, p) for a, p in zip(start, tr.policy.params))
    evals = [json.loads(line) for line in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()]
    assert len(evals) == 2 and set(eg.CATEGORIES) <= set(evals[0])
    before = Image.open(tmp_path / "run" / "samples" / "before.png")
    compare = Image.open(tmp_path / "run" / "samples" / "compare.png")
    tile = 32 * 4  # save_compare's scale
    # each cell of the comparison is source | base | trained: three tiles and two gaps
    assert compare.width % (3 * tile + 4) == 0 and before.width % tile == 0


def test_cli_edit_prompts_oracle_eval_and_pretrain(tmp_path, tiny_toy):
    from dgpo.cli import main

    assert main(["toy", "prompts", "test", "--world", "edit", "--out", str(tmp_path / "t.jsonl")]) == 0
    assert load_prompts(str(tmp_path / "t.jsonl")) == eg.split("test")
    assert main(["eval", "--model", "oracle", "--split", "toy_edit:test", "--out", str(tmp_path / "ev")]) == 0
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert res["overall"] == 1.0 and all(res[c] == 1.0 for c in eg.CATEGORIES)
    assert main(["toy", "pretrain", "--world", "edit", "--init", str(tiny_toy), "--max-steps", "1",
                 "--batch-size", "1", "--out", str(tmp_path / "pt")]) == 0
    assert json.loads((tmp_path / "pt" / "final" / "config.json").read_text())["kind"] == "toy_edit"
    assert main(["toy", "pretrain", "--world", "edit", "--channels", "8,16,16", "--out", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("args, match", [
    (["train.prompts=toy_edit:train"], r"train.prompts='toy_edit:train' is another toy world's prompt set; "
                                       r"model.kind=toy reads toy:train"),
    (["model.kind=toy_edit", "train.prompts=toy_edit:train"], r"eval.split='toy:test' is another toy world's"),
    (["model.kind=toy_edit", "train.prompts=prompts.txt", "eval.split=toy_edit:test"],
     r"train.prompts='prompts.txt': the toy editing model draws each row's source from its scene"),
])
def test_a_toy_model_reads_its_own_worlds_prompts(args, match):
    from dgpo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=match):
        load_config(None, args)
