"""ImageReward on transformers' BLIP modules, pinned to the official code's scores on a tiny model
(tests/data/imagereward_tiny.json, made by tests/data/imagereward_tiny_official.py from the official
THUDM/ImageReward ``score_gard``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dgpo.errors import InputError
from dgpo.rewards import build_reward
from dgpo.rewards.imagereward import ImageRewardReward, imagereward_pixels

PIN = json.loads((Path(__file__).parent / "data" / "imagereward_tiny.json").read_text())


def official_weights() -> dict[str, torch.Tensor]:
    """The tiny official model's weights: each tensor drawn in key order from one seeded generator,
    with the rule of tests/data/imagereward_tiny_official.py."""
    g, out = torch.Generator().manual_seed(0), {}
    for name, shape in PIN["keys"]:
        shape = tuple(shape)
        w = torch.randn(shape, generator=g)
        if len(shape) >= 2 and not (len(shape) == 3 and shape[0] == 1):
            out[name] = w / math.sqrt(math.prod(shape[1:]))
        elif name.endswith("weight") and "norm" in name.lower():
            out[name] = 1 + 0.1 * w
        else:
            out[name] = 0.1 * w
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imagereward")
    torch.save(official_weights(), d / "ImageReward.pt")
    (d / "vocab.txt").write_text("\n".join(PIN["vocab"]) + "\n")
    return d


def tiny(folder: Path, **kw) -> ImageRewardReward:
    return ImageRewardReward(str(folder), arch={"vision": PIN["vision"], "text": PIN["text"]}, **kw)


def test_scores_match_the_official_code(folder):
    reward = tiny(folder, batch_size=2)  # batches of 2 and 1: batching changes nothing
    images = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    metas = [{"prompt": p} for p in PIN["prompts"]]
    ids = reward.tokenizer(PIN["prompts"], padding="max_length", truncation=True, max_length=35)["input_ids"]
    assert ids == PIN["input_ids"]  # BLIP's tokenizer: [CLS] ... [SEP], padded and cut at 35
    got = reward(images, metas)
    assert got.shape == (3,) and got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(PIN["scores"]), rtol=1e-5, atol=1e-5)
    assert len(set(got.tolist())) == 3  # the images and prompts matter


def test_preprocessing_is_the_official_transform():
    from PIL import Image

    img = torch.rand(1, 3, 300, 500, generator=torch.Generator().manual_seed(2))
    px = imagereward_pixels(img)
    assert px.shape == (1, 3, 224, 224)
    # torchvision's Resize(224) on a PIL image: shortest side 224, longest int(224 * 500 / 300) = 373;
    # CenterCrop(224): left offset int(round((373 - 224) / 2)) = 74 (Python rounds half to even)
    u8 = (img[0] * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    ref = Image.fromarray(u8).resize((373, 224), Image.BICUBIC).crop((74, 0, 298, 224))
    ref = torch.from_numpy(np.asarray(ref, dtype=np.float32)).permute(2, 0, 1) / 255
    mean, std = torch.tensor((0.48145466, 0.4578275, 0.40821073)), torch.tensor((0.26862954, 0.26130258, 0.27577711))
    torch.testing.assert_close(px[0], (ref - mean.view(3, 1, 1)) / std.view(3, 1, 1))


def test_a_wrong_checkpoint_is_a_clear_error(folder, tmp_path):
    weights = official_weights()
    del weights["mlp.layers.7.weight"]
    weights["blip.visual_encoder.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    torch.save(weights, tmp_path / "ImageReward.pt")
    (tmp_path / "vocab.txt").write_text((folder / "vocab.txt").read_text())
    with pytest.raises(InputError, match="1 missing, 1 misshapen.*head.4.weight"):
        tiny(tmp_path)
    (tmp_path / "ImageReward.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="reward.imagereward_path: cannot read"):
        tiny(tmp_path)


def test_built_by_name(tmp_path):
    assert any(k.startswith("blip.vision_proj") for k, _ in PIN["keys"])  # the official state has unread keys
    with pytest.raises(InputError, match="reward.imagereward_path: cannot read"):
        build_reward("imagereward", imagereward_path=str(tmp_path / "missing.pt"))
