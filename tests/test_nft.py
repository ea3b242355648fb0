"""DiffusionNFT (``train.algorithm=nft``): the loss by hand and its gradient in closed form, the 'old'
model's schedule, the per-sample training timesteps, the rollout solver against numbers of the
official ``run_sampling(solver="dpm2", determistic=True)``, and training runs (resume, batched
reference forwards)."""

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from dgpo.config import load_config
from dgpo.errors import ConfigError
from dgpo.losses.nft import nft_loss, optimality
from dgpo.samplers.ode import sample_ode
from dgpo.schedules import Grid, euler_scheduler
from dgpo.training.ema import LaggedOldModel
from dgpo.training.trainer import Trainer

ONE = torch.ones(1, 1)


def _hand(v, adv, beta, v_ref=None, kl_beta=0.0):
    """x0 = 0, x_t = 1, sigma = 0.5, v_old = 1, one element: each term is |x0_pred - x0| (e^2 / |e|)."""
    return nft_loss(torch.tensor([[v]]), ONE, ONE, 0 * ONE, torch.tensor([0.5]), torch.tensor([adv]), beta, 5.0,
                    v_ref=None if v_ref is None else torch.tensor([[v_ref]]), kl_beta=kl_beta)


@pytest.mark.parametrize("v,adv,beta,expected", [
    # beta 1: v+ = v = 2 -> x0_pred 0 (error 0, weight clamped to 1e-5); v- = 2 v_old - v = 0 -> x0_pred 1
    (2.0, 5.0, 1.0, 0.0), (2.0, -5.0, 1.0, 5.0), (2.0, 0.0, 1.0, 2.5), (2.0, 9.0, 1.0, 0.0),
    # beta 0.5: v+ = 1.5 -> |e| 0.25; v- = 0.5 -> |e| 0.75; r = A / 10 + 1/2; loss = 5 / 0.5 (r 0.25 + (1 - r) 0.75)
    (2.0, 0.0, 0.5, 5.0), (2.0, 2.5, 0.5, 3.75), (2.0, -5.0, 0.5, 7.5),
])
def test_loss_values_by_hand(v, adv, beta, expected):
    out = _hand(v, adv, beta)
    assert float(out.loss[0]) == pytest.approx(expected, abs=1e-6)
    assert float(out.kl[0]) == 0.0


def test_kl_term_by_hand():
    out = _hand(2.0, 0.0, 1.0, v_ref=0.5, kl_beta=0.1)
    assert float(out.kl[0]) == pytest.approx(2.25) and float(out.loss[0]) == pytest.approx(2.5 + 0.225)


@pytest.mark.parametrize("mode,expected", [
    ("all", [0.0, 0.25, 0.5, 0.6, 1.0]), ("positive_only", [0.5, 0.5, 0.5, 0.6, 1.0]),
    ("negative_only", [0.0, 0.25, 0.5, 0.5, 0.5]), ("one_only", [0.5, 0.5, 0.5, 0.6, 0.6]),
    ("binary", [0.4, 0.4, 0.5, 0.6, 0.6]),
])
def test_optimality_of_each_advantage_mode(mode, expected):
    adv = torch.tensor([-7.0, -2.5, 0.0, 1.0, 5.0])
    assert optimality(adv, 5.0, mode).tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown adv_mode"):
        optimality(adv, 5.0, "bogus")


@pytest.mark.parametrize("beta", [0.1, 1.0, 3.0])
def test_gradient_at_the_old_model_is_the_advantage_weighted_x0_regression(beta):
    """At v = v_old the gradient is -2 A_clip sigma (x0(v_old) - x0) / (w D) for any beta, with
    w = mean |x0(v_old) - x0|, i.e. the negative-aware loss starts as an adaptively weighted
    regression of x0 towards the sample (A > 0) or away from it (A < 0)."""
    g = torch.Generator().manual_seed(0)
    shape = (6, 2, 3, 3)
    x0, eps, v_old = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    sigma = torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.1
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    adv = torch.tensor([-8.0, -1.5, 0.0, 0.3, 2.0, 6.0], dtype=torch.float64)
    v = v_old.clone().requires_grad_(True)
    nft_loss(v, v_old, x_t, x0, sigma, adv, beta, 5.0).loss.sum().backward()
    e = x_t - s * v_old - x0
    w = e.abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = -2 * adv.clamp(-5, 5).view(-1, 1, 1, 1) * s * e / (w * e[0].numel())
    torch.testing.assert_close(v.grad, expected, rtol=1e-10, atol=1e-12)


