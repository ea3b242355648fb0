"""Flow-GRPO's SDE and loss, Diffusion-DPO, and DGPO's alternative weightings, against formulas."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from dgpo.advantages import group_advantages, group_weights
from dgpo.algorithms.dpo import best_worst
from dgpo.losses.dpo import diffusion_dpo_loss
from dgpo.losses.flow_grpo import flow_grpo_loss, step_kl
from dgpo.samplers.sde import cps_step, gaussian_logprob, make_step, sample_sde, sde_std, sde_step, step_logprob
from dgpo.schedules import Grid


def test_sde_step_mean_and_std_follow_the_formula():
    torch.manual_seed(0)
    x, v = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t, t_next, a = 0.7, 0.55, 0.7
    s = a * math.sqrt(t / (1 - t))
    dt = t_next - t
    step = sde_step(x, v, t, t_next, 0.9, a)
    expected = x + (v + s**2 / (2 * t) * (x + (1 - t) * v)) * dt
    assert torch.allclose(step.mean, expected, atol=1e-6)
    assert float(step.std) == pytest.approx(s * math.sqrt(-dt))
    assert float(step.std_t) == pytest.approx(s)
    # t = 1: the official guard puts the grid's second sigma in the denominator
    assert sde_std(1.0, 0.9, a) == pytest.approx(a * math.sqrt(1 / (1 - 0.9)))


def test_logprob_is_the_elementwise_mean_of_the_normal_log_density():
    torch.manual_seed(1)
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    step = sde_step(x, v, 0.5, 0.4, 0.9, 0.7)
    x_next = step.mean + step.std * torch.randn_like(x)
    ref = Normal(step.mean, step.std).log_prob(x_next).flatten(1).mean(1)
    assert torch.allclose(gaussian_logprob(x_next, step), ref, atol=1e-5)


def test_sde_with_zero_noise_is_the_euler_ode_and_logs_only_stochastic_steps():
    sig = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    grid = Grid(sig.double(), sig[:-1] * 1000)
    fn = lambda x, t: -x
    x = torch.ones(2, 1, 2, 2)
    det = sample_sde(fn, x, grid, 0.0, [1, 2], sde_steps=[])
    euler = x.clone()
    for i in range(4):
        euler = euler + (sig[i + 1] - sig[i]) * (-euler)
    assert torch.allclose(det.x0, euler)
    win = sample_sde(fn, x, grid, 0.7, [1, 2], sde_steps=[1, 2])
    assert (win.log_probs[:, [0, 3]] == 0).all() and (win.log_probs[:, [1, 2]] != 0).all()
    assert win.latents.shape == (2, 5, 1, 2, 2) and torch.equal(win.latents[:, -1], win.x0)
    # a sample's noise comes from its own seed: batch composition does not matter
    alone = sample_sde(fn, x[:1], grid, 0.7, [1], sde_steps=[1, 2])
    assert torch.allclose(alone.x0, win.x0[:1])


def test_cps_step_preserves_the_flows_noise_coefficient():
    """Coefficients-preserving sampling: with the exact velocity of a straight path x = (1 - s) x0 + s x1,
    x0_hat = x0 and x1_hat = x1, so x_next = (1 - s') x0 + sqrt(s'^2 - std^2) x1 + std eps: the noise
    around (1 - s') x0 has std s' (the flow's marginal at s'), std = s' sin(a pi / 2)."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(4000, 8, generator=g), torch.randn(4000, 8, generator=g)
    s, s_next, a = 0.8, 0.6, 0.8
    x, v = (1 - s) * x0 + s * x1, x1 - x0
    step = cps_step(x, v, s, s_next, a)
    assert float(step.std) == pytest.approx(s_next * math.sin(a * math.pi / 2))
    x_next = step.mean + step.std * torch.randn(x.shape, generator=g)
    noise = x_next - (1 - s_next) * x0
    assert float(noise.std()) == pytest.approx(s_next, rel=0.02)
    assert torch.allclose(step.mean, (1 - s_next) * x0 + math.sqrt(s_next**2 - float(step.std) ** 2) * x1, atol=1e-5)
    lp = step_logprob(x_next, step)  # official cps: -(x_next - mean)^2, averaged, no variance or constants
    assert torch.allclose(lp, -((x_next - step.mean) ** 2).mean(1))
    assert make_step("sde", x, v, s, s_next, 0.9, a).kind == "sde"
    assert make_step("cps", x, v, s, s_next, 0.9, a).kind == "cps"
    with pytest.raises(ValueError, match="sde_type"):
        make_step("ode", x, v, s, s_next, 0.9, a)


def test_step_kl_matches_the_gaussian_kl_and_the_closed_form():
    torch.manual_seed(2)
    x, v, v_ref = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t, t_next, a = 0.6, 0.45, 0.7
    p, q = sde_step(x, v, t, t_next, 0.9, a), sde_step(x, v_ref, t, t_next, 0.9, a)
    kl = step_kl(p.mean, q.mean, p.std)  # the paper's (step std)
    ref = kl_divergence(Normal(p.mean, p.std), Normal(q.mean, q.std)).flatten(1).mean(1)
    assert torch.allclose(kl, ref, atol=1e-5)
    s, dt = a * math.sqrt(t / (1 - t)), abs(t_next - t)
    closed = dt / 2 * (s * (1 - t) / (2 * t) + 1 / s) ** 2 * (v - v_ref).pow(2).flatten(1).mean(1)
    assert torch.allclose(kl, closed, atol=1e-5)
    code = step_kl(p.mean, q.mean, p.std_t)  # the official code's: no dt in the denominator
    assert torch.allclose(code, kl * dt, atol=1e-6)


def test_flow_grpo_loss_by_hand():
    lp = torch.tensor([0.1, -0.1, 0.01], requires_grad=True)
    old = torch.zeros(3)
    adv = torch.tensor([1.0, -1.0, 2.0])
    out = flow_grpo_loss(lp, old, adv, clip_range=0.05)
    # r = e^0.1 (A>0, clipped at 1.05), e^-0.1 (A<0, clipped at 0.95), e^0.01 (inside the range)
    expected = (-1.05 + 0.95 - 2 * math.exp(0.01)) / 3
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-6)
    assert out.clipped.tolist() == [True, True, False]
    out.loss.backward()
    assert torch.allclose(lp.grad, torch.tensor([0.0, 0.0, -2 * math.exp(0.01) / 3]), atol=1e-7)
    kl = torch.tensor([0.5, 1.0, 1.5])
    with_kl = flow_grpo_loss(lp.detach(), old, adv, 0.05, kl, kl_beta=0.1)
    assert float(with_kl.loss) == pytest.approx(expected + 0.1, rel=1e-6)


