"""Advantage Weighted Matching (``train.algorithm=awm``): the loss by hand and its gradient against an
independent restatement of the official formulas (``scripts/train_sd3_awm.py``), the timestep strata,
SA-Solver against numbers of the official ``SASolver.sample``, the hooks on a context alone, the
recipes' official values, and training runs (two epochs; resume = uninterrupted)."""

import math
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dgpo.algorithms import ALGORITHMS, LoopContext
from dgpo.algorithms.awm import strata
from dgpo.config import load_config
from dgpo.errors import ConfigError
from dgpo.losses.awm import awm_loss, log_likelihood, velocity_distance
from dgpo.models.loading import load_model
from dgpo.samplers.sa_solver import sa_times, sample_sa, stochasticity
from dgpo.schedules import Grid, euler_scheduler
from dgpo.training.distributed import Layout
from dgpo.training.policy import Policy
from dgpo.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


# ---------------------------------------------------------------- the loss
@pytest.mark.parametrize("weighting,expected", [
    # m = mean (v - target)^2 = 0.5^2 = 0.25 at t = 0.5
    ("uniform", -0.25), ("t", -0.125), ("t2", -0.0625),
    ("huber", -(math.sqrt(0.25 + 1e-10) - 1e-5) * 0.5),  # -0.2499950...
    ("ghuber", -(0.25 ** 0.25 - 1e-10 ** 0.25) * 0.5 / 0.25),  # -(0.7071068 - 0.0031623) x 2 = -1.407889
])
def test_log_likelihood_of_each_weighting_by_hand(weighting, expected):
    v, target = torch.full((1, 2, 2, 2), 0.5), torch.zeros(1, 2, 2, 2)
    got = log_likelihood(v, target, torch.tensor([0.5]), weighting, 0.25)
    assert got.dtype == F64 and float(got[0]) == pytest.approx(expected, abs=1e-9)


def test_ghuber_at_power_one_half_is_twice_huber():
    g = torch.Generator().manual_seed(0)
    v, target = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    t = torch.rand(4, generator=g)
    torch.testing.assert_close(log_likelihood(v, target, t, "ghuber", 0.5), 2 * log_likelihood(v, target, t, "huber"))


def test_on_policy_value_is_minus_the_rescaled_advantage_plus_the_distances():
    """Official on-policy: ratio exp(logp - logp.detach()) = 1, policy = -clamp(A, +-5) / 5 x advantage_max."""
    adv = torch.tensor([-7.0, -2.5, 0.0, 1.0, 5.0])
    v, target = torch.zeros(5, 1, 2, 2), torch.ones(5, 1, 2, 2)
    out = awm_loss(v, target, 0.4, adv, advantage_max=2.0, v_ref=v + 0.3, beta=0.1, v_ema=v - 0.1, ema_beta=1.0)
    assert out.ratio.tolist() == [1.0] * 5
    assert out.policy.tolist() == pytest.approx([2.0, 1.0, 0.0, -0.4, -2.0])
    assert out.kl.tolist() == pytest.approx([0.09] * 5) and out.ema_kl.tolist() == pytest.approx([0.01] * 5)
    assert out.loss.tolist() == pytest.approx([p + 0.009 + 0.01 for p in (2.0, 1.0, 0.0, -0.4, -2.0)])


def _dlogp_dm(m, t, weighting, p=0.25):
    """d logp / d m of the official weightings (restated from ``compute_log_prob_awm``)."""
    return {"uniform": -torch.ones_like(m), "t": -t, "t2": -t**2, "huber": -t * 0.5 / torch.sqrt(m + 1e-10),
            "ghuber": -t * (m + 1e-10) ** (p - 1)}[weighting]