def test_the_old_model_follows_the_official_decay_schedules():
    p = [torch.nn.Parameter(torch.zeros(3))]
    type1, type2 = LaggedOldModel(p, 0, 0.001, 0.5), LaggedOldModel(p, 75, 0.0075, 0.999)
    assert [type1.decay(s) for s in (0, 1, 100, 499, 500, 10_000)] == pytest.approx([0, 0.001, 0.1, 0.499, 0.5, 0.5])
    assert [type2.decay(s) for s in (0, 74, 75, 76, 175, 300)] == pytest.approx([0, 0, 0, 0.0075, 0.75, 0.999])
    with torch.no_grad():
        p[0].fill_(2.0)
    type1.update(100)  # per optimizer step: nothing
    assert type1.shadow[0].tolist() == [0.0] * 3
    type1.end_epoch(100)  # old <- 0.1 old + 0.9 theta
    assert type1.shadow[0].tolist() == pytest.approx([1.8] * 3)
    type1.end_epoch(0)  # decay 0: the policy's weights exactly
    assert torch.equal(type1.shadow[0], p[0].detach())


def test_the_rollout_solver_matches_the_official_dpm2_numbers():
    """The official rollout: its "dpm2" solver on SD3's Euler grid (shift 3, 10 steps), the model fed
    int(1000 sigma). Pinned: the official ``run_sampling`` (NVlabs/DiffusionNFT @24af555) on this
    analytic velocity, x = 1 and x = -0.5 (float32, as its latents)."""
    sched = euler_scheduler(3.0)
    sched.set_timesteps(10)
    grid = Grid(sched.sigmas.double(), sched.timesteps.long())
    assert grid.timesteps.tolist() == [1000, 960, 913, 857, 790, 707, 602, 464, 278, 8]
    fed = []

    def v(x, t):
        fed.append(t.clone())
        return torch.sin(3 * x) + t.double().view(-1, 1) / 1000 * x

    out = sample_ode(v, torch.tensor([[1.0], [-0.5]], dtype=torch.float64), grid, "dpm")
    assert all(f.dtype == torch.int64 for f in fed)
    assert out[:, 0].tolist() == pytest.approx(OFFICIAL_DPM2, abs=2e-6)


OFFICIAL_DPM2 = [0.361056923866272, -0.12474537640810013]


def _cfg(tiny, out, *extra):
    return load_config(None, [
        f"model.path={tiny}", f"run.out_dir={out}", "run.epochs=3", "run.sample_every=0", "run.save_every=1",
        "run.eval_at_ends=false", "train.algorithm=nft", "train.prompts_per_epoch=2", "train.group_size=4",
        "train.batch_size=3", "train.steps_per_epoch=2", "train.sampling_batches=2", "train.lora_rank=4",
        "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=4", "sampler.cfg_scale=1.0", "nft.kl_beta=0.1",
        "nft.decay_rate=0.2", "advantages.std=global", "reward.name=colorfulness", *extra])


def test_each_sample_trains_at_its_own_subset_of_the_grid(tiny_toy, tmp_path):
    tr = Trainer(_cfg(tiny_toy, tmp_path / "u", "sampler.steps=10"))
    units = tr.algo.units(SimpleNamespace(n_total=8), 0, 0)
    order = torch.stack(units, 1)  # [samples, slots]
    assert order.shape == (8, 9)  # int(10 x 0.99)
    assert all(len(set(row.tolist())) == 9 for row in order)  # distinct grid steps per sample
    assert len({tuple(row.tolist()) for row in order}) == 8  # each sample its own order
    again = tr.algo.units(SimpleNamespace(n_total=8), 0, 0)
    assert torch.equal(order, torch.stack(again, 1))  # a function of seed and epoch
    tr.cfg.nft.trunc_steps = 4  # the high-noise end only: 4 of the grid indices 0..4 per sample
    order = torch.stack(tr.algo.units(SimpleNamespace(n_total=8), 0, 0), 1)
    assert order.shape == (8, 4) and int(order.max()) <= 4 and all(len(set(row.tolist())) == 4 for row in order)
    tr.cfg.nft.group_noise = True  # groups of 4: one order per group
    order = torch.stack(tr.algo.units(SimpleNamespace(n_total=8), 0, 0), 1)
    assert torch.equal(order[:4], order[:1].expand(4, -1)) and not torch.equal(order[0], order[4])


