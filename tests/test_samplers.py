import math

import pytest
import torch

from dgpo.samplers.ode import sample_ode
from dgpo.schedules import interpolate, sigma_grid, time_shift


def test_sigma_grid_and_shift():
    g = sigma_grid(10, 3.0)
    assert g[0] == 1.0 and g[-1] == 0.0 and torch.all(g[1:] < g[:-1])
    # official 10-step shift-3 grid: t = 1000 sigma = 999, 963, 922, 874, 817, ...
    assert [int(1000 * s) for s in g[1:5]] == [964, 923, 875, 818]
    assert torch.allclose(time_shift(torch.tensor([0.5]), 3.0), torch.tensor([0.75]))


def test_flow_convention_t0_data_t1_noise():
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.equal(interpolate(x0, eps, 0.0), x0)
    assert torch.equal(interpolate(x0, eps, 1.0), eps)
    t = torch.tensor([0.0, 1.0])
    out = interpolate(x0, eps, t)
    assert torch.equal(out[0], x0[0]) and torch.equal(out[1], eps[1])


@pytest.mark.parametrize("method", ["euler", "dpm"])
def test_constant_velocity_lands_exactly(method):
    x1, c = torch.randn(3, 5), torch.randn(3, 5)
    out = sample_ode(lambda x, t: c.expand_as(x), x1, sigma_grid(7, 2.0), method)
    assert torch.allclose(out, x1 - c, atol=1e-5)  # x(0) = x(1) - int_0^1 c dt


def test_euler_exact_on_linear_in_t_with_fine_grid_and_closed_form():
    # v = a t  =>  x(0) = x(1) - a/2; Euler is first order, so error ~ a / (2 N)
    x1, a = torch.zeros(4), torch.ones(4)
    for n, tol in ((10, 0.051), (200, 0.0026)):
        out = sample_ode(lambda x, t: a * t[:, None], x1[None], sigma_grid(n), "euler")
        assert torch.allclose(out[0], -a / 2, atol=tol)


def test_dpm_exact_for_straight_flow_from_gaussian_data():
    # data = single point mu: the exact velocity is v = (x - mu) / t ... x0-prediction is mu exactly,
    # and DPM-Solver++ (data prediction) lands on mu in any number of steps
    mu = torch.tensor([[0.3, -1.2, 2.0]])
    v = lambda x, t: (x - mu) / t[:, None]
    out = sample_ode(v, torch.randn(1, 3), sigma_grid(4, 3.0), "dpm")
    assert torch.allclose(out, mu, atol=1e-5)


def _mixture_velocity(x, t):
    """Exact flow velocity for 2-point data {-1, +1} (1-D): v = (x - E[x0|x_t]) / t."""
    t = t[:, None].double()
    x = x.double()
    logits = torch.stack([-(x - (1 - t) * m) ** 2 / (2 * t**2) for m in (-1.0, 1.0)], -1)
    w = logits.softmax(-1)
    ex0 = w[..., 0] * -1.0 + w[..., 1] * 1.0
    return ((x - ex0) / t).float()


def test_dpm10_beats_euler10_against_200_step_reference():
    x1 = torch.linspace(-2, 2, 64)[:, None]
    ref = sample_ode(_mixture_velocity, x1, sigma_grid(200, 3.0)[:-1].clone(), "euler")
    grid = sigma_grid(10, 3.0)[:-1]  # stop just before t = 0 (velocity singular there)
    grid = torch.cat([grid, sigma_grid(200, 3.0)[-2:-1]])
    e = (sample_ode(_mixture_velocity, x1, grid, "euler") - ref).abs().max()
    d = (sample_ode(_mixture_velocity, x1, grid, "dpm") - ref).abs().max()
    assert d < e


def test_dpm_matches_diffusers_flow_dpm_solver():
    from diffusers import DPMSolverMultistepScheduler

    s = DPMSolverMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                    use_flow_sigmas=True, flow_shift=3.0, algorithm_type="dpmsolver++",
                                    solver_order=2, solver_type="midpoint", lower_order_final=True,
                                    final_sigmas_type="zero")
    s.set_timesteps(10)
    torch.manual_seed(0)
    a = torch.randn(3, 3) * 0.3
    vf = lambda x, t: torch.einsum("ij,bj->bi", a, x) * (1 + t[:, None])
    x = torch.randn(2, 3)
    y = x.clone()
    for i, t in enumerate(s.timesteps):
        y = s.step(vf(y, torch.full((2,), float(s.sigmas[i]))), t, y).prev_sample
    assert torch.allclose(sample_ode(vf, x, s.sigmas, "dpm"), y, atol=1e-5)
    assert not math.isclose(float(sample_ode(vf, x, s.sigmas, "euler").sum()), float(y.sum()), rel_tol=1e-6)