@pytest.mark.parametrize("weighting", ["uniform", "t", "t2", "huber", "ghuber"])
@pytest.mark.parametrize("kl_weight", ["uniform", "elbo"])
def test_gradient_equals_the_closed_form(weighting, kl_weight):
    """grad = -a dlogp/dm 2 (v - target) / D + beta w 2 (v - v_ref) / D + ema_beta w 2 (v - v_ema) / D,
    a = clamp(A, +-5) / 5, w = 1 or 1 / (2 s_t^2) with s_t = 0.7 sqrt(t / (1 - min(t, 0.99)))."""
    g = torch.Generator().manual_seed(1)
    shape = (6, 2, 3, 3)
    v0, target, v_ref, v_ema = (torch.randn(shape, generator=g, dtype=F64) for _ in range(4))
    t = torch.tensor([0.05, 0.3, 0.6, 0.9, 0.995, 1.0], dtype=F64)
    adv = torch.tensor([-8.0, -1.5, 0.0, 0.3, 2.0, 6.0], dtype=F64)
    v = v0.clone().requires_grad_(True)
    awm_loss(v, target, t, adv, weighting, 0.25, v_ref=v_ref, beta=0.3, kl_weight=kl_weight, v_ema=v_ema,
             ema_beta=0.7, ema_kl_weight=kl_weight).loss.sum().backward()
    col = lambda x: x.view(-1, 1, 1, 1)
    d, a = v0[0].numel(), adv.clamp(-5, 5) / 5
    m = ((v0 - target) ** 2).flatten(1).mean(1)
    w = torch.ones_like(t) if kl_weight == "uniform" else 1 / (2 * (0.7 * torch.sqrt(t / (1 - t.clamp(max=0.99)))) ** 2)
    expected = (col(-a * _dlogp_dm(m, t, weighting)) * 2 * (v0 - target) / d
                + col(0.3 * w) * 2 * (v0 - v_ref) / d + col(0.7 * w) * 2 * (v0 - v_ema) / d)
    torch.testing.assert_close(v.grad, expected, rtol=1e-10, atol=1e-12)


def test_zero_advantage_leaves_only_the_distances_gradient():
    g = torch.Generator().manual_seed(2)
    v0, target, v_ref = (torch.randn(3, 4, generator=g, dtype=F64) for _ in range(3))
    v = v0.clone().requires_grad_(True)
    awm_loss(v, target, 0.5, torch.zeros(3, dtype=F64)).loss.sum().backward()
    assert torch.equal(v.grad, torch.zeros_like(v0))  # no reference, no KL-EMA: nothing at all
    v.grad = None
    awm_loss(v, target, 0.5, torch.zeros(3, dtype=F64), v_ref=v_ref, beta=0.2).loss.sum().backward()
    torch.testing.assert_close(v.grad, 0.2 * 2 * (v0 - v_ref) / 4)


def test_a_gradient_step_lowers_the_error_of_better_samples_and_raises_the_worse():
    g = torch.Generator().manual_seed(3)
    v0, target = torch.randn(4, 8, generator=g, dtype=F64), torch.randn(4, 8, generator=g, dtype=F64)
    adv = torch.tensor([2.0, 0.5, -0.5, -2.0], dtype=F64)
    v = v0.clone().requires_grad_(True)
    awm_loss(v, target, torch.full((4,), 0.7), adv).loss.sum().backward()
    err = lambda x: ((x - target) ** 2).mean(1)
    change = err(v0 - 1e-3 * v.grad) - err(v0)
    assert (change[:2] < 0).all() and (change[2:] > 0).all()


def test_the_clip_acts_only_off_policy_as_ppo():
    """With logp_old: max(-a r, -a clamp(r, 1 - c, 1 + c)): a clipped sample has no gradient."""
    v0, target = torch.zeros(4, 2, dtype=F64), torch.ones(4, 2, dtype=F64)  # m = 1, uniform: logp = -1
    adv = torch.tensor([5.0, -5.0, 5.0, -5.0], dtype=F64)  # a = +-1
    old = torch.tensor([-1.5, -1.5, -0.5, -0.5], dtype=F64)  # ratio e^0.5 = 1.65 twice, e^-0.5 = 0.61 twice
    v = v0.clone().requires_grad_(True)
    out = awm_loss(v, target, 1.0, adv, "uniform", clip_range=0.2, logp_old=old)
    r_hi, r_lo = math.exp(0.5), math.exp(-0.5)
    assert out.ratio.tolist() == pytest.approx([r_hi, r_hi, r_lo, r_lo])
    assert out.policy.tolist() == pytest.approx([-1.2, r_hi, -r_lo, 0.8])  # the larger of the two terms
    out.loss.sum().backward()
    moved = v.grad.abs().sum(1) > 0
    assert moved.tolist() == [False, True, True, False]  # A > 0 above 1 + c and A < 0 below 1 - c: clipped


