import math

import pytest
import torch

from dgpo.advantages import group_advantages
from dgpo.losses.dgpo import dgpo_loss, dsm, local_group_sum, ppo_clip_mask
from dgpo.schedules import rollout_grid
from dgpo.testing.reference import bradley_terry_objective
from dgpo.timesteps import shared_noise, train_timesteps
from dgpo.training.ema import OldModelEMA, SlowEMA


def test_loss_by_hand_small_case():
    # one group, G = 2, A = [1, -1], beta = 2: S = (1*2*0.1 + (-1)*2*(-0.1)) / 2 = 0.2
    th, ref = torch.tensor([0.5, 0.3]), torch.tensor([0.4, 0.4])
    adv, gid = torch.tensor([1.0, -1.0]), torch.tensor([0, 0])
    out = dgpo_loss(th, ref, adv, gid, beta_dpo=2.0, group_size=2)
    s = 1 / (1 + math.exp(-0.2))
    assert out.weight.tolist() == pytest.approx([s, s])
    assert float(out.loss) == pytest.approx(s * (0.5 - 0.3) / 2)  # 0.0549834
    out = dgpo_loss(th, ref, adv, gid, 2.0, 2, kl=torch.tensor([0.1, 0.3]), kl_beta=0.5)
    assert float(out.loss) == pytest.approx(s * 0.1 + 0.5 * 0.2)


def test_gradient_equals_group_bradley_terry_objective():
    torch.manual_seed(0)
    n, g, beta = 24, 6, 100.0
    th = torch.rand(n, dtype=torch.float64, requires_grad=True)
    ref, adv = torch.rand(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    gid = torch.arange(n) // g
    (ga,) = torch.autograd.grad(dgpo_loss(th, ref, adv, gid, beta, g).loss, th)
    (gb,) = torch.autograd.grad(bradley_terry_objective(th, ref, adv, gid, beta, g), th)
    # surrogate = (G / (beta N)) x Bradley-Terry, exactly
    assert torch.allclose(ga * beta * n / g, gb, rtol=1e-12, atol=1e-14)


def test_gradient_through_network_parameters_matches_too():
    torch.manual_seed(1)
    w = torch.randn(5, requires_grad=True)
    x, target = torch.randn(8, 5), torch.randn(8)
    ref = torch.rand(8)
    adv, gid = torch.randn(8), torch.arange(8) // 4
    per = lambda: (x * w).pow(2).sum(1) - target
    (ga,) = torch.autograd.grad(dgpo_loss(per(), ref, adv, gid, 10.0, 4).loss, w)
    (gb,) = torch.autograd.grad(bradley_terry_objective(per(), ref, adv, gid, 10.0, 4), w)
    assert torch.allclose(ga * 10.0 * 8 / 4, gb, atol=1e-5)


def test_group_sum_is_injected_and_split_group_matches_whole():
    torch.manual_seed(2)
    th, ref, adv = torch.rand(8), torch.rand(8), torch.randn(8)
    gid = torch.zeros(8, dtype=torch.long)
    whole = dgpo_loss(th, ref, adv, gid, 50.0, 8).weight
    full_totals = local_group_sum(adv * 50.0 * (th - ref) / 8, gid)
    halves = []
    for sl in (slice(0, 4), slice(4, 8)):  # a group split across micro-batches / processes
        inject = lambda v, g, sl=sl: full_totals[sl]
        halves.append(dgpo_loss(th[sl], ref[sl], adv[sl], gid[sl], 50.0, 8, group_sum=inject).weight)
    assert torch.allclose(torch.cat(halves), whole)


def test_advantages_sum_to_zero_and_zero_spread_gives_zero_gradient():
    r = torch.tensor([0.2, 0.9, 0.4, 0.5, 0.5, 0.5, 0.5, 0.1])
    gid = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])
    for mode in ("group", "global"):
        adv, zero = group_advantages(r, gid, mode)
        assert abs(float(adv[gid == 0].sum())) < 1e-6
        assert zero.tolist() == [False, True]
        assert torch.all(adv[gid == 1] == 0)
    adv, _ = group_advantages(r, gid)
    th = torch.rand(8, requires_grad=True)
    dgpo_loss(th, torch.rand(8), adv, gid, 100.0, 4).loss.backward()
    assert torch.all(th.grad[gid == 1] == 0) and torch.any(th.grad[gid == 0] != 0)


def test_advantage_values_and_clip():
    r, gid = torch.tensor([0.0, 1.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long)
    adv, _ = group_advantages(r, gid, eps=0.0, clip_max=5.0)
    std = math.sqrt(0.1875)
    assert adv.tolist() == pytest.approx([-0.25 / std, 0.75 / std, -0.25 / std, -0.25 / std])
    adv, _ = group_advantages(r, gid, eps=0.0, clip_max=1.0)
    assert float(adv.max()) == 1.0


def test_ppo_clip_mask_on_constructed_cases():
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0, 1.0])
    dsm_old = torch.zeros(6)
    # ratio = exp(dsm_old - dsm): dsm = -0.1 -> ratio 1.105; dsm = +0.1 -> 0.905
    d = torch.tensor([-0.1, 0.1, 0.1, -0.1, 0.1, -0.001])
    mask = ppo_clip_mask(adv, d, dsm_old, 0.05)
    assert mask.tolist() == [True, False, True, False, True, False]
    assert not ppo_clip_mask(adv, d, dsm_old, 0.0).any()
    th = d.clone().requires_grad_(True)
    dgpo_loss(th, torch.zeros(6), adv, torch.zeros(6, dtype=torch.long), 1.0, 6, clip_mask=mask).loss.backward()
    assert (th.grad[mask] == 0).all() and (th.grad[~mask & (adv != 0)] != 0).all()


