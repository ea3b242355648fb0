"""Out-of-domain rewards (``eval.extra_rewards``): the toy statistics by hand, their logging at every eval
on the eval's own images, faults that leave them null, the reward-hacking verdict, the config errors."""

import json
import math

import numpy as np
import pytest
import torch

from dgpo.config import load_config
from dgpo.errors import ConfigError
from dgpo.evaluation import evaluate, extra_scorer
from dgpo.rewards import build_reward, modality_of
from dgpo.rewards.toy_ood import toy_off_palette, toy_sharpness
from dgpo.training import ood, runlog
from dgpo.training.trainer import Trainer

NAN = float("nan")


def test_toy_statistics_by_hand():
    img = torch.zeros(2, 3, 5, 5)
    img[0, :, 2, 2] = 1.0  # a white pixel in the middle: grey 1
    img[1, :, 0, 0] = 0.5  # grey: 0.5 from black and from white -> off-palette
    img[1, :, 0, 1] = torch.tensor([0.9, 0.1, 0.05])  # 0.1 from red -> on the palette
    img[1, :, 4, 4] = torch.tensor([0.0, 0.74, 0.0])  # 0.26 from green, 0.74 from black -> off-palette
    # Laplacian on the 3x3 interior: image 0: 4 at the centre, -1 at its 4 neighbours; image 1: only (1, 1)
    # has a lit neighbour, (0, 1) of grey 0.35 -> -0.35; the corner pixels are nobody's neighbours
    assert torch.allclose(toy_sharpness(img), torch.tensor([8 / 9, 0.35 / 9]))
    assert torch.allclose(toy_off_palette(img), torch.tensor([1.0, 1 - 2 / 25]))
    for name, fn in (("toy_off_palette", toy_off_palette), ("toy_sharpness", toy_sharpness)):
        built = build_reward(name)
        assert modality_of(built) == "image" and torch.equal(built(img, [{}] * 2), fn(img))


def test_image_quality_is_the_same_statistic_as_the_rewards():
    from dgpo.evaluation import image_quality

    x = torch.rand(3, 3, 8, 8)
    q = image_quality(x.numpy())
    assert q["sharpness"] == pytest.approx(float(toy_sharpness(x).mean()), rel=1e-6)
    assert q["off_palette"] == pytest.approx(1 - float(toy_off_palette(x).mean()), abs=1e-7)


def _images(metas, seeds):
    return torch.stack([torch.full((3, 6, 6), (s % 7) / 7.0) for s in seeds])


def test_evaluate_scores_extras_on_the_same_images_and_a_fault_is_null():
    metas = [{"prompt": f"p{i}", "tag": "reward"} for i in range(5)]
    seen = []

    def brightness(images, ms):
        seen.append(images.clone())
        return images.mean((1, 2, 3))

    def broken(images, ms):
        raise RuntimeError("scorer down")

    def half_nan(images, ms):  # a NaN for the first image of each batch
        return torch.tensor([NAN] + [1.0] * (len(ms) - 1))

    score = lambda imgs, ms: [(1.0, float(i)) for i in range(len(ms))]  # noqa: E731
    res = evaluate(_images, metas, batch_size=2, score_fn=score,
                   extra=extra_scorer({"bright": brightness, "broken": broken, "half": half_nan}))
    by_hand = torch.cat(seen).mean((1, 2, 3))  # the eval's own images, batch by batch
    assert [r["extra"]["bright"] for r in res["rows"]] == pytest.approx(by_hand.tolist())
    assert res["extra"]["bright"] == pytest.approx(float(by_hand.mean()))
    assert res["extra_se"]["bright"] == pytest.approx(float(by_hand.std() / math.sqrt(5)), rel=1e-5)
    assert res["extra"]["broken"] is None and res["extra_se"]["broken"] is None
    assert res["extra"]["half"] == 1.0  # 3 batches (2, 2, 1): 3 NaNs left out
    assert res["extra_unscored"] == {"broken": 5, "half": 3}
    assert res["n_images"] == 5 and "unscored_images" not in res  # the target is untouched
    assert res["reward_se"] == pytest.approx(float(np.std([0, 1, 0, 1, 0], ddof=1) / math.sqrt(5)))


