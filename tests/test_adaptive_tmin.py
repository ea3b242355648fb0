"""The adaptive timestep clip (``timesteps.mode=adaptive``, dgpo.timesteps.AdaptiveTMin): its update on
hand-built statistics, its bounds, determinism, checkpoint state, and a short toy run that resumes exactly."""

import json
import math
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dgpo.algorithms import ALGORITHMS, LoopContext
from dgpo.config import load_config
from dgpo.errors import CheckpointError, ConfigError
from dgpo.models.loading import load_model
from dgpo.timesteps import AdaptiveTMin, train_timesteps
from dgpo.training.checkpoint_checks import check_trainer_state
from dgpo.training.distributed import Layout
from dgpo.training.policy import Policy
from dgpo.training.trainer import Trainer

K = 8  # samples per training time = 2K
A = torch.tensor([1.0, -1.0] * 16)
AGREE, HALF, AGAINST = [1.0, -1.0], [1.0, 0.0], [0.0, 1.0]  # -delta with cos(A, -delta) 1, 1/sqrt(2), -1/sqrt(2)
R2 = 2 ** -0.5


def rule(t_min=0.6, lo=0.2, hi=0.8, rate=0.05, ratio=0.5, decay=0.0) -> AdaptiveTMin:
    return AdaptiveTMin(t_min, lo, hi, rate, ratio, decay)


def step(r: AdaptiveTMin, edge: list[float] | None, above: list[float] | None, k: int = K) -> float:
    """One optimizer step: a training time at the range's low edge and one above it (delta = -values)."""
    lo_sigma = r.t_min + 0.1 * (1 - r.t_min)  # inside the lowest quarter of [t_min, 1]
    if edge is not None:
        r.observe(0, lo_sigma, A[:2 * k], -torch.tensor(edge * k))
    if above is not None:
        r.observe(1, 0.95, A[:2 * k], -torch.tensor(above * k))
    return r.update()


def test_the_edge_agreeing_widens_the_range_downward_by_the_margin():
    r = rule()
    # sums [A(-delta), A^2, delta^2, n]: edge [8, 16, 8, 16], above [16, 16, 16, 16], whole [24, 32, 24, 32]:
    # cosines 1/sqrt(2), 1 and sqrt(0.75) (over Z / sqrt(32) = 0.354); t_min -= 0.05 (1/sqrt(2) - 0.5) / sqrt(0.75)
    assert step(r, HALF, AGREE) == pytest.approx(0.6 - 0.05 * (R2 - 0.5) / 0.75 ** 0.5, abs=1e-7)
    assert r.agreement(r.edge) == pytest.approx(R2) and r.agreement(r.above) == pytest.approx(1.0)


def test_the_edge_disagreeing_narrows_the_range_by_at_most_the_rate():
    r = rule()
    assert step(r, AGAINST, AGREE, k=16) == pytest.approx(0.65)  # margin (-0.707 - 0.5) / 0.289 clipped to -1
    r = rule(ratio=0.9)
    assert step(r, HALF, AGREE) == pytest.approx(0.6 - 0.05 * (R2 - 0.9) / 0.75 ** 0.5, abs=1e-7)  # a small narrowing


def test_t_min_stays_within_its_bounds():
    r = rule(rate=0.3)
    assert [round(step(r, AGAINST, AGREE, k=16), 6) for _ in range(3)] == [0.8, 0.8, 0.8]
    r = rule(rate=0.3, ratio=0.0)  # ratio 0: an edge that agrees as the whole range widens by the full rate
    assert [round(step(r, AGREE, AGREE), 6) for _ in range(3)] == [0.3, 0.2, 0.2]


def test_it_holds_until_the_whole_ranges_agreement_is_positive_and_significant():
    r = rule()
    assert step(r, AGREE, None) == 0.6 and r.agreement(r.above) is None  # nothing seen above the edge yet
    assert step(r, AGAINST, AGAINST) == 0.6 and r.agreement(r.above) < 0  # no agreement to compare with
    assert step(r, [0.0, 0.0], [0.0, 0.0]) == 0.6 and r.agreement(r.edge) is None  # the base: delta 0
    assert step(r, AGAINST, AGREE, k=8) == 0.6  # whole range 0.289 on 32 samples: under Z / sqrt(32) = 0.354
    assert step(r, AGAINST, AGREE, k=16) == pytest.approx(0.65)  # 0.289 on 64 samples: over 0.25


