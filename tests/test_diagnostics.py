import pytest
import torch

from dgpo.evaluation import evaluate, markdown_table, pass_at_n
from dgpo.training.diagnostics import TravelMeter, group_correct_shares, reward_by_category


def _row(tag, index, sample, correct):
    return {"tag": tag, "index": index, "sample": sample, "correct": correct}


def test_pass_at_n_counts_prompts_with_any_correct_among_first_n():
    rows = [
        _row("counting", 0, 0, False), _row("counting", 0, 1, True),   # hit at sample 1
        _row("counting", 1, 0, False), _row("counting", 1, 1, False),  # miss
        _row("counting", 1, 2, True),                                  # beyond n=2: ignored
        _row("position", 2, 0, True), _row("position", 2, 1, True),
    ]
    p = pass_at_n(rows, 2)
    assert p == {"n": 2, "overall": 0.75, "counting": 0.5, "position": 1.0}
    assert pass_at_n(rows, 3)["counting"] == 1.0
    assert pass_at_n(rows, 1)["counting"] == 0.0


def test_evaluate_reports_pass_at_n_only_for_several_images():
    metas = [{"tag": "colors", "prompt": f"p{i}", "include": []} for i in range(3)]
    # the image's value is its seed (i * 97 + k): prompt 0 never correct, prompt 1 on its 2nd image,
    # prompt 2 on both
    fn = lambda ms, seeds: torch.stack([torch.full((3, 4, 4), float(s % 1000)) for s in seeds])
    score = lambda imgs, ms: [(float(i[0, 0, 0] in (98.0, 194.0, 195.0)), 0.0) for i in imgs]
    one = evaluate(fn, metas, 1, seed=0, score_fn=score)
    assert "pass_at_n" not in one
    two = evaluate(fn, metas, 2, seed=0, score_fn=score)  # seeds: i * 97 + k
    assert two["colors"] == 3 / 6 and two["pass_at_n"]["colors"] == 2 / 3
    assert "pass@2" in markdown_table({"m": two})


def test_group_correct_shares_and_category_rewards():
    correct = torch.tensor([0, 0, 1, 0, 0, 0, 1, 1.0])
    gids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert group_correct_shares(correct, gids) == {"best_correct_share": 0.5, "correct_share": 0.375}
    metas = [{"tag": "a"}, {"tag": "a"}, {"tag": "b"}, {}]
    out = reward_by_category(torch.tensor([1.0, 0.0, 0.5, 9.0]), metas)
    assert out == {"reward/a": 0.5, "reward/b": 0.5}


def test_travel_meter_measures_step_and_total_distance():
    p = torch.nn.Parameter(torch.zeros(4))
    m = TravelMeter([p])
    with torch.no_grad():
        p += torch.tensor([3.0, 0, 0, 0])
    assert m.measure() == {"update_norm": 3.0, "dist_from_start": 3.0}
    with torch.no_grad():
        p += torch.tensor([0, 4.0, 0, 0])
    assert m.measure() == {"update_norm": 4.0, "dist_from_start": 5.0}


@pytest.mark.parametrize("travel", [True, False])
def test_training_logs_pass_at_g_of_the_rollouts_with_a_geneval_style_reward(tiny_toy, tmp_path, travel):
    import json

    from dgpo.config import load_config
    from dgpo.training.trainer import Trainer

    cfg = load_config(None, [
        f"model.path={tiny_toy}", f"run.out_dir={tmp_path}", "run.epochs=1", "run.sample_every=0",
        "run.eval_at_ends=false", "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=8",
        "train.lora_rank=4", "sampler.steps=3", "timesteps.trunc_steps=2", "timesteps.count=1",
        "reward.name=toy_geneval", f"train.travel_metrics={str(travel).lower()}"])
    trainer = Trainer(cfg)
    trainer.fit()
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= row["correct_share"] <= row["best_correct_share"] <= 1.0
    assert any(k.startswith("reward/") for k in row)
    if travel:
        assert row["dist_from_start"] > 0 and row["update_norm"] > 0
    else:  # no copies of the weights kept, no travel logged
        assert trainer.travel is None and "dist_from_start" not in row and "update_norm" not in row
