import pytest
import torch

from dgpo.models.base import cfg_velocity, cond_index
from dgpo.models.toy import ToyFlowModel
from dgpo.samplers.rollout import generate, initial_noise
from dgpo.toy.weights import load_toy, save_toy
from dgpo.training.policy import Policy

PROMPTS = ["a photo of a red circle", "a photo of two squares", "a photo of a cross left of a circle"]


def test_interface_shapes_and_ranges(tiny_toy):
    m = ToyFlowModel.load(tiny_toy)
    cond = m.encode_prompts(PROMPTS)
    assert all(v.shape[0] == 3 for v in cond.values())
    x = torch.randn(3, *m.latent_shape())
    v = m.velocity(x, torch.rand(3) * 1000, cond)
    assert v.shape == x.shape == (3, 3, 32, 32)
    img = m.decode(torch.randn(3, *m.latent_shape()) * 3)
    assert img.shape == (3, 3, 32, 32) and img.min() >= 0 and img.max() <= 1
    null = m.encode_prompts([""] * 3)
    assert torch.equal(cfg_velocity(m, x, torch.rand(3).fill_(500.0), cond, null, 1.0),
                       m.velocity(x, torch.full((3,), 500.0), cond))
    assert not torch.allclose(m.encode_prompts(["a photo of a circle"])["pooled"],
                              m.encode_prompts(["a photo of a square"])["pooled"])


def test_generation_deterministic_under_seed_and_batch_independent(tiny_toy):
    m = ToyFlowModel.load(tiny_toy)
    cond, null = m.encode_prompts(PROMPTS), m.encode_prompts([""] * 3)
    a = generate(m, cond, null, [1, 2, 3], steps=3)
    b = generate(m, cond, null, [1, 2, 3], steps=3)
    c = generate(m, cond_index(cond, slice(1, 2)), cond_index(null, slice(1, 2)), [2], steps=3)
    assert torch.equal(a, b)
    assert torch.allclose(a[1:2], c, atol=1e-5)
    assert not torch.allclose(a, generate(m, cond, null, [4, 5, 6], steps=3))
    assert torch.equal(initial_noise((2, 2), [7])[0], torch.randn((2, 2), generator=torch.Generator().manual_seed(7)))


def test_lora_reference_is_the_base_model(tiny_toy):
    m = ToyFlowModel.load(tiny_toy)
    x, t, cond = torch.randn(2, 3, 32, 32), torch.rand(2) * 1000, m.encode_prompts(PROMPTS[:2])
    base = m.velocity(x, t, cond).detach()
    pol = Policy(m, lora_rank=4, lora_alpha=8)
    assert torch.allclose(m.velocity(x, t, cond), base, atol=1e-6)  # B = 0 at init
    with torch.no_grad():
        for n, p in zip(pol.names, pol.params):
            if "lora_B" in n:
                p.normal_(std=0.1)
    assert not torch.allclose(m.velocity(x, t, cond), base, atol=1e-4)
    with pol.reference():
        assert torch.equal(m.velocity(x, t, cond), base)
    assert all("lora_" in n for n in pol.names)
    assert any(n.endswith(s) for n in pol.names for s in ("to_q.lora_A.default.weight",))


def test_checkpoint_round_trip_and_clear_errors(tiny_toy, tmp_path):
    net = load_toy(tiny_toy)
    save_toy(net, tmp_path / "copy")
    again = load_toy(tmp_path / "copy")
    for (k, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        load_toy(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        load_toy(tmp_path / "empty")
    (tmp_path / "copy" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad config.json"):
        load_toy(tmp_path / "copy")


def test_cond_where_replaces_whole_samples(tiny_toy):
    from dgpo.models.base import cond_where

    m = ToyFlowModel.load(tiny_toy)
    cond, null = m.encode_prompts(PROMPTS), m.encode_prompts([""] * 3)
    mixed = cond_where(torch.tensor([False, True, False]), null, cond)
    for k in cond:
        assert torch.equal(mixed[k][0], cond[k][0]) and torch.equal(mixed[k][1], null[k][1])


@pytest.mark.slow
def test_toy_vocabulary_is_the_same_in_every_process():
    import subprocess
    import sys

    code = "from dgpo.toy.model import VOCAB; print(','.join(VOCAB))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout for seed in (1, 2, 3)}
    assert len(outs) == 1, outs