def test_a_non_finite_step_is_never_pooled_and_the_state_stays_resumable():
    r, clean = rule(), rule()
    r.observe(0, 0.7, A[:4], torch.tensor([float("nan"), 1.0, 0.0, 1.0]))  # a step skipped for a NaN loss
    for _ in range(5):
        assert step(r, HALF, AGREE) == step(clean, HALF, AGREE)
    assert r.t_min != 0.6
    rule().load_state_dict(json.loads(json.dumps(r.state_dict())))  # finite: a later checkpoint resumes


def test_the_pooled_sums_decay_per_step():
    r = rule(decay=0.5, rate=0.0)
    step(r, HALF, AGREE)  # edge sums [8, 16, 8, 16], above [16, 16, 16, 16]
    step(r, AGAINST, HALF)  # edge [-8, 16, 8, 16], above [8, 16, 8, 16]
    assert r.edge == [-4.0, 24.0, 12.0, 24.0] and r.above == [16.0, 24.0, 16.0, 24.0]
    assert r.agreement(r.edge) == pytest.approx(-4 / 288 ** 0.5)


def test_micro_batches_and_processes_add_up_to_the_whole_batch():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(32, generator=gen)
    d, d2 = -(0.5 * a + 0.5 * torch.randn(32, generator=gen)), -(a + 0.3 * torch.randn(32, generator=gen))
    whole, parts = rule(), [rule(), rule()]
    whole.observe(0, 0.62, a, d)
    whole.observe(1, 0.9, a[:16], d2[:16])  # two micro-batches at one training time
    whole.observe(1, 0.9, a[16:], d2[16:])
    for i, p in enumerate(parts):  # each process sees half of the samples
        half = slice(16 * i, 16 * i + 16)
        p.observe(0, 0.62, a[half], d[half])
        p.observe(1, 0.9, a[half], d2[half])
    other = iter(x for key in sorted(parts[1]._step) for x in parts[1]._step[key].tolist())
    got = parts[0].update(lambda x: x + next(other))  # the all-reduce, as the other process contributes
    assert got == pytest.approx(whole.update(), abs=1e-6) and got != 0.6


def test_the_rule_is_deterministic_and_its_state_survives_json_exactly():
    runs = []
    for _ in range(2):
        r = rule(decay=0.7)
        gen = torch.Generator().manual_seed(3)
        for _ in range(20):
            a = torch.randn(16, generator=gen)
            r.observe(0, r.t_min + 0.05 * (1 - r.t_min), a, torch.randn(16, generator=gen))
            r.observe(1, 0.97, a, -a + torch.randn(16, generator=gen))
            r.update()
        runs.append(r.state_dict())
    assert runs[0] == runs[1] and runs[0]["t_min"] != 0.6
    back = rule()
    back.load_state_dict(json.loads(json.dumps(runs[0])))
    assert back.state_dict() == runs[0]


ZEROS = [0.0] * 4


@pytest.mark.parametrize("bad", [{"t_min": "0.5", "edge": ZEROS, "above": ZEROS}, {"edge": ZEROS, "above": ZEROS},
                                 {"t_min": math.nan, "edge": ZEROS, "above": ZEROS},
                                 {"t_min": 0.5, "edge": [0.0] * 3, "above": ZEROS}, [0.5]])
def test_a_malformed_checkpoint_state_is_a_clear_error(bad):
    with pytest.raises(CheckpointError, match="t_min_rule"):
        rule().load_state_dict(bad)


def test_a_checkpoint_whose_algorithm_state_is_not_an_object_is_a_clear_error():
    state = {"step": 1, "epoch": 1, "evals": [], "algorithm": [0.5]}
    with pytest.raises(CheckpointError, match="'algorithm' must be an object"):
        check_trainer_state(state, Path("run/checkpoints/step_000001/state.json"))


def test_adaptive_draws_like_uniform_from_the_current_t_min():
    a = train_timesteps("adaptive", None, 4, t_min=0.37, seed=2, epoch=5)
    u = train_timesteps("uniform", None, 4, t_min=0.37, seed=2, epoch=5)
    assert [t.sigma for t in a] == [t.sigma for t in u] and all(t.sigma >= 0.37 for t in a)


@pytest.mark.parametrize("args,match", [
    (["train.algorithm=dpo"], "timesteps.mode=adaptive"),
    (["timesteps.t_min=0.95"], "timesteps.t_min"),
    (["timesteps.adaptive_lo=0.7"], "timesteps.adaptive_lo"),
    (["timesteps.adaptive_hi=1.0"], "timesteps.adaptive_hi"),
    (["timesteps.t_min_end=0.2"], "timesteps.t_min_end"),
])
def test_config_checks_name_the_key(args, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["timesteps.mode=adaptive", *args])


