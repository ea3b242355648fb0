import json

import torch

from dgpo.models.toy import ToyFlowModel
from dgpo.toy.model import ToyModelConfig
from dgpo.toy.pretrain import pretrain


def test_pretrain_lowers_flow_matching_loss_and_writes_a_loadable_checkpoint(tmp_path):
    cfg = ToyModelConfig(channels=(8, 16, 16), text_dim=16, heads=2)
    last = pretrain(tmp_path, minutes=5, batch_size=16, lr=3e-3, save_every=20, cfg=cfg, max_steps=40)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    first, final = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert len(rows) == 40 and final < 0.8 * first
    assert (tmp_path / "step_000020" / "model.safetensors").is_file()
    model = ToyFlowModel.load(last)
    assert json.loads((last / "config.json").read_text())["info"]["step"] == 40
    assert model.velocity(torch.zeros(1, 3, 32, 32), torch.ones(1), model.encode_prompts([""])).shape == (1, 3, 32, 32)
