"""LAION aesthetic, CLIPScore and the weighted multi-reward on a tiny random CLIP; HPSv2 without its extra."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from geneval_tiny import build_clip
from torch import nn

from dgpo.advantages import group_advantages, multi_reward_advantages
from dgpo.config import ConfigError, load_config
from dgpo.rewards import build_reward, build_reward_from_config
from dgpo.rewards.multi import MultiReward

HIDDEN = (1024, 128, 64, 16)  # the official MLP's widths; its input is the CLIP projection (16 here)


def official_mlp(dim: int) -> nn.Sequential:
    """improved-aesthetic-predictor's MLP.layers (Linear/Dropout at the same indices, no activations)."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(dim, HIDDEN[0]), nn.Dropout(0.2), nn.Linear(HIDDEN[0], HIDDEN[1]),
                         nn.Dropout(0.2), nn.Linear(HIDDEN[1], HIDDEN[2]), nn.Dropout(0.1),
                         nn.Linear(HIDDEN[2], HIDDEN[3]), nn.Linear(HIDDEN[3], 1)).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    clip = build_clip(root / "clip")
    mlp = official_mlp(16)
    # the official file's format: MLP.state_dict(), keys layers.<index>.weight/bias
    torch.save({f"layers.{k}": v for k, v in mlp.state_dict().items()}, root / "aesthetic.pth")
    return {"clip": str(clip), "mlp": mlp, "pth": str(root / "aesthetic.pth"), "root": root}


def _images(n=4, h=48, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, h, w, generator=g) * 255).round() / 255  # 8-bit values, as a PNG holds


def _processor(size=32):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size=size)


def test_aesthetic_is_the_official_mlp_on_normalised_clip_image_embeddings(tiny):
    from transformers import CLIPModel

    fn = build_reward("aesthetic", clip_path=tiny["clip"], aesthetic_path=tiny["pth"])
    images = _images()
    model = CLIPModel.from_pretrained(tiny["clip"]).eval()
    pixels = _processor()(images=list(images.permute(0, 2, 3, 1).mul(255).round().byte().numpy()),
                          return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        emb = model(pixel_values=pixels, input_ids=torch.zeros(1, 3, dtype=torch.long)).image_embeds  # unit
        expected = tiny["mlp"](emb).squeeze(1)
    assert torch.allclose(fn(images, [{}] * 4), expected, atol=1e-5)
    assert fn(images, [{}] * 4).std() > 0


def test_aesthetic_reads_safetensors_and_refuses_bad_files(tiny, tmp_path):
    from safetensors.torch import save_file

    sd = {f"layers.{k}": v.contiguous() for k, v in tiny["mlp"].state_dict().items()}
    save_file(sd, tmp_path / "a.safetensors")
    a = build_reward("aesthetic", clip_path=tiny["clip"], aesthetic_path=str(tmp_path / "a.safetensors"))
    b = build_reward("aesthetic", clip_path=tiny["clip"], aesthetic_path=tiny["pth"])
    images = _images(2)
    assert torch.equal(a(images, [{}, {}]), b(images, [{}, {}]))
    with pytest.raises(ValueError, match="reward.aesthetic_path: the aesthetic reward needs"):
        build_reward("aesthetic", clip_path=tiny["clip"])
    torch.save({k: v for k, v in sd.items() if "layers.7" not in k}, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="missing 'layers.7.weight'"):
        build_reward("aesthetic", clip_path=tiny["clip"], aesthetic_path=str(tmp_path / "short.pth"))
    torch.save({f"layers.{k}": v for k, v in official_mlp(768).state_dict().items()}, tmp_path / "l14.pth")
    with pytest.raises(ValueError,
                       match="takes 768-d embeddings but the CLIP of reward.clip_path gives 16-d"):
        build_reward("aesthetic", clip_path=tiny["clip"], aesthetic_path=str(tmp_path / "l14.pth"))


class _Exploit:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_aesthetic_weights_file_with_pickled_code_does_not_run(tiny, tmp_path):
    bad = _Exploit()
    bad.marker = str(tmp_path / "pwned")
    torch.save({"layers.0.weight": bad}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights only"):
        build_reward("aesthetic", clip_path=tiny["clip"], aesthetic_path=str(tmp_path / "evil.pth"))
    assert not (tmp_path / "pwned").exists()


def _clip_variant(src, dst, flip_text=False):
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(src).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))  # logits_per_image = 100 cos
        if flip_text:
            model.text_projection.weight.neg_()  # every cosine changes sign
    model.save_pretrained(dst)
    CLIPTokenizer.from_pretrained(src).save_pretrained(dst)
    return model


