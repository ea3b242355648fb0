"""Video rewards: the modality check, image rewards on frames (FrameReward and reward.frames), Flow-GRPO's
video OCR reward on rendered text, temporal consistency on a tiny random CLIP, and multi-rewards of videos."""

import numpy as np
import pytest
import torch
from geneval_tiny import build_clip

from dgpo.config import ConfigError, load_config
from dgpo.errors import InputError
from dgpo.rewards import build_reward, build_reward_from_config, check_modality, modality_of
from dgpo.rewards.multi import MultiReward, score_parts
from dgpo.rewards.video import FrameReward, frame_indices


def brightness(images, metas):
    return images.mean(dim=(1, 2, 3))


class Recorder:
    """An image reward that records each call's input shape and metadata rows: brightness per image,
    strictly correct when brighter than 0.25."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, metas):
        self.calls.append((tuple(images.shape), list(metas)))
        return brightness(images, metas)

    def details(self, images, metas):
        r = self(images, metas)
        return r, (r > 0.25).float()

    def eval_scores(self, images, metas):
        r = self(images, metas)
        return [(bool(v > 0.25), float(v), {"double": 2 * float(v)}) for v in r]


def ramp(b=2, f=6, h=8, w=8):
    """Videos whose frame k of video i has every pixel (k + i) / 10."""
    v = torch.zeros(b, f, 3, h, w)
    for i in range(b):
        for k in range(f):
            v[i, k] = (k + i) / 10
    return v


class VideoModel:
    modality = "video"


class ImageModel:
    pass


def test_check_modality_names_the_reward_the_model_and_the_fix():
    check_modality(brightness, "image", "reward.name")  # images on an image model: fine
    check_modality(FrameReward(brightness), "video", "reward.name")
    check_modality(brightness, modality_of(ImageModel()), "x")
    with pytest.raises(InputError, match=r"reward.name: the reward brightness scores images \[B, 3, H, W\] but "
                                         r"the model is a video model .*reward.frames=all.*video_ocr, "
                                         r"temporal_consistency"):
        check_modality(brightness, modality_of(VideoModel()), "reward.name")
    with pytest.raises(InputError, match=r"dgpo eval: the reward brightness on frames scores videos "
                                         r"\[B, F, 3, H, W\] but the model is an image model"):
        check_modality(FrameReward(brightness), "image", "dgpo eval")
    multi = MultiReward({"a": brightness, "b": brightness}, {"a": 1.0, "b": 1.0})
    with pytest.raises(InputError, match=r"the reward \[a, b\] scores images"):
        check_modality(multi, "video", "reward.name")
    bad = type("Bad", (), {"modality": "audio", "__call__": brightness})()
    with pytest.raises(InputError, match="modality 'audio' is not one of"):
        check_modality(bad, "image", "reward.name")
    with pytest.raises(InputError, match="the model's modality '3d'"):
        check_modality(brightness, "3d", "reward.name")


def test_frame_reward_scores_the_selected_frames_in_one_call_and_reduces_per_video():
    videos, metas = ramp(), [{"prompt": "a"}, {"prompt": "b"}]
    assert frame_indices(6, "all") == list(range(6)) and frame_indices(6, "first") == [0]
    assert frame_indices(6, "every_k", 4) == [0, 4] and frame_indices(7, "every_k", 3) == [0, 3, 6]
    rec = Recorder()
    fn = FrameReward(rec, "every_k", every=2, reduce="mean")
    assert fn.modality == "video" and modality_of(fn) == "video"
    r = fn(videos, metas)
    assert rec.calls == [((6, 3, 8, 8), [metas[0]] * 3 + [metas[1]] * 3)]  # frames 0, 2, 4 of both: one batch
    assert torch.allclose(r, torch.tensor([0.2, 0.3]))  # mean of (0, 2, 4) / 10 and of (1, 3, 5) / 10
    assert torch.allclose(FrameReward(brightness, "all", reduce="min")(videos, metas), torch.tensor([0.0, 0.1]))
    assert torch.allclose(FrameReward(brightness, "first")(videos, metas), torch.tensor([0.0, 0.1]))
    assert torch.allclose(FrameReward(brightness, "all")(videos, metas), torch.tensor([0.25, 0.35]))
    # details: a video is strictly correct when every selected frame is
    scores, correct = FrameReward(rec, "all", reduce="min").details(videos, metas)
    assert torch.allclose(scores, torch.tensor([0.0, 0.1])) and correct.tolist() == [0.0, 0.0]
    late = videos[:, 3:]  # frames 3..5: video 0 has 0.3, 0.4, 0.5 (all correct); video 1 0.4.. (all correct)
    assert FrameReward(rec, "all").details(late, metas)[1].tolist() == [1.0, 1.0]
    assert FrameReward(rec, "all").details(videos[:, 2:], metas)[1].tolist() == [0.0, 1.0]  # 0.2 fails in video 0
    rows = FrameReward(rec, "all").eval_scores(videos[:, 2:], metas)
    assert [r[0] for r in rows] == [0.0, 1.0]
    assert rows[0][1] == pytest.approx(0.35) and rows[0][2] == {"double": pytest.approx(0.7)}
    # where the image reward has no details / eval_scores, neither has the wrapper (MultiReward reads hasattr)
    assert not hasattr(FrameReward(brightness), "details") and not hasattr(FrameReward(brightness), "eval_scores")


def test_frame_reward_refuses_images_video_rewards_and_bad_options():
    with pytest.raises(InputError, match=r"scores videos \[B, F, 3, H, W\] .*got \[2, 3, 8, 8\]"):
        FrameReward(brightness)(torch.rand(2, 3, 8, 8), [{}, {}])
    with pytest.raises(InputError, match="already scores videos"):
        FrameReward(FrameReward(brightness))
    with pytest.raises(InputError, match="reward.frames: 'some'"):
        FrameReward(brightness, "some")
    with pytest.raises(InputError, match="reward.frames_reduce: 'max'"):
        FrameReward(brightness, reduce="max")
    with pytest.raises(InputError, match="every_k needs an integer k >= 1"):
        FrameReward(brightness, "every_k", every=0)


def test_reward_frames_config_wraps_every_image_reward_and_its_rules(tmp_path):
    cfg = load_config("", ["reward.name=[colorfulness,jpeg_compressibility]", "reward.frames=every_k",
                           "reward.frames_every=3", "reward.frames_reduce=min"])
    fn = build_reward_from_config(cfg.reward)
    assert isinstance(fn, MultiReward) and fn.modality == "video"
    assert all(isinstance(p, FrameReward) and p.frames == "every_k" and p.every == 3 and p.reduce == "min"
               for p in fn.parts.values())
    videos = torch.rand(2, 7, 3, 16, 16)
    total, parts, _ = score_parts(fn, videos, [{}, {}])
    colorful = build_reward("colorfulness")
    expected = torch.stack([colorful(videos[:, k], [{}, {}]) for k in (0, 3, 6)]).min(0).values
    assert torch.allclose(parts["colorfulness"], expected)
    single = build_reward_from_config(load_config("", ["reward.name=colorfulness", "reward.frames=first"]).reward)
    assert isinstance(single, FrameReward)
    assert torch.allclose(single(videos, [{}, {}]), colorful(videos[:, 0], [{}, {}]))
    plain = build_reward_from_config(load_config("", ["reward.name=colorfulness"]).reward)
    assert modality_of(plain) == "image"  # frames=none: as it is
    # your own reward from Python is wrapped too
    own = build_reward_from_config(load_config("", ["reward.frames=all"]).reward, reward=brightness)
    assert modality_of(own) == "video" and torch.allclose(own(ramp(), [{}, {}]), torch.tensor([0.25, 0.35]))
    for overrides, message in [
        (["reward.frames=every_k"], "set reward.frames_every=k"),
        (["reward.frames_every=2"], "reward.frames_every=2 is read only with reward.frames=every_k"),
        (["reward.frames=all", "reward.frames_every=2"], "is read only with reward.frames=every_k"),
        (["reward.frames_reduce=min"], "reward.frames_reduce='min' is read only when image rewards score frames"),
        (["reward.name=video_ocr", "reward.frames=all"], "holds only video rewards; set reward.frames=none"),
        (["reward.frames=last"], "reward.frames"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config("", overrides)


def test_video_rewards_are_registered_as_video():
    from dgpo.config.rules import VIDEO_REWARDS as RULES_VIDEO
    from dgpo.config.schema import BUILTIN_REWARDS
    from dgpo.rewards.modality import VIDEO_REWARDS

    assert set(VIDEO_REWARDS) <= set(BUILTIN_REWARDS) and tuple(RULES_VIDEO) == VIDEO_REWARDS
    assert modality_of(build_reward("video_ocr")) == "video"
    cfg = load_config("", ["reward.name=[video_ocr,temporal_consistency]", "reward.weights=[1,0.5]",
                           "reward.temporal_motion_min=0.05", "reward.temporal_motion_weight=2"])
    assert cfg.reward.temporal_motion_min == 0.05


def test_multi_reward_carries_videos_and_refuses_mixed_modalities():
    seen = []

    def clip_length(videos, metas):
        seen.append(tuple(videos.shape))
        return torch.full((len(videos),), float(videos.shape[1]))

    clip_length.modality = "video"
    multi = MultiReward({"frames": FrameReward(brightness), "length": clip_length}, {"frames": 1.0, "length": 0.5})
    assert multi.modality == "video"
    r = multi(ramp(), [{}, {}])
    assert seen == [(2, 6, 3, 8, 8)] and torch.allclose(r, torch.tensor([0.25 + 3, 0.35 + 3]))
    rows = multi.eval_scores(ramp(), [{}, {}])
    assert rows[0][2] == {"reward_frames": pytest.approx(0.25), "reward_length": 6.0}
    with pytest.raises(InputError, match=r"the rewards image \(image\), clip \(video\) do not score one kind"):
        MultiReward({"image": brightness, "clip": clip_length}, {"image": 1.0, "clip": 1.0})
    from dgpo.rewards.custom import as_reward

    assert modality_of(as_reward(clip_length)) == "video"  # the user's wrapper keeps the declaration


# ---------------------------------------------------------------------------------------------- video OCR
def test_video_ocr_score_is_flow_grpos_rule_by_hand():
    from dgpo.rewards.ocr import ocr_score, video_ocr_score

    assert video_ocr_score(["hello", "hello"], "Hello") == 1.0
    assert video_ocr_score(["hello", ""], "hello") == 1.0  # a frame that scores 0 is left out of the mean
    assert video_ocr_score(["", "zzzzzz"], "hello") == 0.0  # none above 0: 0
    assert video_ocr_score(["hello", "help"], "hello") == pytest.approx((1 + 0.6) / 2)  # "help": 2 edits of 5
    assert video_ocr_score(["HEL LO"], "hel lo") == 1.0  # spaces removed, lower-cased
    # unlike the image reward, no shortcut when the target is inside a longer reading
    assert ocr_score("say hello", "hello") == 1.0
    assert video_ocr_score(["say hello"], "hello") == pytest.approx(0.4)  # "sayhello": 3 edits of 5


def _text_frame(text: str) -> torch.Tensor:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (256, 128), "white")
    if text:
        ImageDraw.Draw(img).text((12, 30), text, fill="black", font=ImageFont.load_default(size=56))
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255


def test_video_ocr_reads_every_fourth_frame_of_rendered_text():
    clip = lambda texts: torch.stack([_text_frame(t) for t in texts])  # noqa: E731
    videos = torch.stack([
        clip(["HELLO", "", "", "", "HELLO"]),  # frames 0 and 4 read: 1
        clip(["HELLO", "", "", "", ""]),  # frame 4 reads nothing (0): left out, so 1
        clip(["", "HELLO", "HELLO", "HELLO", ""]),  # the text only on frames that are not read: 0
        clip(["HELLO", "", "", "", "HELP"]),  # (1 + 0.6) / 2
    ])
    fn = build_reward("video_ocr")
    assert fn.modality == "video" and fn.frame_interval == 4
    r = fn(videos, [{"prompt": 'a sign that says "hello"'}] * 4)
    assert r.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.8])
    with pytest.raises(InputError, match="has no text in double quotes"):
        fn(videos[:1], [{"prompt": "no quotes"}])
    with pytest.raises(InputError, match=r"scores videos \[B, F, 3, H, W\]"):
        fn(videos[:, 0], [{"prompt": '"x"'}] * 4)


# ---------------------------------------------------------------------------------------------- temporal
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return str(build_clip(tmp_path_factory.mktemp("clip") / "clip"))


def moving_square(frames=8, size=32, step=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    background, colour = torch.rand(3, 1, 1, generator=g) * 0.3, torch.tensor([0.9, 0.8, 0.1]).view(3, 1, 1)
    v = background.expand(frames, 3, size, size).clone()
    for k in range(frames):
        v[k, :, 8:20, 2 + step * k : 14 + step * k] = colour
    return v


def unrelated_scenes(frames=8, size=32, seed=1):
    """Frames with nothing in common: each its own background colour and square colour and place."""
    g = torch.Generator().manual_seed(seed)
    v = torch.empty(frames, 3, size, size)
    for k in range(frames):
        v[k] = torch.rand(3, 1, 1, generator=g)
        x, y = torch.randint(0, size - 12, (2,), generator=g).tolist()
        v[k, :, y : y + 12, x : x + 12] = torch.rand(3, 1, 1, generator=g)
    return v


def test_temporal_consistency_prefers_smooth_motion_to_a_frozen_clip_and_both_to_unrelated_frames(tiny_clip):
    fn = build_reward("temporal_consistency", clip_path=tiny_clip)
    assert fn.modality == "video" and fn.motion_min == 0.01 and fn.motion_weight == 10.0
    moving = moving_square()
    frozen = moving[:1].expand_as(moving).clone()
    videos = torch.stack([moving, frozen, unrelated_scenes()])
    consistency, motion = fn.components(videos)
    assert consistency[1] == pytest.approx(1.0, abs=1e-5) and motion[1] == 0
    assert motion[0] > fn.motion_min  # the moving clip pays no penalty
    r = fn(videos, [{}] * 3)
    assert r[1] == pytest.approx(1.0 - 10.0 * 0.01, abs=1e-5)  # frozen: consistency 1 minus the whole penalty
    assert r[2] < r[1] < r[0], r.tolist()
    expected = consistency - 10.0 * (0.01 - motion).clamp(min=0)
    assert torch.allclose(r, expected)
    # the options reach it from the config; a one-frame clip has no consecutive frames
    cfg = load_config("", ["reward.name=temporal_consistency", f"reward.clip_path={tiny_clip}",
                           "reward.temporal_motion_min=0.5", "reward.temporal_motion_weight=1"])
    strict = build_reward_from_config(cfg.reward)
    assert strict.motion_min == 0.5 and torch.allclose(strict(videos, [{}] * 3),
                                                      consistency - (0.5 - motion).clamp(min=0))
    with pytest.raises(InputError, match="at least 2"):
        fn(videos[:, :1], [{}] * 3)