def test_dgpo_feeds_the_rule_a_and_delta_centred_per_group(tiny_toy):
    cfg = load_config(None, [f"model.path={tiny_toy}", "train.prompts_per_epoch=2", "train.group_size=4",
                             "train.batch_size=8", "train.lora_rank=4", "sampler.steps=4", "sampler.cfg_scale=1",
                             "timesteps.mode=adaptive", "timesteps.count=2"])
    model = load_model(cfg.model)
    policy, layout = Policy(model, 4, 8, 0), Layout()
    algo = ALGORITHMS["dgpo"](LoopContext(cfg, model, policy.params, model.default_shift(), layout,
                                          layout.group_sum_fn(2), False, nullcontext, policy.reference))
    with torch.no_grad():  # the policy away from the reference, so that delta is not 0
        for i, p in enumerate(policy.params):
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    batch = algo.rollout([{"prompt": f"a red square {i}", "tag": "single_object"} for i in range(2)], 0, 0)
    signal, mb = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 0.2, -0.2]), torch.arange(8)
    unit = algo.units(batch, 0, 0)[1]
    assert algo.t_min_now == 0.6 and float(unit.sigma) >= 0.6
    out = algo.micro_loss(batch, signal, mb, unit, 1, 0)
    assert float(out.stats["t_min"]) == pytest.approx(0.6)
    with torch.no_grad():
        o = algo.denoising_losses(batch, mb, unit, 1, 0)
    d = (o["dsm"] - o["dsm_ref"]).view(2, 4)
    d = -(d - d.mean(1, keepdim=True)).flatten()  # -delta, centred within each group of 4
    want = [float((signal * d).sum()), float(signal.pow(2).sum()), float(d.pow(2).sum()), 8.0]
    ((slot, sigma), got), = algo.t_min_rule._step.items()
    assert (slot, sigma) == (1, float(unit.sigma)) and got.tolist() == pytest.approx(want, rel=1e-5, abs=1e-9)
    assert abs(want[0]) > 0 and want[2] > 0


def _cfg(tiny, out, *extra):
    return load_config(None, [
        f"model.path={tiny}", f"run.out_dir={out}", "run.epochs=6", "run.sample_every=0", "run.save_every=1",
        "run.eval_at_ends=false", "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=8",
        "train.lora_rank=0", "train.lr=1e-2", "sampler.steps=3", "timesteps.mode=adaptive", "timesteps.t_min=0.5",
        "timesteps.count=3", "timesteps.adaptive_rate=0.1", "timesteps.adaptive_decay=0.5",
        "dgpo.switch_ema_ref=0", "reward.name=jpeg_incompressibility", "run.seed=4", *extra])


def _t_mins(run):
    return [json.loads(x)["t_min"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_two_epoch_toy_run_logs_and_saves_the_adaptive_t_min(tiny_toy, tmp_path):
    tr = Trainer(_cfg(tiny_toy, tmp_path / "run", "run.epochs=2"))
    tr.fit()
    logged = _t_mins(tmp_path / "run")
    assert len(logged) == 2 and logged[0] == pytest.approx(0.5)  # step 0 draws from the start value
    state = json.loads((tmp_path / "run/checkpoints/step_000002/state.json").read_text())["algorithm"]
    assert state["t_min_rule"] == tr.algo.t_min_rule.state_dict()
    assert state["t_min_rule"]["above"][3] + state["t_min_rule"]["edge"][3] > 0  # it has pooled samples


@pytest.mark.slow
def test_resume_equals_uninterrupted_with_the_rule_on(tiny_toy, tmp_path, monkeypatch):
    monkeypatch.setattr(AdaptiveTMin, "Z", 0.0)  # the tiny random model's agreements are weak: let them move t_min
    Trainer(_cfg(tiny_toy, tmp_path / "a")).fit()
    Trainer(_cfg(tiny_toy, tmp_path / "b", "run.epochs=3")).fit()
    tr = Trainer(_cfg(tiny_toy, tmp_path / "b"), resume=True)
    saved = json.loads((tmp_path / "b/checkpoints/step_000003/state.json").read_text())["algorithm"]["t_min_rule"]
    assert tr.algo.t_min_rule.state_dict() == saved and saved["t_min"] != 0.5  # it moved before the resume
    tr.fit()
    assert _t_mins(tmp_path / "a") == _t_mins(tmp_path / "b")
    for name in ("policy", "ema_old"):
        a = load_file(str(tmp_path / f"a/checkpoints/step_000006/{name}.safetensors"))
        b = load_file(str(tmp_path / f"b/checkpoints/step_000006/{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    states = [json.loads((tmp_path / f"{r}/checkpoints/step_000006/state.json").read_text())["algorithm"]
              for r in "ab"]
    assert states[0] == states[1]
