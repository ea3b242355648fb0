"""The toy video world: motion grammar and splits, the clip renderer, the scorer (GenEval per frame, a
tracker, motion checks) and the ``toy_video`` reward."""

import json
import random

import numpy as np
import pytest
import torch

from dgpo.data.prompts import check_row, load_prompts
from dgpo.toy import video_grammar as vg
from dgpo.toy.grammar import HELDOUT_BINDINGS, SHAPES
from dgpo.toy.render import CANVAS
from dgpo.toy.scorer import detect
from dgpo.toy.video_render import FRAMES, draw, plan, render_clip
from dgpo.toy.video_scorer import direction_checks, relative_checks, score_clip, track


def _sample(rows, n, seed):
    rng = random.Random(seed)
    return [rng.choice(rows) for _ in range(n)]


# --- grammar ---------------------------------------------------------------------------------------


def test_grammar_rows_are_geneval_metadata_with_motion():
    allp = vg.all_prompts()
    assert tuple(allp) == vg.CATEGORIES
    for cat, rows in allp.items():
        assert rows and len({m["prompt"] for m in rows}) == len(rows), cat
        for m in rows:
            assert m["tag"] == cat
            check_row(m)  # GenEval's rules read it
            vg.check_motion(m)
            assert set(m) <= {"tag", "include", "exclude", "motion", "prompt"}
            for o in m["include"]:
                assert set(o) <= {"class", "count", "color"} and o["class"] in SHAPES
    assert {d for m in allp["motion_single"] for d in m["motion"]} == set(vg.MOVING)
    assert all(m["motion"] == ["still"] for m in allp["still"])
    assert {m["motion"] for m in allp["motion_two_relative"]} == set(vg.RELATIVE)
    assert all(len(set(m["motion"])) == 2 and "still" not in m["motion"] for m in allp["motion_two_directions"])
    assert all("color" in m["include"][0] for m in allp["motion_color"])
    counts = {m["include"][0]["count"] for m in allp["motion_count"]}
    assert counts == {2, 3} and all(m["exclude"][0]["count"] == m["include"][0]["count"] + 1
                                    for m in allp["motion_count"])
    assert vg.motion_count("cross", 3, "up", "red")["prompt"] == "a video of three red crosses moving up"
    assert vg.motion_two_relative("circle", "square", "towards")["prompt"] == \
        "a video of a circle and a square moving towards each other"


def test_splits_deterministic_disjoint_and_test_probes_unseen_bindings():
    test, train = vg.split("test"), vg.split("train")
    assert test == vg.split("test") and train == vg.split("train")
    assert len(test) == sum(vg.TEST_SIZES.values()) and len(train) >= 200
    assert {m["tag"] for m in test} == set(vg.CATEGORIES) == {m["tag"] for m in train}
    assert not {m["prompt"] for m in test} & {m["prompt"] for m in train}
    held = [m for m in test if vg.has_heldout(m)]
    assert len(held) >= 25
    assert {m["tag"] for m in held} >= {"motion_single", "motion_color", "motion_two_directions", "motion_count"}
    assert set().union(*(vg.motion_bindings(m) for m in held)) >= vg.HELDOUT_MOTIONS
    pool = vg.pretrain_pool()
    assert not set().union(*(vg.motion_bindings(m) for m in pool)) & vg.HELDOUT_MOTIONS
    assert not set().union(*(vg.color_bindings(m) for m in pool)) & HELDOUT_BINDINGS
    assert not any(vg.has_heldout(m) for m in train)
    # served wherever the image toy's splits are
    assert load_prompts("toy_video:test") == test and load_prompts("toy_video:train") == train
    with pytest.raises(ValueError, match="unknown split"):
        load_prompts("toy_video:dev")


def test_check_motion_refuses_malformed_rows():
    bad = [{**vg.motion_single("circle", "left"), "motion": ["sideways"]},
           {**vg.motion_single("circle", "left"), "motion": ["left", "up"]},
           {**vg.motion_single("circle", "left"), "motion": "apart"},
           {**vg.motion_single("circle", "left"), "motion": None}]
    for m in bad:
        with pytest.raises(ValueError, match="motion"):
            vg.check_motion(m)