def test_clipscore_is_100_max_cos_like_torchmetrics(tiny, tmp_path):
    from transformers import CLIPTokenizer

    model = _clip_variant(tiny["clip"], tmp_path / "a")
    _clip_variant(tiny["clip"], tmp_path / "b", flip_text=True)
    prompts = ["a red cube", "two blue dogs", "x" * 300, "a photo"]  # the third: over 77 tokens, truncated
    metas = [{"prompt": p} for p in prompts]
    images = _images()
    tok = CLIPTokenizer.from_pretrained(tiny["clip"])(prompts, padding=True, truncation=True, max_length=77,
                                                      return_tensors="pt")
    pixels = _processor()(images=list(images.permute(0, 2, 3, 1).mul(255).round().byte().numpy()),
                          return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixels, **tok).logits_per_image.diagonal()  # transformers' 100 cos
    a = build_reward("clipscore", clip_path=str(tmp_path / "a"), paper_units=True)(images, metas)
    b = build_reward("clipscore", clip_path=str(tmp_path / "b"), paper_units=True)(images, metas)
    assert torch.allclose(a, logits.clamp(min=0), atol=1e-4)
    assert torch.allclose(b, (-logits).clamp(min=0), atol=1e-4)
    assert torch.equal(torch.minimum(a, b), torch.zeros(4)) and (a + b > 0).all()  # one side clamped to 0
    with pytest.raises(ValueError, match="needs a 'prompt'"):
        build_reward("clipscore", clip_path=str(tmp_path / "a"))(images[:1], [{}])


def test_clipscore_training_reward_is_the_official_scorers_logits_over_30(tiny, tmp_path):
    """flow_grpo/clip_scorer.py (DGPO's copy): CLIP's logits_per_image / 30 on the float image (no 8-bit
    rounding, no clamp: a negative cosine stays negative), with max_length padding (the same numbers as
    padding to the longest prompt: CLIP pools the EOS token under a causal mask)."""
    from transformers import CLIPTokenizer

    from dgpo.rewards.clip import CLIP_MEAN, CLIP_STD

    model = _clip_variant(tiny["clip"], tmp_path / "b", flip_text=True)  # negative cosines
    prompts = ["a red cube", "two blue dogs"]
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))  # CLIP's size: no resize
    tok = CLIPTokenizer.from_pretrained(tiny["clip"])(prompts, padding="max_length", truncation=True,
                                                      max_length=77, return_tensors="pt")
    norm = (images - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        official = model(pixel_values=norm, **tok).logits_per_image.diagonal() / 30
    got = build_reward("clipscore", clip_path=str(tmp_path / "b"))(images, [{"prompt": p} for p in prompts])
    assert (official < 0).any() and torch.allclose(got, official, atol=1e-6)  # not clamped at 0
    # DiffusionNFT's copy of the scorer divides by 100 (reward.clipscore_divisor)
    nft = build_reward("clipscore", clip_path=str(tmp_path / "b"), clipscore_divisor=100.0)
    assert torch.allclose(nft(images, [{"prompt": p} for p in prompts]), official * 30 / 100, atol=1e-6)


def test_hpsv2_without_its_extra_is_a_clear_error():
    if importlib.util.find_spec("open_clip") is not None:
        pytest.skip("open_clip is installed: the error path does not apply")
    with pytest.raises(ImportError, match=r"pip install 'dgpo\[hps\]'"):
        build_reward("hpsv2")


def test_hps_preprocess_resizes_the_short_side_and_crops_like_torchvision():
    from dgpo.rewards.hps import hps_preprocess

    cols = torch.arange(339, dtype=torch.float32).view(1, 1, 1, 339).expand(1, 3, 224, 339) / 255  # no resize
    x = hps_preprocess(cols)
    assert x.shape == (1, 3, 224, 224)
    assert round((float(x[0, 0, 0, 0]) * 0.26862954 + 0.48145466) * 255) == 58  # int(round(115 / 2)) = 58
    y = hps_preprocess(torch.rand(2, 3, 64, 96))
    assert y.shape == (2, 3, 224, 224)


def test_multi_reward_is_the_weighted_sum_and_shares_one_clip(tiny):
    cfg = load_config(None, ["reward.name=[aesthetic,clipscore]", "reward.weights=[1.0,0.5]",
                             f"reward.clip_path={tiny['clip']}", f"reward.aesthetic_path={tiny['pth']}"])
    fn = build_reward_from_config(cfg.reward)
    assert isinstance(fn, MultiReward) and fn.parts["aesthetic"].clip is fn.parts["clipscore"].clip
    images, metas = _images(), [{"prompt": p, "tag": "t"} for p in ("a", "b c", "d", "e")]
    parts = fn.components(images, metas)
    aes = build_reward("aesthetic", clip_path=tiny["clip"], aesthetic_path=tiny["pth"])(images, metas)
    cs = build_reward("clipscore", clip_path=tiny["clip"])(images, metas)
    assert torch.allclose(parts["aesthetic"], aes) and torch.allclose(parts["clipscore"], cs)
    assert torch.allclose(fn(images, metas), aes + 0.5 * cs, atol=1e-5)
    scored = fn.eval_scores(images, metas)
    assert [sorted(s[2]) for s in scored] == [["reward_aesthetic", "reward_clipscore"]] * 4
    assert np.allclose([s[2]["reward_aesthetic"] for s in scored], aes.numpy(), atol=1e-5)
    assert np.allclose([s[2]["reward_clipscore"] for s in scored], cs.numpy(), atol=1e-4)
    assert np.allclose([s[0] for s in scored], [s[1] for s in scored])  # no strict component: the reward


def test_single_reward_stays_plain_and_list_errors_name_the_key():
    assert not isinstance(build_reward_from_config(load_config(None).reward), MultiReward)
    one = build_reward_from_config(load_config(None, ["reward.name=[colorfulness]"]).reward)
    assert isinstance(one, MultiReward) and list(one.parts) == ["colorfulness"]
    for overrides, match in [(["reward.weights=[1,2]"], r"reward.weights: 2 weights for 1 rewards"),
                             (["reward.name=[ocr,ocr]"], r"\['ocr', 'ocr'\] names a reward twice"),
                             (["reward.name=[ocr,bogus]"], r"reward.name\[1\]: 'bogus' is not one of"),
                             (["reward.name=[pickscore,geneval]", "reward.model_path=/m"], "both read it"),
                             (["reward.name=remote"], "reward.url: the remote reward needs")]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, overrides)


