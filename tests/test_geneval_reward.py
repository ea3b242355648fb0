"""GenEval's colour classifier (open_clip preprocessing on transformers' CLIP) and the GenEval reward
end to end on a tiny random Mask2Former and a tiny random CLIP."""

import numpy as np
import pytest
import torch
from geneval_tiny import build_clip, build_mask2former, make_constant
from PIL import Image

from dgpo.rewards import build_reward
from dgpo.rewards.clip import clip_preprocess
from dgpo.rewards.geneval.colors import COLORS, TEMPLATES, ColorClassifier, object_crop
from dgpo.rewards.geneval.rules import Detection


@pytest.fixture(scope="module")
def scorers(tmp_path_factory):
    root = tmp_path_factory.mktemp("geneval")
    dog = make_constant(build_mask2former(root / "det"), cls_id=16)  # every query: a full-image dog
    return {"det": str(dog), "clip": str(build_clip(root / "clip"))}


@pytest.mark.parametrize("size", [(300, 200), (64, 48), (224, 500)])
def test_clip_preprocess_equals_transformers_pil_clip_processor(size):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ref = CLIPImageProcessorPil()(images=img, return_tensors="pt")["pixel_values"][0]  # PIL bicubic, even excess
    assert torch.allclose(clip_preprocess(img), ref, atol=1e-5)


def test_clip_preprocess_centre_crop_rounds_like_torchvision():
    # 339 x 224: no resize, excess 115 -> torchvision's CenterCrop starts at int(round(57.5)) = 58
    cols = np.tile(np.arange(339, dtype=np.uint8)[None, :, None], (224, 1, 3))
    x = clip_preprocess(Image.fromarray(cols))
    first = float(x[0, 0, 0]) * 0.26862954 + 0.48145466
    assert round(first * 255) == 58 and x.shape == (3, 224, 224)


def test_object_crop_equals_pil_composite_on_grey():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = rng.random((20, 30)) > 0.5
    box = (3.0, 4.0, 17.0, 19.0)
    ref = Image.composite(Image.fromarray(img), Image.new("RGB", (30, 20), "#999"), Image.fromarray(mask)).crop(box)
    assert np.array_equal(np.asarray(object_crop(img, mask, box)), np.asarray(ref))


def test_colour_classifier_uses_normalised_clip_embeddings(scorers):
    from transformers import CLIPModel, CLIPTokenizer

    clf = ColorClassifier(scorers["clip"])
    w = clf.text_weights("dog")
    model, tok = CLIPModel.from_pretrained(scorers["clip"]), CLIPTokenizer.from_pretrained(scorers["clip"])
    texts = [t.format(c=c, cls="dog") for c in COLORS for t in TEMPLATES]
    img = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    dets = [Detection("dog", 0.9, (0, 0, 30, 40), np.ones((40, 30), bool)), Detection("dog", 0.9, (5, 5, 20, 25))]
    pixels = torch.stack([clip_preprocess(object_crop(img, d.mask, d.box), 32) for d in dets])
    with torch.no_grad():
        out = model(**tok(texts, padding=True, return_tensors="pt"), pixel_values=pixels)
    mean = out.text_embeds.view(10, 3, -1).mean(1)  # text_embeds are normalised projections
    assert torch.allclose(w, (mean / mean.norm(dim=-1, keepdim=True)).T, atol=1e-5)
    expected = [COLORS[i] for i in (out.image_embeds @ w).argmax(-1).tolist()]
    assert clf.classify(img, dets) == expected


def _meta(tag, include, prompt, exclude=None):
    return {"tag": tag, "include": include, "prompt": prompt, **({"exclude": exclude} if exclude else {})}


def test_geneval_reward_end_to_end(scorers):
    fn = build_reward("geneval", scorers["det"], clip_path=scorers["clip"])
    official = build_reward("geneval", scorers["det"], clip_path=scorers["clip"], partial="official")
    images = torch.rand(3, 3, 48, 40)
    metas = [_meta("single_object", [{"class": "dog", "count": 1}], "a photo of a dog"),
             _meta("single_object", [{"class": "cat", "count": 1}], "a photo of a cat"),
             _meta("counting", [{"class": "dog", "count": 2}], "a photo of two dogs", [{"class": "dog", "count": 3}])]
    # the detector finds 10 full-image dogs (score 0.9928 > 0.9) in every image
    verdicts = fn.verdicts(images, metas)
    assert [v.correct for v in verdicts] == [True, False, False]
    assert "expected dog<3, found 10" in verdicts[2].reason
    r = fn(images[:2], metas[:2])
    assert r.shape == (2,) and r.dtype == torch.float32 and r.tolist() == [1.0, 0.0]
    ro = official(images, metas)  # the peers' count term 1 - |1 - 10| / 1, unbounded below
    assert ro[0] == pytest.approx(-8.0) and ro[1] == 0.0 and ro[2] == pytest.approx(1 - 8 / 2)
    assert fn.eval_scores(images[:1], metas[:1]) == [(1.0, 1.0)]


def test_geneval_colour_prompts_follow_the_clip_classifier(scorers):
    fn = build_reward("geneval", scorers["det"], clip_path=scorers["clip"])
    image = torch.rand(1, 3, 48, 40)
    pixels = (image[0].permute(1, 2, 0) * 255).round().byte().numpy()
    full = Detection("dog", 1.0, (0, 0, 40, 48), np.ones((48, 40), bool))  # what the detector finds
    seen = ColorClassifier(scorers["clip"]).classify(pixels, [full])[0]
    other = next(c for c in COLORS if c != seen)
    metas = [_meta("colors", [{"class": "dog", "count": 1, "color": c}], f"a photo of a {c} dog")
             for c in (seen, other)]
    verdicts = fn.verdicts(image.expand(2, -1, -1, -1), metas)
    assert [v.correct for v in verdicts] == [True, False]
    assert f"expected {other} dog>=1, found 0 {other}; and 1 {seen}" in verdicts[1].reason


def test_geneval_reward_errors_name_the_problem(scorers, tmp_path):
    fn = build_reward("geneval", scorers["det"], clip_path=scorers["clip"])
    with pytest.raises(ValueError, match="no GenEval metadata"):
        fn(torch.rand(1, 3, 32, 32), [{"prompt": "a cat", "include": []}])
    with pytest.raises(ValueError, match="reward.model_path"):
        build_reward("geneval", str(tmp_path / "missing"), clip_path=scorers["clip"])
    with pytest.raises(ValueError, match="reward.clip_path"):
        build_reward("geneval", scorers["det"], clip_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="reward.partial"):
        build_reward("geneval", scorers["det"], clip_path=scorers["clip"], partial="lenient")


def test_geneval_config_keys():
    from dgpo.config import ConfigError, load_config

    cfg = load_config(None, ["reward.name=geneval", "reward.partial=official", "reward.clip_path=/x"])
    assert (cfg.reward.name, cfg.reward.partial, cfg.reward.clip_path) == ("geneval", "official", "/x")
    with pytest.raises(ConfigError, match="reward.partial"):
        load_config(None, ["reward.partial=lenient"])
