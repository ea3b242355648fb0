import json

import pytest
import torch

from dgpo.models.toy import ToyFlowModel
from dgpo.toy.model import ToyModelConfig
from dgpo.toy.pretrain import pretrain


@pytest.mark.slow
def test_pretrain_lowers_flow_matching_loss_and_writes_a_loadable_checkpoint(tmp_path):
    cfg = ToyModelConfig(channels=(8, 16, 16), text_dim=16, heads=2)
    last = pretrain(tmp_path, minutes=5, batch_size=16, lr=3e-3, save_every=20, cfg=cfg, max_steps=40)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    first, final = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert len(rows) == 40 and final < 0.9 * first  # lr is still warming up (200 steps)
    assert (tmp_path / "step_000020" / "model.safetensors").is_file()
    model = ToyFlowModel.load(last)
    assert json.loads((last / "config.json").read_text())["info"]["step"] == 40
    v = model.velocity(torch.zeros(1, 3, 32, 32), torch.full((1,), 1000.0), model.encode_prompts([""]))
    assert v.shape == (1, 3, 32, 32)


def test_continued_pretraining_moves_every_ema_parameter(tiny_toy, tmp_path):
    from safetensors.torch import load_file

    last = pretrain(tmp_path, minutes=5, batch_size=8, lr=1e-3, ema_decay=0.5, save_every=100,
                    max_steps=3, init=tiny_toy, weights={"single_object": 4.0})
    a = load_file(str(tiny_toy / "model.safetensors"))
    b = load_file(str(last / "model.safetensors"))
    # a key bias shifts every attention logit of a query equally: softmax ignores it (zero gradient)
    unchanged = [k for k in a if torch.equal(a[k], b[k]) and not k.endswith("to_k.bias")]
    assert not unchanged, unchanged[:3]


def test_position_embeddings_start_as_the_same_function_then_learn(tiny_toy, tmp_path):
    from safetensors.torch import load_file

    from dgpo.toy.model import tokenize
    from dgpo.toy.weights import load_toy, with_pos_embed

    old = load_toy(tiny_toy)
    new = with_pos_embed(old)
    assert new.cfg.pos_embed and new.down3.attn.pos.shape == (64, 16) and new.down2.cross.pos.shape == (256, 16)
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    text = old.text_encoder(tokenize(["a photo of a circle left of a square", ""], 16))
    assert torch.equal(old(x, t, text), new(x, t, text))
    last = pretrain(tmp_path, minutes=5, batch_size=8, lr=1e-3, ema_decay=0.5, save_every=100,
                    max_steps=3, init=tiny_toy, pos_embed=True)
    state = load_file(str(last / "model.safetensors"))
    pos = [k for k in state if k.endswith(".pos") and not k.startswith("text_encoder")]
    assert len(pos) == 8 and all(state[k].abs().sum() > 0 for k in pos)  # learned away from zero
    assert load_toy(last).cfg.pos_embed  # the config says so, and loads strictly


@pytest.mark.slow
def test_resumed_pretraining_equals_an_uninterrupted_run(tmp_path):
    """--resume continues bit for bit: the same batches, noise, AdamW moments and EMA."""
    from safetensors.torch import load_file

    from dgpo.errors import InputError

    cfg = ToyModelConfig(channels=(8, 16, 16), text_dim=16, heads=2, coords=True)
    kw = dict(minutes=5, batch_size=4, lr=1e-3, save_every=2, cfg=cfg, weights={"position": 2.0}, seed=3)
    whole = pretrain(tmp_path / "whole", max_steps=6, **kw)
    pretrain(tmp_path / "parts", max_steps=5, **kw)  # states of steps 2 and 4, then killed at 5
    (tmp_path / "parts" / "log.jsonl").open("a").write('{"step": 6, "lo')  # a row torn by a kill
    newest = tmp_path / "parts" / "checkpoints" / "step_000004" / "train.safetensors"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))  # corrupted: the resume falls back to step 2
    parts = pretrain(tmp_path / "parts", max_steps=6, resume=True, **kw)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(parts / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(r)["step"] for r in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    try:
        pretrain(tmp_path / "parts", max_steps=9, resume=True, **{**kw, "lr": 2e-3})
    except InputError as e:
        assert "lr" in str(e)
    else:
        raise AssertionError("a resume with another learning rate must be refused")
    try:
        pretrain(tmp_path / "parts", max_steps=9, **kw)
    except InputError as e:
        assert "--resume" in str(e)
    else:
        raise AssertionError("a fresh start over a run must be refused")


def test_coordinate_channels_reach_the_output_and_round_trip(tmp_path):
    from dgpo.toy.model import ToyUNet, coord_grid, tokenize
    from dgpo.toy.weights import load_toy, save_toy

    grid = coord_grid(torch.zeros(2, 3, 4, 6))
    assert grid.shape == (2, 2, 4, 6)
    assert torch.equal(grid[0, 0, 0], torch.linspace(-1, 1, 6))
    assert torch.equal(grid[1, 1, :, 5], torch.linspace(-1, 1, 4))
    torch.manual_seed(0)
    model = ToyUNet(ToyModelConfig(channels=(8, 16, 16), text_dim=16, heads=2, coords=True)).eval()
    torch.nn.init.normal_(model.out[-1].weight)  # zero-initialised output: give it a response
    x, t = torch.zeros(1, 3, 32, 32), torch.full((1,), 0.9)
    text = model.text_encoder(tokenize([""], 16))
    with torch.no_grad():
        v = model(x, t, text)
    blind = ToyUNet(model.cfg).eval()
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():
        blind.stem.weight[:, 3:] = 0  # the coordinate channels cut off
        assert (blind(x, t, text) - v).abs().max() > 1e-3  # they reach the output
    save_toy(model, tmp_path / "m")
    again = load_toy(tmp_path / "m")
    assert again.cfg.coords and again.stem.in_channels == 5
    with torch.no_grad():
        assert torch.equal(again(x, t, text), v)