def test_unknown_weightings_are_errors():
    v = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="unknown weighting"):
        log_likelihood(v, v, 0.5, "bogus")
    with pytest.raises(ValueError, match="unknown KL weight"):
        velocity_distance(v, v, 0.5, "bogus")


# ---------------------------------------------------------------- timesteps
@pytest.mark.parametrize("kind,lo,hi", [
    # official boundaries: torch.linspace(first, int(14 x 0.9) = 12, 7).long()
    ("discrete_wo_init", [1, 2, 4, 6, 8, 10], [2, 4, 6, 8, 10, 12]),  # GenEval, OCR: index 0 never trained
    ("discrete", [0, 2, 4, 6, 8, 10], [2, 4, 6, 8, 10, 12]),  # PickScore
    ("discrete_with_init", [0, 1, 3, 5, 7, 9], [1, 3, 5, 7, 9, 12]),  # 0, then linspace(1, 12, 6)
])
def test_strata_are_the_official_ones_for_14_steps(kind, lo, hi):
    a, b = strata(kind, 14, 6, 0.9)
    assert a.tolist() == lo and b.tolist() == hi


# ---------------------------------------------------------------- SA-Solver
def _grid(steps: int, shift: float = 3.0) -> Grid:
    sched = euler_scheduler(shift)
    sched.set_timesteps(steps)
    return Grid(sched.sigmas.double(), sched.timesteps)


def test_sa_times_are_the_official_ones():
    grid, times = _grid(14), sa_times(_grid(14))
    s = grid.sigmas.float()
    assert times[0] == float(torch.tensor(0.999)) and times[-1] == 0.0
    assert times[1:13] == s[1:13].tolist() and times[13] == float(s[12] / 2)  # 0.2062 -> 0.1031


# the official SASolver.sample (scxue/advantage_weighted_matching @be51372, flow_grpo/diffusers_patch/
# sa_solver.py: predictor_order 2, corrector_order 2, PEC, tau = level on 0.3 <= t <= 0.9) on SD3's
# 14-step grid at shift 3, model v(x, 1000 t) = sin(3 x) + t x, x = 1 and -0.5 (float64), its
# torch.randn_like replaced by the k-th draw of randn(2, 1) from a generator seeded 1 at step k
OFFICIAL_SA = {0.0: [0.09971546961124289, -0.0252070365558964], 0.4: [0.20911569674713437, -0.26655419179557666]}


@pytest.mark.parametrize("level", [0.0, 0.4])
def test_sa_solver_matches_the_official_numbers(level):
    g = torch.Generator().manual_seed(1)
    noises = [torch.randn(2, 1, generator=g, dtype=F64) for _ in range(15)]
    times, tau = sa_times(_grid(14)), stochasticity(level)
    stochastic = iter([noises[k] for k in range(1, 14) if tau(times[k]) > 0])  # only these steps draw
    fed = []

    def v(x, t):
        fed.append(t)
        return torch.sin(3 * x) + t.to(x.dtype).view(-1, 1) / 1000 * x

    out = sample_sa(v, torch.tensor([[1.0], [-0.5]], dtype=F64), times, tau, lambda: next(stochastic))
    assert len(fed) == 14 and float(fed[0][0]) == pytest.approx(999.0, abs=1e-3)  # one evaluation per step but the last
    assert out[:, 0].tolist() == pytest.approx(OFFICIAL_SA[level], abs=2e-7)  # official coefficients are float32