def test_diffusion_dpo_loss_by_hand_and_its_gradient():
    dsm = torch.tensor([0.5, 0.3, 0.2, 0.6], requires_grad=True)  # pair 0: (w, l); pair 1: (l, w)
    ref = torch.tensor([0.4, 0.35, 0.25, 0.5])
    label = torch.tensor([1.0, -1.0, -1.0, 1.0])
    pairs = torch.tensor([0, 0, 1, 1])
    beta = 10.0
    out = diffusion_dpo_loss(dsm, ref, label, pairs, beta)
    z0 = -0.5 * beta * ((0.5 - 0.4) - (0.3 - 0.35))  # -0.75
    z1 = -0.5 * beta * ((0.6 - 0.5) - (0.2 - 0.25))
    assert float(out.dpo) == pytest.approx((math.log1p(math.exp(-z0)) + math.log1p(math.exp(-z1))) / 2, rel=1e-5)
    assert float(out.dpo) == pytest.approx(math.log1p(math.exp(0.75)), rel=1e-5)
    out.loss.backward()
    d = dsm.detach().clone().requires_grad_(True)
    zw = -0.5 * beta * ((d[[0, 3]] - ref[[0, 3]]) - (d[[1, 2]] - ref[[1, 2]]))
    (-F.logsigmoid(zw).mean()).backward()
    assert torch.allclose(dsm.grad, d.grad, atol=1e-7)


def test_best_worst_labels_and_zero_spread_groups():
    r = torch.tensor([0.2, 0.9, 0.1, 0.5, 0.3, 0.3, 0.3, 0.3])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert best_worst(r, g).tolist() == [0, 1, -1, 0, 0, 0, 0, 0]


def test_best_worst_breaks_ties_as_the_official_argmax_and_argmin():
    """Flow-GRPO's stat tracker (type 'dpo'): torch.argmax / argmin, the first of the tied; a strict 0/1
    reward ties often."""
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    official = torch.zeros(8)
    for grp in (0, 1):
        idx = torch.nonzero(g == grp).squeeze(1)
        official[idx[torch.argmax(r[idx])]], official[idx[torch.argmin(r[idx])]] = 1.0, -1.0
    assert best_worst(r, g).tolist() == official.tolist() == [1, -1, 0, 0, -1, 1, 0, 0]


@pytest.mark.parametrize("mode", ["adv", "rank", "softmax", "sign"])
def test_weightings_are_zero_sum_per_group_and_keep_the_order(mode):
    torch.manual_seed(3)
    r = torch.cat([torch.rand(8), torch.full((8,), 0.5), torch.rand(8)])
    g = torch.arange(3).repeat_interleave(8)
    adv, _ = group_advantages(r, g)
    w = group_weights(r, adv, g, mode, temperature=0.2)
    for k in range(3):
        assert abs(float(w[g == k].sum())) < 1e-5
    assert torch.all(w[g == 1] == 0)  # zero-spread group
    for k in (0, 2):
        rk, wk = r[g == k], w[g == k]
        order = torch.argsort(rk)
        assert torch.all(wk[order][1:] >= wk[order][:-1] - 1e-6)  # better reward, larger weight
    if mode == "sign":
        assert len(torch.unique(w[g == 0].round(decimals=5))) == 2
