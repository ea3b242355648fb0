"""ODE samplers and rollout grids, pinned to diffusers' schedulers and the official literal values."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from dgpo.samplers.ode import sample_ode
from dgpo.schedules import Grid, interpolate, rollout_grid

# the official DGPO rollout scheduler: Sana 1600M's flow DPM-Solver++ config with flow_shift set,
# written out here independently of the package's constant
OFFICIAL_DPM = {"num_train_timesteps": 1000, "prediction_type": "flow_prediction", "use_flow_sigmas": True,
                "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                "lower_order_final": True, "final_sigmas_type": "zero", "timestep_spacing": "linspace"}


def official_scheduler(method, steps, shift):
    s = (DPMSolverMultistepScheduler(**OFFICIAL_DPM, flow_shift=shift) if method == "dpm"
         else FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift))
    s.set_timesteps(steps)
    return s


def exact_sigma_grid(grid: Grid, end: float | None = None) -> Grid:
    """The grid's sigmas with timesteps 1000 sigma in float64 (closed-form fields then see the exact
    sigma), optionally stopping at ``end`` instead of 0."""
    sig = grid.sigmas.clone()
    if end is not None:
        sig[-1] = end
    return Grid(sig, sig[:-1] * 1000)


def test_flow_convention_t0_data_t1_noise():
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.equal(interpolate(x0, eps, 0.0), x0)
    assert torch.equal(interpolate(x0, eps, 1.0), eps)
    t = torch.tensor([0.0, 1.0])
    out = interpolate(x0, eps, t)
    assert torch.equal(out[0], x0[0]) and torch.equal(out[1], eps[1])


def test_official_literal_grids_10_steps_shift_3():
    dpm = rollout_grid("dpm", 10, 3.0)
    assert dpm.timesteps.dtype == torch.int64
    assert dpm.timesteps.tolist() == [999, 963, 922, 874, 817, 749, 666, 562, 428, 249]
    assert dpm.sigmas.tolist() == pytest.approx(
        [0.99967, 0.96394, 0.92272, 0.87464, 0.81781, 0.74962, 0.66630, 0.56215, 0.42827, 0.24979, 0.0], abs=6e-6)
    assert dpm.train_sigmas.tolist() == pytest.approx([t / 1000 for t in dpm.timesteps.tolist()], abs=0)
    assert dpm.train_sigmas[:5].tolist() == pytest.approx([0.999, 0.963, 0.922, 0.874, 0.817], abs=1e-12)
    assert rollout_grid("dpm", 10, 1.0).sigmas[:2].tolist() == pytest.approx([0.999, 0.8991], abs=1e-6)
    euler = rollout_grid("euler", 10, 3.0)
    assert euler.timesteps.dtype == torch.float32
    assert euler.sigmas.tolist() == pytest.approx(
        [1.0, 0.96013, 0.91335, 0.85769, 0.79037, 0.70728, 0.60215, 0.46488, 0.27805, 0.00893, 0.0], abs=6e-6)
    assert torch.allclose(euler.timesteps.double(), euler.sigmas[:-1] * 1000, atol=1e-3)


@pytest.mark.parametrize("method", ["dpm", "euler"])
@pytest.mark.parametrize("steps", [10, 14])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_grid_equals_the_diffusers_scheduler(method, steps, shift):
    g, s = rollout_grid(method, steps, shift), official_scheduler(method, steps, shift)
    assert torch.equal(g.sigmas, s.sigmas.double()) and torch.equal(g.timesteps, s.timesteps)
    assert g.timesteps.dtype == s.timesteps.dtype == (torch.int64 if method == "dpm" else torch.float32)


@pytest.mark.parametrize("method", ["euler", "dpm"])
def test_constant_velocity_lands_exactly(method):
    x1, c = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    grid = rollout_grid(method, 7, 2.0)
    out = sample_ode(lambda x, t: c.expand_as(x), x1, grid, method)
    assert torch.allclose(out, x1 - float(grid.sigmas[0]) * c, atol=1e-12)  # x(0) = x(s0) - s0 c


def test_euler_on_linear_in_t_converges_to_the_closed_form():
    # v = a t  =>  x(0) = x(1) - a/2; Euler is first order, so error ~ a / (2 N)
    x1, a = torch.zeros(1, 4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    for n, tol in ((10, 0.06), (200, 0.003)):
        grid = exact_sigma_grid(rollout_grid("euler", n, 1.0))
        out = sample_ode(lambda x, t: a * (t / 1000)[:, None], x1, grid, "euler")
        assert torch.allclose(out[0], -a / 2, atol=tol)


def test_dpm_exact_for_straight_flow_from_point_data():
    # data = single point mu: v = (x - mu) / sigma, the x0-prediction is mu exactly, and
    # DPM-Solver++ (data prediction) lands on mu in any number of steps
    mu = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    grid = exact_sigma_grid(rollout_grid("dpm", 4, 3.0))
    out = sample_ode(lambda x, t: (x - mu) / (t / 1000)[:, None], torch.randn(1, 3, dtype=torch.float64), grid, "dpm")
    assert torch.allclose(out, mu, atol=1e-12)


def _mixture_velocity(x, t):
    """Exact flow velocity for 2-point data {-1, +1} (1-D) at sigma = t / 1000: v = (x - E[x0|x_t]) / sigma."""
    s = (t / 1000).double()[:, None]
    logits = torch.stack([-(x - (1 - s) * m) ** 2 / (2 * s**2) for m in (-1.0, 1.0)], -1)
    w = logits.softmax(-1)
    return (x - (w[..., 1] - w[..., 0])) / s


def test_dpm10_beats_euler10_against_a_fine_reference():
    x1 = torch.linspace(-2, 2, 64, dtype=torch.float64)[:, None]
    end = 0.02  # stop short of sigma = 0 (the velocity is singular there)
    fine = torch.linspace(0.99967, end, 4001, dtype=torch.float64)
    ref = sample_ode(_mixture_velocity, x1, Grid(fine, fine[:-1] * 1000), "euler")
    grid = exact_sigma_grid(rollout_grid("dpm", 10, 3.0), end)
    dpm, eul = (sample_ode(_mixture_velocity, x1, grid, m) for m in ("dpm", "euler"))
    assert (dpm - ref).abs().max() < (eul - ref).abs().max()


def _linear_field(x, t):
    a = torch.tensor([[0.2, -0.5, 0.1], [0.4, 0.1, -0.3], [-0.2, 0.3, 0.25]], dtype=torch.float64)
    return torch.einsum("ij,bj->bi", a, x) * (1 + (t / 1000).double()[:, None]) + 0.3


@pytest.mark.parametrize("method", ["dpm", "euler"])
@pytest.mark.parametrize("steps", [10, 14])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_trajectory_equals_scheduler_step_by_step(method, steps, shift):
    """Our sampler against diffusers' ``scheduler.step`` fed the same velocities at the same integer
    (DPM) or float (Euler) timesteps: every intermediate x, step 1 (DPM: second order) included."""
    g = torch.Generator().manual_seed(steps)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    ours = []
    sample_ode(_linear_field, x.clone(), rollout_grid(method, steps, shift), method, lambda i, xi: ours.append(xi))
    s, y, theirs = official_scheduler(method, steps, shift), x.clone(), []
    for t in s.timesteps:
        y = s.step(_linear_field(y, t.expand(len(y))), t, y).prev_sample
        theirs.append(y)
    assert len(ours) == len(theirs) == steps
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), (i, (a - b).abs().max())
    if method == "dpm":  # step 1 is second order in diffusers (sigma_0 < 1): a first-order step differs
        first = official_scheduler(method, steps, shift)
        first.step(_linear_field(x, s.timesteps[0].expand(4)), s.timesteps[0], x.clone())
        first.lower_order_nums = 0  # force the first-order update at step 1
        y1 = first.step(_linear_field(theirs[0], s.timesteps[1].expand(4)), s.timesteps[1], theirs[0]).prev_sample
        assert (y1 - ours[1]).abs().max() > 1e-4