@pytest.mark.parametrize("level", [0.0, 0.4, 1.0])
def test_sa_solver_keeps_a_gaussians_marginals_as_the_steps_grow(level):
    """Data N(0, 1/4): the exact velocity is linear and x_t ~ N(0, (1 - t)^2 / 4 + t^2); from N(0, 1) at
    0.999 the ODE and the SDE both end near variance 0.25 / var(0.999) (~0.2505) on a fine grid."""
    def v(x, tt):
        t = (tt.to(F64) / 1000).view(-1, 1)
        return (x - (1 - t) * 0.25 * x / ((1 - t) ** 2 * 0.25 + t**2)) / t

    target = 0.25 / ((1 - 0.999) ** 2 * 0.25 + 0.999**2)
    x = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    g = torch.Generator().manual_seed(1)
    errors = [abs(float(sample_sa(v, x, sa_times(_grid(n)), stochasticity(level),
                                  lambda: torch.randn(20000, 1, generator=g, dtype=F64)).var()) / target - 1)
              for n in (28, 112)]
    assert errors[1] < 0.04 and errors[1] < errors[0]


# ---------------------------------------------------------------- hooks on a context
def context(tiny, *overrides) -> LoopContext:
    cfg = load_config(None, [f"model.path={tiny}", "train.algorithm=awm", "train.prompts_per_epoch=2",
                             "train.group_size=4", "train.batch_size=4", "train.lora_rank=4", "train.lora_alpha=8",
                             "sampler.steps=6", "sampler.cfg_scale=1", "awm.train_timesteps=2", *overrides])
    model = load_model(cfg.model)
    policy = Policy(model, cfg.train.lora_rank, cfg.train.lora_alpha, cfg.run.seed)
    layout = Layout()
    return LoopContext(cfg=cfg, model=model, params=policy.params, shift=model.default_shift(), layout=layout,
                       group_sum=layout.group_sum_fn(cfg.train.prompts_per_epoch), lockstep=False,
                       autocast=nullcontext, reference=policy.reference)


def _metas(n=2):
    return [{"prompt": f"a photo of a red square {i}", "tag": "single_object"} for i in range(n)]


def test_units_draw_one_index_per_stratum_and_sample(tiny_toy):
    algo = ALGORITHMS["awm"](context(tiny_toy))  # int(6 x 0.9) = 5: linspace(1, 5, 3) -> strata [1, 3), [3, 5)
    batch = algo.conditions(_metas(), 0)
    units = algo.units(batch, 0, 0)
    assert len(units) == 2 and all(u.shape == (8,) for u in units)
    assert all(1 <= int(j) < 3 for j in units[0]) and all(3 <= int(j) < 5 for j in units[1])
    assert all(len(set(u.tolist())) == 2 for u in units)  # drawn per sample
    assert torch.equal(torch.stack(algo.units(batch, 0, 0)), torch.stack(units))  # a function of seed and epoch


def test_noised_gives_each_sample_its_own_noise_at_its_grid_sigma(tiny_toy):
    algo = ALGORITHMS["awm"](context(tiny_toy))
    batch = algo.rollout(_metas(), 0, 0)
    unit, mb = algo.units(batch, 0, 0)[1], torch.arange(8)
    o = algo.noised(batch, mb, unit, 1, 0)
    eps = o["target"] + batch.x0
    sigma = algo.grid.train_sigmas[unit].float()
    torch.testing.assert_close(o["sigma"], sigma)
    torch.testing.assert_close(o["x_t"], (1 - sigma.view(-1, 1, 1, 1)) * batch.x0 + sigma.view(-1, 1, 1, 1) * eps)
    assert not torch.equal(eps[0], eps[1])  # not shared within the group
    half = algo.noised(batch, mb[4:], unit, 1, 0)  # keyed by the global index, not the micro-batch
    torch.testing.assert_close(half["x_t"], o["x_t"][4:])
    assert not torch.equal(algo.noised(batch, mb, unit, 0, 0)["target"], o["target"])  # another slot, other noise