def test_multi_reward_advantages_weighted_sum_and_per_component():
    gids = torch.tensor([0, 0, 0, 1, 1, 1])
    big = torch.tensor([0.0, 50.0, 100.0, 10.0, 10.0, 10.0])  # range 100; group 1 flat
    small = torch.tensor([0.3, 0.2, 0.1, 0.0, 1.0, 0.5])
    w = {"big": 1.0, "small": 1.0}
    total = big + small
    adv, zero = multi_reward_advantages(total, {"big": big, "small": small}, w, gids, "weighted_sum")
    ref, ref_zero = group_advantages(total, gids)
    assert torch.equal(adv, ref) and torch.equal(zero, ref_zero)
    adv, zero = multi_reward_advantages(total, {"big": big, "small": small}, w, gids, "per_component")
    a_big, _ = group_advantages(big, gids, clip_max=float("inf"))
    a_small, _ = group_advantages(small, gids, clip_max=float("inf"))
    assert torch.allclose(adv, (a_big + a_small).clamp(-5, 5))
    assert abs(float(adv[0])) < 3e-3 and abs(float(adv[1])) < 1e-6  # opposite ranks cancel (up to eps)
    assert zero.tolist() == [False, False]
    scaled, _ = multi_reward_advantages(total, {"big": big / 100, "small": small}, w, gids, "per_component")
    assert torch.allclose(scaled, adv, atol=1e-3)  # invariant to a component's scale


def test_drawbench_protocol_scores_clipscore_and_aesthetic(tiny, tiny_toy, tmp_path):
    from dgpo.cli import main

    out = tmp_path / "db"
    assert main(["eval", "--protocol", "drawbench", "--model", str(tiny_toy), "--max-prompts", "2",
                 "--steps", "1", "--device", "cpu", "--clip", tiny["clip"], "--aesthetic", tiny["pth"],
                 "--rewards", "clipscore,aesthetic,colorfulness", "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert {"clipscore", "aesthetic", "colorfulness"} <= set(res) and not res["skipped_rewards"]
    assert all(r["clipscore"] >= 0 for r in res["rows"]) and res["n_images"] == 2