# --- renderer --------------------------------------------------------------------------------------


def test_renderer_clips_shape_range_determinism_and_constant_motion():
    for m in vg.split("test")[::7]:
        clip = render_clip(m, random.Random(3))
        assert clip.shape == (FRAMES, 3, CANVAS, CANVAS) and clip.dtype == np.float32
        assert clip.min() >= 0 and clip.max() <= 1
        assert np.array_equal(clip, render_clip(m, random.Random(3)))
        objs = plan(m, random.Random(3))
        assert len(objs) == sum(o["count"] for o in m["include"])
        for _shape, _color, s, x, y, vx, vy in objs:
            assert abs(vx) + abs(vy) in ((0,) if m["motion"] == ["still"] else (1, 2))
            for f in (0, FRAMES - 1):  # inside the canvas in every frame
                assert 0 <= x + vx * f <= CANVAS - s and 0 <= y + vy * f <= CANVAS - s
        # a single frame is an image-toy image: the detector finds exactly the planned objects
        for f in (0, FRAMES // 2, FRAMES - 1):
            found = sorted((d.cls, d.color, d.box) for d in detect(clip[f]))
            want = sorted((o[0], o[1], (o[3] + o[5] * f, o[4] + o[6] * f, o[3] + o[5] * f + o[2],
                                        o[4] + o[6] * f + o[2])) for o in objs)
            assert found == want
    assert render_clip(vg.motion_single("circle", "left"), random.Random(0), frames=5).shape[0] == 5


def test_renderer_moves_each_direction_the_right_way():
    for d, (sx, sy) in {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}.items():
        (_, _, _, _, _, vx, vy), = plan(vg.motion_single("square", d), random.Random(1))
        assert (np.sign(vx), np.sign(vy)) == (sx, sy)
    for rel in vg.RELATIVE:
        a, b = plan(vg.motion_two_relative("circle", "cross", rel), random.Random(2))
        dist = [np.hypot(a[3] + a[5] * f - b[3] - b[5] * f + (a[2] - b[2]) / 2,
                         a[4] + a[6] * f - b[4] - b[6] * f + (a[2] - b[2]) / 2) for f in range(FRAMES)]
        assert (dist[-1] > dist[0]) == (rel == "apart")


# --- scorer ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_oracle_clips_score_one_strict_on_random_prompts(split):
    rows = _sample(vg.split(split), 200, seed=len(split))
    rng = random.Random(11)
    verdicts = [score_clip(render_clip(m, rng), m) for m in rows]
    bad = [(m["prompt"], v.reason) for m, v in zip(rows, verdicts) if not v.correct]
    assert not bad, bad[:3]
    assert all(v.reward == 1.0 for v in verdicts)
    assert {m["tag"] for m in rows} == set(vg.CATEGORIES)


def test_noise_and_frozen_clips_score_near_zero_on_motion_prompts():
    rows = vg.split("test")
    moving = [m for m in rows if m["tag"] != "still"][::4]
    gen = np.random.default_rng(0)
    shape = (FRAMES, 3, CANVAS, CANVAS)
    makers = {
        "static noise": lambda c: gen.normal(0.5, 0.5, shape).clip(0, 1),  # new noise every frame
        "frozen noise": lambda c: np.repeat(gen.normal(0.5, 0.5, shape[1:]).clip(0, 1)[None], FRAMES, 0),
        "uniform noise": lambda c: gen.random(shape),
        "blank": lambda c: np.zeros(shape),
    }
    for name, make in makers.items():
        res = [score_clip(make(None), m) for m in moving]
        assert np.mean([v.correct for v in res]) <= 0.02, name
        assert np.mean([v.reward for v in res]) <= 0.05, name
    # frozen clips (frame 0 repeated): a right scene that does not move fails every moving prompt
    frozen = [score_clip(np.repeat(render_clip(m, random.Random(i))[:1], FRAMES, 0), m)
              for i, m in enumerate(moving)]
    assert not any(v.correct for v in frozen)
    assert all(v.checks["frames_ok"] == 1 and v.checks["consistent_ok"] == 1 and v.checks["motion_ok"] == 0
               for v in frozen)
    assert 0.4 < np.mean([v.reward for v in frozen]) < 0.7  # partial credit: the scene and consistency
    # ... and passes still prompts, which is right: a frozen clip of the scene stands still
    still = [m for m in rows if m["tag"] == "still"]
    assert all(score_clip(np.repeat(render_clip(m, random.Random(0))[:1], FRAMES, 0), m).correct for m in still)


def test_still_prompt_fails_a_moving_object():
    m = vg.still("circle", "red")
    moving = draw([("circle", "red", 9, 4, 10, 1, 0)])
    v = score_clip(moving, m)
    assert not v.correct and v.checks["frames_ok"] == 1 and v.checks["motion_ok"] == 0


def test_flicker_fails_and_costs_consistency():
    m = vg.motion_single("triangle", "right")
    clip = render_clip(m, random.Random(5))
    assert score_clip(clip, m).correct
    flicker = clip.copy()
    flicker[4] = 0  # the object is missing from one frame
    v = score_clip(flicker, m)
    assert not v.correct and v.checks["frames_ok"] == 0 and v.checks["consistency"] == 0.0
    assert 0 < v.reward < 1
    # an extra object that pops up in one frame only is a flicker too
    clip = draw([("triangle", "white", 9, 2, 2, 1, 0)])
    assert score_clip(clip, m).correct
    clip[6] = np.maximum(clip[6], draw([("square", "blue", 7, 20, 20, 0, 0)], 1)[0])
    v = score_clip(clip, m)
    assert not v.correct and v.checks["consistent_ok"] == 0 and v.checks["frames_ok"] == 1
    assert v.checks["motion_ok"] == 1  # the triangle itself still moves right


def test_wrong_way_fails():
    for d, wrong in (("left", "right"), ("up", "down"), ("right", "up"), ("down", "still")):
        m = vg.motion_color("square", "green", d)
        clip = render_clip(vg.motion_color("square", "green", wrong), random.Random(7))
        v = score_clip(clip, m)
        assert not v.correct and v.checks["frames_ok"] == 1 and v.checks["motion_ok"] == 0, (d, wrong)
    m = vg.motion_single("cross", "left")
    reversed_clip = render_clip(m, random.Random(0))[::-1].copy()
    assert not score_clip(reversed_clip, m).correct
    for rel, other in (("apart", "towards"), ("towards", "apart")):
        clip = render_clip(vg.motion_two_relative("circle", "square", other), random.Random(4))
        v = score_clip(clip, vg.motion_two_relative("circle", "square", rel))
        assert not v.correct and v.checks["motion_ok"] == 0
    # two directions: swapping which object goes where fails
    clip = render_clip(vg.motion_two_directions("circle", "up", "cross", "left"), random.Random(2))
    assert not score_clip(clip, vg.motion_two_directions("circle", "left", "cross", "up")).correct


def test_non_monotone_and_too_small_motion_fail():
    m = vg.motion_single("square", "right")
    xs = [4, 6, 8, 10, 12, 8, 10, 12, 14]  # moves right overall, but steps back 4 px once
    clip = np.concatenate([draw([("square", "red", 8, x, 10, 0, 0)], 1) for x in xs])
    v = score_clip(clip, m)
    assert not v.correct and v.checks["consistent_ok"] == 1
    assert direction_checks(np.array([[x, 10.0] for x in xs]), "right", 4.0) == \
        {"direction": 1.0, "monotone": 0.0, "displacement": 1.0}
    small = np.concatenate([draw([("square", "red", 8, 4 + f // 3, 10, 0, 0)], 1) for f in range(FRAMES)])
    v = score_clip(small, m)  # 2 px in 9 frames: below the 4 px minimum
    assert not v.correct and v.checks["motion"] == pytest.approx(2 / 3)
    assert relative_checks(np.array([10.0, 11, 12, 13, 14]), "apart", 4.0) == \
        {"direction": 1.0, "monotone": 1.0, "displacement": 1.0}
    assert relative_checks(np.array([10.0, 11, 12, 13, 14]), "towards", 4.0)["direction"] == 0.0


def test_colour_or_shape_change_is_an_identity_swap():
    m = vg.motion_count("circle", 2, "down")
    objs = [("circle", "red", 8, 2, 2, 0, 1), ("circle", "blue", 8, 20, 2, 0, 1)]
    clip = draw(objs)
    assert score_clip(clip, m).correct
    swapped = draw([("circle", "blue", 8, 2, 2, 0, 1), ("circle", "red", 8, 20, 2, 0, 1)])
    clip_swap = np.concatenate([clip[:5], swapped[5:]])  # the two exchange colours half-way
    v = score_clip(clip_swap, m)
    assert v.checks["frames_ok"] == 1 and not v.correct and v.checks["consistent_ok"] == 0
    tracks = track([detect(f) for f in clip_swap])
    assert sorted(len(t.frames) for t in tracks) == [4, 4, 5, 5]  # no track crosses colours
    morph = np.concatenate([clip[:5], draw([("square", "red", 8, 2, 2, 0, 1), objs[1]])[5:]])
    assert not score_clip(morph, m).correct


def test_count_kept_across_frames():
    m = vg.motion_count("square", 2, "right", "yellow")
    clip = render_clip(m, random.Random(9))
    assert score_clip(clip, m).correct
    clip = draw([("square", "yellow", 8, 2, 2, 1, 0), ("square", "yellow", 8, 2, 14, 1, 0)])
    assert score_clip(clip, m).correct
    clip[3] = np.maximum(clip[3], draw([("square", "yellow", 7, 22, 24, 0, 0)], 1)[0])  # a third, in one frame
    v = score_clip(clip, m)
    assert not v.correct and v.checks["frames_ok"] == 0 and v.checks["consistent_ok"] == 0
    assert v.checks["motion_ok"] == 1


# --- reward ----------------------------------------------------------------------------------------


def test_reward_contract_names_and_config():
    from dgpo.config import load_config
    from dgpo.rewards import build_reward
    from dgpo.rewards.custom import as_reward

    rows = vg.split("test")[::18]
    clips = torch.from_numpy(np.stack([render_clip(m, random.Random(i)) for i, m in enumerate(rows)]))
    frozen = clips[:, :1].expand_as(clips).clone()
    partial, strict = build_reward("toy_video"), build_reward("toy_video_strict")
    assert partial.modality == strict.modality == "video"
    assert torch.equal(partial(clips, rows), torch.ones(len(rows)))
    scores, correct = partial.details(frozen, rows)
    want = torch.tensor([float(m["tag"] == "still") for m in rows])
    assert torch.equal(correct, want) and torch.equal(strict(frozen, rows), want)
    assert ((scores > 0) & (scores <= 1)).all()
    rows_out = strict.eval_scores(frozen, rows)
    assert [r[0] for r in rows_out] == want.bool().tolist() and set(rows_out[0][2]) == \
        {"frames_ok", "consistent_ok", "motion_ok"}
    wrapped = as_reward(partial)  # the custom-reward checks accept its outputs
    assert wrapped.modality == "video"
    assert wrapped(clips, rows).shape == (len(rows),) and len(wrapped.eval_scores(clips, rows)) == len(rows)
    with pytest.raises(ValueError, match=r"videos \[B, F, 3, H, W\]"):
        partial(clips[:, 0], rows)
    cfg = load_config(None, ["model.kind=toy_video", "reward.name=toy_video_strict", "train.prompts=toy_video:train",
                             "eval.split=toy_video:test"])
    assert cfg.reward.name == "toy_video_strict"


def test_evaluate_scores_videos_per_category_with_the_reward():
    from dgpo.evaluation import evaluate, markdown_table
    from dgpo.rewards.toy_video import ToyVideoReward

    def oracle(metas, seeds):  # the renderer as a video model
        return torch.stack([torch.from_numpy(render_clip(m, random.Random(s))) for m, s in zip(metas, seeds)])

    def frozen(metas, seeds):
        clips = oracle(metas, seeds)
        return clips[:, :1].expand_as(clips).clone()

    rows = vg.split("test")[::6]
    reward = ToyVideoReward()
    res = {name: evaluate(fn, rows, images_per_prompt=2, score_fn=reward.eval_scores)
           for name, fn in (("oracle", oracle), ("frozen", frozen))}
    assert res["oracle"]["overall"] == 1.0 and res["oracle"]["pass_at_n"]["overall"] == 1.0
    assert res["frozen"]["still"] == 1.0 and res["frozen"]["motion_single"] == 0.0
    assert {"motion_ok", "frames_ok", "consistent_ok"} <= set(res["frozen"]["rows"][0])
    table = markdown_table(res)
    assert "| model | overall | motion_single | still |" in table and "| oracle | 1.000 |" in table


# --- the space-time model, its FlowModel adapter and pretraining ------------------------------------


def _tiny_video(folder, frames=3):
    """A small random toy video checkpoint (from the tiny image checkpoint's layers, temporal layers
    perturbed so that frames interact)."""
    from dgpo.testing.toy import tiny_toy_checkpoint
    from dgpo.toy.video_model import from_image_base, save_video_toy
    from dgpo.toy.weights import load_toy

    net = from_image_base(load_toy(tiny_toy_checkpoint(folder / "image")), frames)
    with torch.no_grad():
        for p in [*net.temporal.parameters(), net.frame_embed]:
            p.normal_(0, 0.05)
    save_video_toy(net, folder / "video")
    return folder / "video"


def test_video_unet_starts_as_the_image_unet_per_frame_then_mixes_frames(tiny_toy):
    from dgpo.toy.model import VOCAB, tokenize
    from dgpo.toy.video_model import VIDEO_VOCAB, from_image_base, tokenize_video
    from dgpo.toy.weights import load_toy

    img = load_toy(tiny_toy)
    net = from_image_base(img, frames=4)
    assert VIDEO_VOCAB[: len(VOCAB)] == VOCAB  # an image base's word embeddings carry over
    assert {"video", "moving", "still", "apart", "towards", "three"} <= set(VIDEO_VOCAB)
    x, t = torch.randn(2, 3, 4, 32, 32), torch.rand(2)
    prompts = ["a photo of a red circle", ""]
    with torch.no_grad():
        got = net(x, t, net.text_encoder(tokenize_video(prompts, 16)))
        text = img.text_encoder(tokenize(prompts, 16))
        want = torch.stack([img(x[:, :, f], t, text) for f in range(4)], 2)
    assert got.shape == (2, 3, 4, 32, 32) and torch.allclose(got, want, atol=1e-5)
    x2 = x.clone()
    x2[:, :, 3] += 1  # change the last frame only
    with torch.no_grad():
        text = net.text_encoder(tokenize_video(prompts, 16))
        before = (net(x, t, text)[:, :, 0] - net(x2, t, text)[:, :, 0]).abs().max()
        for p in net.temporal.parameters():
            p.normal_(0, 0.5)
        after = (net(x, t, text)[:, :, 0] - net(x2, t, text)[:, :, 0]).abs().max()
    assert before < 1e-6 < 1e-4 < after  # the first frame sees the last one only through the temporal layers
    with pytest.raises(ValueError, match="4 frames"):
        net(torch.randn(1, 3, 5, 32, 32), t[:1], {k: v[:1] for k, v in text.items()})


def test_toy_video_flow_model_loads_by_kind_generates_and_is_scored(tmp_path):
    from dgpo.config import ModelConfig
    from dgpo.models.families import MODEL_KINDS
    from dgpo.models.loading import load_model
    from dgpo.rewards.toy_video import ToyVideoReward
    from dgpo.samplers.rollout import generate

    assert "toy_video" in MODEL_KINDS
    model = load_model(ModelConfig(kind="toy_video", path=str(_tiny_video(tmp_path))))
    assert model.modality == "video" and model.latent_shape() == (3, 3, 32, 32)
    metas = [vg.motion_single("circle", "left"), vg.still("square", "red")]
    cond, null = model.encode_prompts([m["prompt"] for m in metas]), model.encode_prompts(["", ""])
    x0 = generate(model, cond, null, [0, 1], 2, 1.0, 4.5, "dpm")
    assert x0.shape == (2, 3, 3, 32, 32)
    videos = model.decode(x0)
    assert videos.shape == (2, 3, 3, 32, 32) and 0 <= videos.min() and videos.max() <= 1
    assert torch.equal(videos[:, 1], ((x0[:, :, 1] + 1) / 2).clamp(0, 1))  # [B, F, 3, H, W]
    scores = ToyVideoReward()(videos, metas)
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_load_video_toy_errors_name_the_folder(tmp_path, tiny_toy):
    from dgpo.errors import InputError, MissingPathError
    from dgpo.toy import video_model

    with pytest.raises(InputError, match="not a toy video checkpoint"):
        video_model.load_video_toy(tiny_toy)  # an image checkpoint
    with pytest.raises(MissingPathError, match="missing config.json"):
        video_model.load_video_toy(tmp_path)
    if not (video_model.BUILTIN_VIDEO_BASE / "model.safetensors").is_file():
        with pytest.raises(MissingPathError, match="pretrain one"):
            video_model.load_video_toy()


def test_video_pretraining_resumes_bit_for_bit_and_writes_loadable_snapshots(tmp_path, tiny_toy):
    from safetensors.torch import load_file

    from dgpo.errors import InputError
    from dgpo.models.toy_video import ToyVideoFlowModel
    from dgpo.toy.video_model import ToyVideoModelConfig
    from dgpo.toy.video_pretrain import pretrain_video

    kw = dict(minutes=5, batch_size=2, lr=1e-3, save_every=2, cfg=ToyVideoModelConfig(frames=3),
              init=str(tiny_toy), weights={"motion_two_relative": 2.0}, seed=3)
    whole = pretrain_video(tmp_path / "whole", max_steps=4, **kw)
    pretrain_video(tmp_path / "parts", max_steps=3, **kw)  # the state of step 2, then killed at 3
    parts = pretrain_video(tmp_path / "parts", max_steps=4, resume=True, **kw)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(parts / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if k.startswith("temporal."))
    steps = [json.loads(r)["step"] for r in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    with pytest.raises(InputError, match="lr"):
        pretrain_video(tmp_path / "parts", max_steps=6, resume=True, **{**kw, "lr": 2e-3})
    model = ToyVideoFlowModel.load(tmp_path / "whole" / "step_000002")
    assert model.latent_shape() == (3, 3, 32, 32)
    # a video checkpoint continues as a video model
    more = pretrain_video(tmp_path / "more", max_steps=1, **{**kw, "init": str(whole)})
    assert ToyVideoFlowModel.load(more).net.cfg.frames == 3


def test_cli_toy_video_prompts_oracle_eval_and_pretrain(tmp_path, tiny_toy):
    from dgpo.cli import main

    assert main(["toy", "prompts", "test", "--world", "video", "--out", str(tmp_path / "t.jsonl")]) == 0
    rows = load_prompts(str(tmp_path / "t.jsonl"))
    assert rows == vg.split("test")
    # the renderer as the model, scored by the video scorer (motion included): the scorer's check
    assert main(["eval", "--model", "oracle", "--split", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "ev")]) == 0
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert res["overall"] == 1.0 and res["motion_two_relative"] == 1.0
    assert main(["toy", "pretrain", "--world", "video", "--init", str(tiny_toy), "--max-steps", "1",
                 "--batch-size", "1", "--out", str(tmp_path / "pt")]) == 0
    assert (tmp_path / "pt" / "final" / "model.safetensors").is_file()
    assert main(["toy", "pretrain", "--world", "video", "--coords", "--out", str(tmp_path / "x")]) == 2