def test_rollouts_use_sa_solver_seeded_per_sample(tiny_toy):
    algo, metas = ALGORITHMS["awm"](context(tiny_toy)), _metas(1)
    sde = algo.rollout(metas, 0, 0).x0  # tau 0.4 on 0.3 <= t <= 0.9
    assert torch.equal(sde, algo.rollout(metas, 0, 0).x0)  # every draw from the samples' seeds
    algo.cfg.awm.noise_level = 0.0
    ode = algo.rollout(metas, 0, 0).x0
    algo.cfg.awm.sa_solver, algo.cfg.sampler.method = False, "euler"
    euler = algo.rollout(metas, 0, 0).x0
    assert not torch.equal(sde, ode) and not torch.equal(ode, euler)


def test_micro_loss_trains_the_lora_and_reads_the_frozen_forwards_it_needs(tiny_toy):
    ctx = context(tiny_toy)
    algo = ALGORITHMS["awm"](ctx)
    assert algo.frozen_needs() == (True, True)
    assert ALGORITHMS["awm"](context(tiny_toy, "awm.beta=0", "awm.ema_beta=0")).frozen_needs() == (False, False)
    batch = algo.rollout(_metas(), 0, 0)
    signal = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.5, -0.5])
    out = algo.micro_loss(batch, signal, torch.arange(8), algo.units(batch, 0, 0)[0], 0, 0)
    out.loss_sum.backward()
    assert torch.isfinite(out.loss_sum) and set(out.stats) == {"policy", "kl", "ema_kl", "dsm", "clip"}
    assert float(out.stats["kl"]) == 0.0 and float(out.stats["ema_kl"]) == 0.0  # all three start equal
    assert float(out.stats["policy"]) == pytest.approx(-float((signal / 5).mean()))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.params)


@pytest.mark.parametrize("kind,step,decay", [("linear", 100, 0.1), ("linear", 1000, 0.3), ("constant", 1, 0.3)])
def test_the_kl_ema_model_moves_after_each_epoch_only(tiny_toy, kind, step, decay):
    algo = ALGORITHMS["awm"](context(tiny_toy, f"awm.ema_decay_type={kind}"))
    with torch.no_grad():
        for p in algo.ctx.params:
            p.add_(1.0)
    before = [s.clone() for s in algo.old_model.shadow]
    algo.after_step(step)
    assert all(torch.equal(a, b) for a, b in zip(before, algo.old_model.shadow))
    algo.end_epoch(step)  # official: min(0.3, 0.001 step), or 0.3
    for s, b, p in zip(algo.old_model.shadow, before, algo.ctx.params):
        torch.testing.assert_close(s, decay * b + (1 - decay) * p.detach())


# ---------------------------------------------------------------- config and recipes
def test_config_refuses_what_awm_cannot_use():
    cases = [("advantages.clip_max=0", "advantages.clip_max=0"), ("sampler.sde_noise=0.7", "sampler.sde_noise"),
             ("awm.sa_solver=false", "awm.noise_level=0.4"), ("awm.train_timesteps=9", "awm.train_timesteps=9"),
             ("awm.weighting=bogus", "awm.weighting")]
    for override, match in cases:
        with pytest.raises(ConfigError, match=match):
            load_config(None, ["train.algorithm=awm", override])
    load_config(None, ["train.algorithm=awm", "awm.train_timesteps=8"])  # 8 strata of 1..8: one index each


def _recipe(name):
    return load_config(ROOT / "configs" / name)


def test_the_toy_recipe_has_the_official_numbers():
    c = _recipe("toy_awm_official.yaml")
    a = c.awm
    assert (c.train.algorithm, a.sa_solver, a.noise_level, c.sampler.steps, c.sampler.cfg_scale) == ("awm", True, 0.4,
                                                                                                     14, 1.0)
    assert (a.train_timesteps, a.timestep_fraction, a.time_type) == (6, 0.9, "discrete_wo_init")
    assert (a.weighting, a.ghuber_power, a.clip_range, a.advantage_max, c.advantages.clip_max) == ("ghuber", 0.25,
                                                                                                   1.0, 1.0, 5.0)
    assert (a.beta, a.ema_beta, a.ema_decay, a.ema_decay_type, a.kl_weight) == (1e-3, 1.0, 0.3, "linear", "uniform")
    assert (c.train.group_size, c.train.prompts_per_epoch, c.train.steps_per_epoch, c.advantages.std) == (
        24, 72, 1, "global")
    assert (c.train.ema_decay, c.train.ema_every, c.eval.steps, c.eval.method) == (0.99, 1, 40, "euler")