@pytest.mark.slow
def test_resume_equals_uninterrupted_with_the_lagged_old_model(tiny_toy, tmp_path):
    """3 epochs of 2 optimizer steps (shuffled across groups, micro-batches of 3) in one go, or 1 epoch
    then a resumed 2: the same policy, 'old' model and slow EMA, bit for bit (the old model is blended
    after each epoch's training, before its checkpoint)."""
    Trainer(_cfg(tiny_toy, tmp_path / "a")).fit()
    Trainer(_cfg(tiny_toy, tmp_path / "b", "run.epochs=1")).fit()
    Trainer(_cfg(tiny_toy, tmp_path / "b"), resume=True).fit()
    for part in ("policy", "ema_old", "ema_slow"):
        a = load_file(str(tmp_path / f"a/checkpoints/step_000006/{part}.safetensors"))
        b = load_file(str(tmp_path / f"b/checkpoints/step_000006/{part}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (part, k)
    old, policy = (load_file(str(tmp_path / f"a/checkpoints/step_000002/{p}.safetensors"))
                   for p in ("ema_old", "policy"))
    assert not torch.equal(old["0"], next(iter(policy.values())))  # the old model lags


@pytest.mark.slow
def test_batched_reference_forwards_train_like_per_micro_batch_ones(tiny_toy, tmp_path):
    """train.reference_batch_size: the 'old' and reference forwards of a step's 3 timesteps x 2-3
    micro-batches in one forward, the same 4 steps to rounding (lr 1e-2 moves weights by ~1e-2)."""
    runs = []
    for size in (0, 64):
        tr = Trainer(_cfg(tiny_toy, tmp_path / str(size), "run.epochs=2", f"train.reference_batch_size={size}"))
        tr.fit()
        runs.append((tr.policy.state_dict(), tr.metrics.read()))
    for n in runs[0][0]:
        torch.testing.assert_close(runs[1][0][n], runs[0][0][n], rtol=1e-5, atol=1e-5)
    for r0, r1 in zip(runs[0][1], runs[1][1]):
        for k in ("loss", "nft", "kl", "old_deviate", "grad_norm"):
            assert r1[k] == pytest.approx(r0[k], rel=1e-4, abs=1e-7), k


def test_config_refuses_what_the_loss_cannot_use():
    with pytest.raises(ConfigError, match="advantages.clip_max=0"):
        load_config(None, ["train.algorithm=nft", "advantages.clip_max=0"])
    with pytest.raises(ConfigError, match="nft.timestep_fraction"):
        load_config(None, ["train.algorithm=nft", "nft.timestep_fraction=0.05"])
    with pytest.raises(ConfigError, match="nft.trunc_steps=10 must be < sampler.steps=10"):
        load_config(None, ["train.algorithm=nft", "nft.trunc_steps=10"])
    with pytest.raises(ConfigError, match="nft.beta"):
        load_config(None, ["train.algorithm=nft", "nft.beta=0"])


def test_sd3_rolls_out_on_its_scheduler_grid_with_integer_timesteps_and_trains_at_float_ones(tmp_path):
    """Official SD3 structure: the rollouts walk the pipeline's FlowMatchEulerDiscreteScheduler sigmas,
    the transformer fed int(1000 sigma); training feeds the scheduler's float timesteps and re-noises at
    timestep / 1000; one epoch moves the LoRA."""
    from tiny_diffusers import BUILDERS

    cfg = load_config(None, ["model.kind=sd3", f"model.path={BUILDERS['sd3'](tmp_path / 'sd3')}",
                             "model.resolution=64", "model.max_sequence_length=16", f"run.out_dir={tmp_path / 'r'}",
                             "run.epochs=1", "run.eval_at_ends=false", "run.sample_every=0", "train.algorithm=nft",
                             "train.prompts_per_epoch=1", "train.group_size=4", "train.batch_size=4",
                             "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=3",
                             "sampler.cfg_scale=1.0", "reward.name=colorfulness"])
    tr = Trainer(cfg)
    sched = tr.model.pipe.scheduler
    sched.set_timesteps(3)
    assert torch.equal(tr.algo.grid.sigmas, sched.sigmas.double())
    fed, velocity = [], tr.model.velocity
    tr.model.velocity = lambda x, t, c: (fed.append(t.clone()), velocity(x, t, c))[1]
    before = {n: p.detach().clone() for n, p in zip(tr.policy.names, tr.policy.params)}
    tr.fit()
    rollout, training = fed[:3], fed[3:]
    assert [t.dtype for t in rollout] == [torch.int64] * 3
    assert [int(t[0]) for t in rollout] == sched.timesteps.long().tolist()
    assert all(t.dtype == torch.float32 for t in training)
    assert {float(v) for t in training for v in t} <= set(sched.timesteps.tolist())
    assert any(not torch.equal(before[n], p) for n, p in zip(tr.policy.names, tr.policy.params))


def test_evals_use_eval_method_and_rollouts_sampler_method(tiny_toy, tmp_path, monkeypatch):
    """DiffusionNFT's recipes roll out with dpm and evaluate with euler (eval.method; '' = sampler.method)."""
    import dgpo.training.trainer as trainer_module

    seen = []
    real = trainer_module.model_image_fn
    monkeypatch.setattr(trainer_module, "model_image_fn", lambda *a: seen.append(a[4]) or real(*a))
    for method, expected in (("euler", "euler"), ("", "dpm")):
        tr = Trainer(_cfg(tiny_toy, tmp_path / (method or "same"), f"eval.method={method}", "sampler.method=dpm"))
        tr._image_fn()
        assert seen.pop() == expected


@pytest.mark.slow
def test_a_run_halted_mid_epoch_resumes_without_blending_the_old_model_twice(tiny_toy, tmp_path):
    """Epoch 1's step is skipped (NaN forward) in both runs. A: once only, the run goes on. B: epoch 2's
    step too, so max_bad_steps=2 halts B inside epoch 2 (its checkpoint: 'retry epoch 2'); B resumed
    without the fault trains epoch 2 as A did: the old model was blended once per epoch in both."""
    from test_fault_training import NAN, _spy

    from dgpo.training import RunHalted

    def run(out, bad, resume=False):
        tr = Trainer(_cfg(tiny_toy, out, "train.steps_per_epoch=1", "train.sampling_batches=1",
                          "train.max_bad_steps=2"), resume=resume)
        _, flag = _spy(tr, bad)
        tr.train_net.register_forward_hook(lambda m, i, o: o * NAN if flag["on"] else None)
        tr.fit()
        return tr

    a = run(tmp_path / "a", lambda i: i == 1)
    with pytest.raises(RunHalted):
        run(tmp_path / "b", lambda i: i >= 1)
    b = run(tmp_path / "b", lambda i: False, resume=True)
    assert a.step == b.step == 2
    for x, y in zip(a.algo.old_model.shadow + a.policy.params, b.algo.old_model.shadow + b.policy.params):
        assert torch.equal(x, y)


def test_group_noise_gives_a_group_its_timesteps_and_noise(tiny_toy, tmp_path):
    tr = Trainer(_cfg(tiny_toy, tmp_path / "g", "nft.group_noise=true"))
    batch = tr.algo.rollout(tr.prompts[:2], 0, 0)
    units = tr.algo.units(batch, 0, 0)
    mb = torch.arange(8)
    out = tr.algo.noised(batch, mb, units[0], 0, 0)
    eps = out["target"] + batch.x0[mb]
    assert torch.equal(out["sigma"][:4], out["sigma"][:1].expand(4))
    torch.testing.assert_close(eps[:4], eps[:1].expand(4, -1, -1, -1), rtol=0, atol=1e-6)  # eps - x0 + x0 rounds
    assert not torch.allclose(eps[0], eps[4], atol=0.1)
    tr.cfg.nft.group_noise = False  # official: each sample its own noise
    eps = tr.algo.noised(batch, mb, units[0], 0, 0)["target"] + batch.x0[mb]
    assert not torch.allclose(eps[0], eps[1], atol=0.1)


@pytest.mark.slow
def test_fsdp_full_fine_tuning_equals_one_process(tiny_toy, tmp_path):
    """FSDP2 on 2 CPU processes (accelerate's shipped config): 2 steps of DiffusionNFT with full
    fine-tuning end at the 1-process policy, 'old' model, slow EMA and Adam moments (measured 2.5e-6)."""
    from test_fsdp import PARTS, _ckpt, _launch, _overrides

    extra = ["train.algorithm=nft", "sampler.cfg_scale=1.0", "nft.kl_beta=0.1", "nft.decay_rate=0.2",
             "train.batch_size=3"]
    Trainer(load_config(None, [*_overrides(tiny_toy, tmp_path / "one"), *extra])).fit()
    _launch([*_overrides(tiny_toy, tmp_path / "fsdp"), *extra])
    one, two = _ckpt(tmp_path / "one"), _ckpt(tmp_path / "fsdp")
    for part in PARTS:
        assert one[part].keys() == two[part].keys()
        for k in one[part]:
            assert torch.allclose(one[part][k], two[part][k], atol=1e-5, rtol=0), (part, k)