def _cfg(tiny, out, *extra):
    return load_config(None, [
        f"model.path={tiny}", f"run.out_dir={out}", "run.epochs=2", "run.eval_every=1", "run.sample_every=0",
        "run.save_every=0", "run.log_with=none", "train.prompts_per_epoch=2", "train.group_size=4",
        "train.batch_size=4", "train.lora_rank=4", "train.lora_alpha=8", "sampler.steps=3",
        "timesteps.trunc_steps=2", "timesteps.count=2", "dgpo.switch_ema_ref=0", "eval.max_prompts=4",
        "eval.batch_size=3", "eval.min_per_category=0", "reward.name=jpeg_incompressibility",
        "reward.backoff_s=0", *extra])


def _recording(monkeypatch):
    """Every eval's images, as the trainer's eval generated them (grids excluded)."""
    import dgpo.training.trainer as trainer_mod

    calls, real = [], trainer_mod.evaluate

    def spy(image_fn, *args, **kwargs):
        calls.append([])
        return real(lambda m, s: calls[-1].append(image_fn(m, s)) or calls[-1][-1], *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "evaluate", spy)
    return calls


def test_extras_are_logged_at_every_eval_as_the_rewards_score_the_same_images(tiny_toy, tmp_path, monkeypatch):
    calls = _recording(monkeypatch)
    out = tmp_path / "run"
    tr = Trainer(_cfg(tiny_toy, out))
    assert list(tr.extra_rewards) == ["toy_off_palette", "toy_sharpness"]  # the demo config's
    summary = tr.fit()
    evals = [json.loads(x) for x in (out / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 1, 2] and len(calls) == 3
    for e, images in zip(evals, calls):
        x = torch.cat(images)
        for name, fn in (("toy_off_palette", toy_off_palette), ("toy_sharpness", toy_sharpness)):
            assert e["extra"][name] == pytest.approx(float(fn(x).mean()), rel=1e-5), name
            assert e["extra_se"][name] == pytest.approx(float(fn(x).std() / math.sqrt(len(x))), rel=1e-4, abs=1e-9)
        assert runlog.scalars(e, "eval/")["eval_extra/toy_sharpness"] == e["extra"]["toy_sharpness"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["extra_rewards"] == summary["extra_rewards"]
    c = saved["extra_rewards"]["toy_sharpness"]
    assert (c["start"], c["end"]) == (evals[0]["extra"]["toy_sharpness"], evals[-1]["extra"]["toy_sharpness"])
    assert c["change"] == pytest.approx(c["end"] - c["start"])
    assert isinstance(saved["reward_hacking"]["flagged"], bool) and (out / "plots" / "eval.png").is_file()


def test_a_failing_extra_reward_is_null_and_the_run_goes_on(tiny_toy, tmp_path):
    out = tmp_path / "run"
    tr = Trainer(_cfg(tiny_toy, out, "run.epochs=1", "reward.retries=1"))
    calls = []

    def broken(images, metas):
        calls.append(len(metas))
        raise RuntimeError("out-of-domain scorer crashed")

    tr.extra_rewards["toy_sharpness"] = broken
    tr.fit()
    evals = [json.loads(x) for x in (out / "evals.jsonl").read_text().splitlines()]
    assert tr.step == 1 and len(evals) == 2
    for e in evals:
        assert e["extra"]["toy_sharpness"] is None and e["extra_unscored"] == {"toy_sharpness": 4}
        assert 0.0 <= e["extra"]["toy_off_palette"] <= 1.0 and math.isfinite(e["overall"])
    assert calls == [3, 3, 1, 1] * 2  # 2 batches, each retried once (reward.retries=1), at each of 2 evals
    assert list(json.loads((out / "summary.json").read_text())["extra_rewards"]) == ["toy_off_palette"]


def _history(target, extra, se=0.01):
    """Evals with the target reward and one out-of-domain reward, each with standard error ``se``."""
    return [{"step": i, "reward": t, "reward_se": se, "extra": {"ood": x}, "extra_se": {"ood": se}}
            for i, (t, x) in enumerate(zip(target, extra))]


def test_the_hacking_verdict_on_synthetic_histories():
    # threshold: 2 standard errors of the difference, 2 * sqrt(0.01^2 + 0.01^2) = 0.0283
    hacked = ood.verdict(_history([0.40, 0.50, 0.60], [0.90, 0.85, 0.80]))
    assert hacked["flagged"] and hacked["fell"] == ["ood"]
    assert hacked["target"]["change"] == pytest.approx(0.2) and hacked["target"]["threshold"] == pytest.approx(
        2 * math.sqrt(2) * 0.01)
    assert not ood.verdict(_history([0.40, 0.50, 0.60], [0.80, 0.85, 0.90]))["flagged"]  # both rise
    within = ood.verdict(_history([0.40, 0.50, 0.60], [0.90, 0.95, 0.88]))  # -0.02 < 0.0283: noise
    assert not within["flagged"] and within["fell"] == []
    flat = ood.verdict(_history([0.40, 0.45, 0.42], [0.90, 0.85, 0.80]))  # +0.02: the target did not rise
    assert not flat["flagged"] and flat["fell"] == ["ood"]
    noisy = ood.verdict(_history([0.40, 0.50, 0.60], [0.90, 0.85, 0.80], se=0.05))  # -0.1 < 2 * 0.0707
    assert not noisy["flagged"]
    # a missing eval (its target failed) and an eval whose extra failed are left out of the change
    gaps = _history([0.40, 0.50, 0.60], [0.90, 0.85, 0.80])
    gaps.insert(0, {"step": -1, "reward": None, "overall": None})
    gaps[1]["extra"]["ood"] = None
    g = ood.verdict(gaps)
    assert g["flagged"] and ood.extra_changes(gaps)["ood"]["start"] == 0.85
    summary = ood.summary_fields(_history([0.40, 0.60], [0.90, 0.80]))
    assert summary["extra_rewards"]["ood"]["change"] == pytest.approx(-0.1)
    line = ood.hacking_line(summary)
    assert line.startswith("REWARD HACKING?") and "ood 0.900 -> 0.800" in line and "\n" not in line
    assert "no reward hacking flagged" in ood.hacking_line(ood.summary_fields(_history([0.4, 0.6], [0.8, 0.9])))
    assert ood.summary_fields([{"step": 0, "reward": 0.5}]) == {} and ood.hacking_line({}) == ""


@pytest.mark.parametrize("overrides,words", [
    (["eval.extra_rewards=[toy_geneval]"], r"eval.extra_rewards\[0\]: 'toy_geneval' is the training reward"),
    (["reward.name=[toy_geneval,toy_sharpness]"], r"eval.extra_rewards\[1\]: 'toy_sharpness' is the training"),
    (["eval.extra_rewards=[aesthetics]"], r"eval.extra_rewards\[0\]: 'aesthetics' is not one of"),
    (["eval.extra_rewards=[toy_sharpness,toy_sharpness]"], r"eval.extra_rewards\[1\]: 'toy_sharpness' is named twice"),
    (["eval.extra_rewards=[temporal_consistency]"], r"eval.extra_rewards\[0\]: 'temporal_consistency' scores videos"),
    (["eval.extra_rewards=[remote]"], r"eval.extra_rewards\[0\]: 'remote' needs its server's URL \(reward.url\)"),
    (["eval.extra_rewards=toy_sharpness"], r"eval.extra_rewards: expected a list"),
])
def test_config_errors_name_the_key(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config(None, overrides)


def test_a_video_model_scores_image_extras_on_its_frames():
    cfg = load_config(None, ["model.kind=toy_video", "reward.name=toy_video", "train.prompts=toy_video:train",
                             "eval.split=toy_video:test", "eval.extra_rewards=[toy_sharpness,toy_video_strict]"])
    fns = ood.build_extra_rewards(cfg, "cpu", "video")
    assert [modality_of(f) for f in fns.values()] == ["video", "video"]
    videos = torch.rand(2, 4, 3, 8, 8)
    by_hand = toy_sharpness(videos.flatten(0, 1)).view(2, 4).mean(1)  # every frame, their mean
    assert torch.allclose(fns["toy_sharpness"](videos, [{}] * 2), by_hand)
    from dataclasses import replace

    from dgpo.errors import InputError

    image = load_config(None)
    bad = replace(image, eval=replace(image.eval, extra_rewards=["toy_video"]))  # past the config's rules
    with pytest.raises(InputError, match=r"eval.extra_rewards\[0\]: the reward .* scores videos"):
        ood.build_extra_rewards(bad, "cpu", "image")