@pytest.mark.parametrize("reward,prompts,batch,beta,level,time_type", [
    ("geneval", 72, 3, 1e-3, 0.4, "discrete_wo_init"), ("ocr", 72, 3, 3e-3, 0.4, "discrete_wo_init"),
    ("pickscore", 24, 2, 1e-4, 0.0, "discrete")])
def test_the_sd35m_recipes_have_the_official_numbers(reward, prompts, batch, beta, level, time_type):
    """config/dgx_awm.py {geneval,ocr,pickscore}_sd3_no_cfg_1node (8 GPUs)."""
    c = _recipe(f"sd35m_awm_{reward}.yaml")
    assert (c.model.kind, c.model.resolution, c.sampler.steps, c.sampler.shift, c.sampler.cfg_scale) == (
        "sd3", 512, 14, 3.0, 1.0)
    assert (c.train.algorithm, c.reward.names(), c.train.prompts_per_epoch, c.train.group_size) == (
        "awm", [reward], prompts, 24)
    assert (c.train.batch_size, c.awm.beta, c.awm.noise_level, c.awm.time_type) == (batch, beta, level, time_type)
    assert (c.train.lora_rank, c.train.lora_alpha, c.train.lr, c.train.ema_decay) == (32, 64.0, 3e-4, 0.99)


# ---------------------------------------------------------------- training runs
def _cfg(tiny, out, *extra):
    return load_config(None, [
        f"model.path={tiny}", f"run.out_dir={out}", "run.epochs=2", "run.sample_every=0", "run.save_every=1",
        "run.eval_at_ends=false", "train.algorithm=awm", "train.prompts_per_epoch=2", "train.group_size=4",
        "train.batch_size=3", "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=4",
        "sampler.cfg_scale=1.0", "awm.train_timesteps=2", "awm.beta=0.1", "advantages.std=global",
        "reward.name=colorfulness", *extra])


def test_two_epochs_train_every_lora_weight_and_stay_finite(tiny_toy, tmp_path):
    tr = Trainer(_cfg(tiny_toy, tmp_path / "run"))
    before = {n: p.detach().clone() for n, p in tr.model.denoiser.named_parameters()}
    summary = tr.fit()
    assert summary["steps"] == 2
    for n, p in tr.model.denoiser.named_parameters():
        assert (not torch.equal(before[n], p)) == (n in set(tr.policy.names)), n
    rows = tr.metrics.read()
    assert len(rows) == 2 and all(math.isfinite(r[k]) for r in rows for k in ("loss", "policy", "kl", "ema_kl"))
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] > 0  # the policy leaves the reference after its first step


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_toy, tmp_path):
    """3 epochs of 2 optimizer steps (shuffled across groups), or 1 epoch then a resumed 2: the same
    policy, KL-EMA model and slow EMA, bit for bit."""
    extra = ("run.epochs=3", "train.steps_per_epoch=2", "train.sampling_batches=2")
    Trainer(_cfg(tiny_toy, tmp_path / "a", *extra)).fit()
    Trainer(_cfg(tiny_toy, tmp_path / "b", *extra, "run.epochs=1")).fit()
    Trainer(_cfg(tiny_toy, tmp_path / "b", *extra), resume=True).fit()
    for part in ("policy", "ema_old", "ema_slow"):
        a = load_file(str(tmp_path / f"a/checkpoints/step_000006/{part}.safetensors"))
        b = load_file(str(tmp_path / f"b/checkpoints/step_000006/{part}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (part, k)