def test_ema_schedules():
    assert [OldModelEMA.decay(s) for s in (0, 100, 300, 1000)] == [0.0, 0.1, 0.3, 0.3]
    p = torch.nn.Parameter(torch.zeros(1))
    old = OldModelEMA([p])
    with torch.no_grad():
        p.fill_(1.0)
    old.update(0)  # decay 0: theta^- = theta
    assert float(old.shadow[0]) == 1.0
    slow = SlowEMA([p], decay=0.9, every=8)
    assert slow.decay(0) == pytest.approx(0.1) and slow.decay(1000) == 0.9
    with torch.no_grad():
        p.fill_(2.0)
    for step in range(7):
        slow.update(step)
    assert float(slow.shadow[0]) == 1.0  # not yet: every 8 steps
    slow.update(7)
    assert float(slow.shadow[0]) == pytest.approx(1.0 + (1 - 8 / 17))
    with slow.applied():
        assert float(p) == pytest.approx(float(slow.shadow[0]))
    assert float(p) == 2.0


def test_timestep_modes_in_range_and_deterministic():
    grid = rollout_grid("dpm", 10, 3.0)
    for epoch in range(20):
        t = train_timesteps("grid", grid, 4, trunc_steps=4, seed=0, epoch=epoch)
        assert len({x.sigma for x in t}) == 4
        assert all(x.timestep.dtype == torch.int64 and int(x.timestep) in grid.timesteps[:5].tolist() for x in t)
        assert all(x.sigma == int(x.timestep) / 1000 for x in t)  # official: re-noise at t / 1000
        u = train_timesteps("uniform", grid, 4, t_min=0.6, seed=0, epoch=epoch)
        assert all(0.6 <= x.sigma <= 1.0 and float(x.timestep) == pytest.approx(1000 * x.sigma) for x in u)
    a = train_timesteps("grid", grid, 4, 4, seed=3, epoch=5)
    assert a == train_timesteps("grid", grid, 4, 4, seed=3, epoch=5)
    with pytest.raises(ValueError):
        train_timesteps("grid", grid, 6, trunc_steps=4)


def test_shared_noise_shared_within_group_different_across():
    gid = torch.tensor([0, 0, 1, 1, 1, 2])
    e = shared_noise((3, 4, 4), gid, seed=0, epoch=0, slot=0)
    assert torch.equal(e[0], e[1]) and torch.equal(e[2], e[4])
    assert not torch.equal(e[0], e[2]) and not torch.equal(e[2], e[5])
    assert not torch.equal(e, shared_noise((3, 4, 4), gid, 0, 0, slot=1))
    assert not torch.equal(e, shared_noise((3, 4, 4), gid, 0, epoch=1, slot=0))
    assert torch.equal(e[2:], shared_noise((3, 4, 4), gid[2:], 0, 0, 0))  # same on any process


def test_dsm_is_per_sample_mean():
    v, t = torch.ones(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    t[1] = 3.0
    assert dsm(v, t).tolist() == [1.0, 4.0]


def test_logit_normal_training_times_are_the_official_scheduler_entries_per_group():
    """Flow-GRPO's DPO script: per pair, u = sigmoid(N(0, 1)), index floor(1000 u) into diffusers'
    FlowMatchEulerDiscreteScheduler (shift 3) timesteps, and x_t re-noised at that entry's sigma."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    times = train_timesteps("logit_normal", None, 3, groups=4000, shift=3.0, seed=1, epoch=2)
    again = train_timesteps("logit_normal", None, 3, groups=4000, shift=3.0, seed=1, epoch=2)
    assert len(times) == 3 and all(torch.equal(a.sigma, b.sigma) and torch.equal(a.timestep, b.timestep)
                                   for a, b in zip(times, again))
    for t in times:
        idx = torch.searchsorted(-sched.timesteps, -t.timestep)  # descending schedule
        assert torch.equal(sched.timesteps[idx], t.timestep) and torch.equal(sched.sigmas[idx], t.sigma)
        q = torch.quantile(idx.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
        expect = 1000 * torch.sigmoid(torch.tensor([-1.2816, 0.0, 1.2816], dtype=torch.float64))  # N(0,1) deciles
        assert torch.allclose(q, expect, atol=15), (q, expect)
    assert not torch.equal(times[0].sigma, times[1].sigma)  # each training time draws anew
    sigma, tt = times[0].at(torch.tensor([5, 5, 7]))
    assert sigma[0] == sigma[1] == times[0].sigma[5] and tt[2] == times[0].timestep[7]  # shared inside a group
