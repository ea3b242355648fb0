"""GRPO-Guard (arXiv 2510.22319) as a Flow-GRPO option: RatioNorm and the per-step gradient reweight
against a restatement of the official lines (yifan123/flow_grpo @9745241, scripts/train_sd3_GRPO_Guard.py,
``config.rationorm``), their closed forms, and a short run through the Trainer."""

import json
import math

import pytest
import torch

from dgpo.config import load_config
from dgpo.errors import ConfigError
from dgpo.losses.flow_grpo import flow_grpo_loss, grpo_guard_loss, guard_log_ratio
from dgpo.samplers.sde import SDEStep, gaussian_logprob, sde_std, sde_step
from dgpo.schedules import rollout_grid

D = (4, 3, 3)


def _official_logprob(x_next, mean, std_dev_t, sqrt_dt):
    """The official sde_step_with_logprob's log-prob (sde): Gaussian of std std_dev_t sqrt(-dt), element mean."""
    s = std_dev_t * sqrt_dt
    lp = -((x_next - mean) ** 2) / (2 * s**2) - torch.log(s) - torch.log(torch.sqrt(torch.as_tensor(2 * math.pi)))
    return lp.mean(dim=tuple(range(1, lp.ndim)))


def _official_guard(lp, lp_old, mean, mean_old, std_dev_t, sqrt_dt, adv, clip):
    """The official guard lines, restated: ratio_mean_bias, the ratio, the clipped loss over sqrt_dt^2."""
    sigma_t = std_dev_t.mean()
    bias = (mean - mean_old).pow(2).mean(dim=tuple(range(1, mean.ndim)))
    bias = bias / (2 * (sqrt_dt.mean() * sigma_t) ** 2)
    ratio = torch.exp((lp - lp_old + bias) * (sqrt_dt.mean() * sigma_t))
    loss = torch.mean(torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)))
    return ratio, loss / (sqrt_dt.mean() ** 2)


def _step(n=6, seed=0, s_t=1.3, sqrt_dt=0.3, shift=0.05):
    """A hand-built step: rollout mean, its sample x_next = mean + s eps, and a moved policy mean."""
    g = torch.Generator().manual_seed(seed)
    mean_old = torch.randn(n, *D, generator=g)
    eps = torch.randn(n, *D, generator=g)
    delta = shift * torch.randn(n, *D, generator=g)
    x_next = mean_old + s_t * sqrt_dt * eps
    col = torch.full((n, 1, 1, 1), s_t), torch.full((n, 1, 1, 1), sqrt_dt)  # the official [B, 1, 1, 1] values
    return mean_old, eps, delta, x_next, col


def test_ratio_norm_and_reweighted_loss_equal_the_official_lines():
    mean_old, _, delta, x_next, (std_dev_t, sqrt_dt) = _step()
    mean = (mean_old + delta).requires_grad_(True)
    lp, lp_old = _official_logprob(x_next, mean, std_dev_t, sqrt_dt), _official_logprob(x_next, mean_old, std_dev_t,
                                                                                         sqrt_dt)
    adv = torch.tensor([-1.5, -0.5, 2.0, 2.0, 0.3, -1.0])
    ratio_ref, loss_ref = _official_guard(lp, lp_old, mean, mean_old, std_dev_t, sqrt_dt, adv, clip=0.01)
    (grad_ref,) = torch.autograd.grad(loss_ref, mean, retain_graph=True)
    std, dt = 1.3 * 0.3, 0.3**2
    out = grpo_guard_loss(lp, lp_old, mean, mean_old, torch.tensor(std), dt, adv, 0.01)
    (grad,) = torch.autograd.grad(out.loss, mean)
    assert torch.allclose(out.ratio, ratio_ref, rtol=1e-6)
    assert float(out.loss.detach()) == pytest.approx(float(loss_ref.detach()), rel=1e-5)
    assert torch.allclose(grad, grad_ref, rtol=1e-4, atol=1e-9)
    assert 0 < int(out.clipped.sum()) < len(adv)  # both branches occur at this clip


def test_ratio_norm_alone_is_flow_factorys_ratio():
    """dt=None (grpo.guard_reweight=false): Flow-Factory's grpo-guard ratio (X-GenGroup/Flow-Factory,
    trainers/grpo.py GRPOGuardTrainer): exp((lp - lp_old) scale + mse / (2 scale)), scale = sqrt(-dt) std_dev_t;
    its policy loss is not divided by dt."""
    mean_old, _, delta, x_next, (std_dev_t, sqrt_dt) = _step(seed=1)
    mean = mean_old + delta
    lp, lp_old = _official_logprob(x_next, mean, std_dev_t, sqrt_dt), _official_logprob(x_next, mean_old, std_dev_t,
                                                                                         sqrt_dt)
    scale = 0.3 * 1.3
    mse = (mean - mean_old).flatten(1).pow(2).mean(dim=1)
    ratio_ff = torch.exp((lp - lp_old) * scale + mse / (2 * scale))
    adv = torch.linspace(-1, 1, 6)
    out = grpo_guard_loss(lp, lp_old, mean, mean_old, scale, None, adv, 1e-3)
    assert torch.allclose(out.ratio, ratio_ff, rtol=1e-6)
    expected = torch.maximum(-adv * ratio_ff, -adv * ratio_ff.clamp(1 - 1e-3, 1 + 1e-3)).mean()
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-6)


def test_ratio_norm_closed_form_is_the_noise_times_the_mean_shift():
    """(lp - lp_old + mean (d mu)^2 / (2 s^2)) s = mean_d eps (mu - mu_old) for x_next = mu_old + s eps."""
    for s_t, sqrt_dt in ((0.2, 0.1), (1.3, 0.3), (4.0, 0.05)):
        mean_old, eps, delta, x_next, _ = _step(seed=2, s_t=s_t, sqrt_dt=sqrt_dt)
        s = torch.tensor(s_t * sqrt_dt)
        lp = _official_logprob(x_next, mean_old + delta, s, torch.tensor(1.0))
        lp_old = _official_logprob(x_next, mean_old, s, torch.tensor(1.0))
        closed = (eps * delta).flatten(1).mean(1)
        assert torch.allclose(guard_log_ratio(lp, lp_old, mean_old + delta, mean_old, s), closed, atol=2e-6)
        # on-policy (the first optimizer step of an epoch): exactly 1
        assert torch.equal(guard_log_ratio(lp_old, lp_old, mean_old, mean_old, s), torch.zeros(6))


def test_ratio_norm_centres_every_step_and_unifies_its_spread():
    """Over the rollout's noise, the raw log-ratio has mean -mean_d (d mu)^2 / (2 s^2) (below 0: the ratio's
    mean sits below 1, most at small s) and spread ~ 1 / s; RatioNorm's has mean 0 and the same spread
    sqrt(mean_d (d mu)^2 / D) at every step."""
    n = 20000
    g = torch.Generator().manual_seed(3)
    delta = 0.05 * torch.randn(1, *D, generator=g).expand(n, *D)
    msq, d_elems = float(delta[0].pow(2).mean()), math.prod(D)
    spread = math.sqrt(msq / d_elems)
    for s in (0.03, 0.1, 0.5):
        mean_old = torch.randn(n, *D, generator=g)
        x_next = mean_old + s * torch.randn(n, *D, generator=g)
        std = torch.tensor(s)
        lp = gaussian_logprob(x_next, SDEStep(mean_old + delta, std, std))
        lp_old = gaussian_logprob(x_next, SDEStep(mean_old, std, std))
        raw, norm = lp - lp_old, guard_log_ratio(lp, lp_old, mean_old + delta, mean_old, s)
        assert float(raw.mean()) == pytest.approx(-msq / (2 * s**2), rel=0.05)
        assert float(raw.std()) == pytest.approx(spread / s, rel=0.05)
        assert abs(float(norm.mean())) < 4 * spread / math.sqrt(n)
        assert float(norm.std()) == pytest.approx(spread, rel=0.05)


def _grads(x, v0, u, eps, adv, s, s_next, guard_sigma):
    """d loss / d theta at theta = 0 (on-policy) for the policy velocity v0 + theta u: raw Flow-GRPO's,
    GRPO-Guard's, and the step means' derivative along u."""
    old = sde_step(x, v0, s, s_next, guard_sigma, 0.7)
    x_next = old.mean + old.std * eps
    lp_old = gaussian_logprob(x_next, old)
    out = []
    for guard in (False, True):
        theta = torch.zeros((), requires_grad=True)
        st = sde_step(x, v0 + theta * u, s, s_next, guard_sigma, 0.7)
        lp = gaussian_logprob(x_next, st)
        loss = (grpo_guard_loss(lp, lp_old, st.mean, old.mean, st.std, s - s_next, adv, 2e-6) if guard
                else flow_grpo_loss(lp, lp_old, adv, 2e-6)).loss
        out.append(float(torch.autograd.grad(loss, theta)[0]))
    return *out, sde_step(x, v0 + u, s, s_next, guard_sigma, 0.7).mean - old.mean


def test_gradient_weight_of_each_step_is_the_officials():
    """On-policy (ratio 1, inside the clip) the guarded gradient is the raw Flow-GRPO one times
    s_t sqrt(dt) / dt = s_t / sqrt(dt) for the step (the official ratio scale over its sqrt_dt^2),
    s_t = a sqrt(sigma / (1 - sigma)) with sigma 1 guarded by the grid's second sigma: on the official
    SD3 grid (10 Euler steps, shift 3, a 0.7) these weights fall as sigma falls; in closed form the gradient
    is -mean_i A_i mean_d eps_i du_i / dt for the step mean moving by du along the velocity's direction."""
    sig = rollout_grid("euler", 10, 3.0).sigmas.tolist()
    g = torch.Generator().manual_seed(4)
    x, v0, u, eps = (torch.randn(5, *D, generator=g) for _ in range(4))
    adv = torch.tensor([1.0, -2.0, 0.5, 1.5, -1.0])
    weights = []
    for j in range(9):
        s, s_next = sig[j], sig[j + 1]
        g_raw, g_guard, du = _grads(x, v0, u, eps, adv, s, s_next, sig[1])
        w = 0.7 * math.sqrt(s / (1 - (sig[1] if s >= 1 else s))) / math.sqrt(s - s_next)
        assert g_guard == pytest.approx(w * g_raw, rel=1e-4), j
        closed = -float((adv * (eps * du).flatten(1).mean(1)).mean()) / (s - s_next)
        assert g_guard == pytest.approx(closed, rel=1e-4), j
        weights.append(w)
    assert weights == sorted(weights, reverse=True)


def test_per_sample_steps_reduce_to_the_shared_step():
    mean_old, _, delta, x_next, (std_dev_t, sqrt_dt) = _step(seed=5)
    mean = mean_old + delta
    lp, lp_old = _official_logprob(x_next, mean, std_dev_t, sqrt_dt), _official_logprob(x_next, mean_old, std_dev_t,
                                                                                         sqrt_dt)
    adv = torch.linspace(-2, 2, 6)
    shared = grpo_guard_loss(lp, lp_old, mean, mean_old, 0.39, 0.09, adv, 0.01)
    col = torch.full((6, 1, 1, 1), 0.39)
    per = grpo_guard_loss(lp, lp_old, mean, mean_old, col, torch.full((6,), 0.09, dtype=torch.float64), adv, 0.01)
    assert torch.allclose(shared.ratio, per.ratio)
    assert float(shared.loss) == pytest.approx(float(per.loss), abs=1e-6)  # dt rounded to fp32 or not


@pytest.mark.parametrize("extra,match", [
    (["train.algorithm=dgpo"], "train.algorithm=flow_grpo"),
    (["grpo.sde_type=cps"], "grpo.sde_type=sde"),
    (["grpo.noise_level=0", "grpo.kl_beta=0"], "noise_level=0"),
])
def test_guard_config_errors(extra, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["train.algorithm=flow_grpo", "grpo.guard=true", *extra])
    with pytest.raises(ConfigError, match="grpo.guard_reweight"):
        load_config(None, ["train.algorithm=flow_grpo", "grpo.guard_reweight=false"])


def _cfg(tiny, out, *extra):
    return load_config(None, [
        f"model.path={tiny}", f"run.out_dir={out}", "run.epochs=2", "run.sample_every=0", "run.save_every=0",
        "run.eval_at_ends=false", "run.log_with=none", "train.prompts_per_epoch=2", "train.group_size=4",
        "train.batch_size=4", "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=3",
        "reward.name=jpeg_incompressibility", "train.algorithm=flow_grpo", "grpo.kl_beta=0", "run.seed=1", *extra])


def test_guarded_gradient_through_the_model_is_the_raw_one_reweighted(tiny_toy, tmp_path):
    """Before an update, on the toy model: the rollout is the unguarded one, the stored means make the
    RatioNorm ratio exactly 1, and every parameter's gradient at step j is the raw one x s_t / sqrt(dt)."""
    from dgpo.data.prompts import epoch_prompts
    from dgpo.training.trainer import Trainer

    trainers, batches = {}, {}
    for guard in (False, True):
        tr = Trainer(_cfg(tiny_toy, tmp_path / str(guard), f"grpo.guard={guard}"))
        trainers[guard], batches[guard] = tr, tr.algo.rollout(epoch_prompts(tr.prompts, 2, 0, 0), 0, 0)
    assert torch.equal(batches[True].latents, batches[False].latents)
    assert torch.equal(batches[True].log_probs, batches[False].log_probs)
    assert "sde_means" not in batches[False].extra and batches[True].extra["sde_means"].shape[:2] == (8, 3)
    sig = trainers[True].algo.grid.sigmas.tolist()
    adv = torch.linspace(-1, 1, 8)
    for j in range(2):
        grads = {}
        for guard, tr in trainers.items():
            out = tr.algo.micro_loss(batches[guard], adv, torch.arange(8), j, 0, 0)
            assert float(out.stats["ratio_dev"]) == 0.0 and float(out.stats["clip"]) == 0.0
            params = tr.policy.params
            grads[guard] = torch.autograd.grad(out.loss_sum, params)
        s_t = float(sde_std(sig[j], sig[1], 0.7))
        w = s_t / math.sqrt(sig[j] - sig[j + 1])
        for a, b in zip(grads[True], grads[False], strict=True):
            assert torch.allclose(a, w * b, rtol=1e-3, atol=1e-7 * float(b.abs().max())), j


@pytest.mark.slow
def test_two_epochs_with_the_guard_through_the_trainer(tiny_toy, tmp_path):
    from dgpo.training.trainer import Trainer

    tr = Trainer(_cfg(tiny_toy, tmp_path / "run", "grpo.guard=true", "grpo.clip_range=2e-6",
                      "train.steps_per_epoch=2", "train.sampling_batches=2"))
    before = [p.detach().clone() for p in tr.policy.params]
    summary = tr.fit()
    assert summary["steps"] == 4
    assert any(not torch.equal(a, p) for a, p in zip(before, tr.policy.params, strict=True))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {"logr", "logr_raw", "clip_hi", "clip_lo", "ratio_dev"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("loss", "logr", "logr_raw", "grad_norm"))
    for first, second in (rows[0], rows[1]), (rows[2], rows[3]):  # each epoch: on-policy, then moved
        assert first["ratio_dev"] == 0.0 and first["logr"] == 0.0 and first["clip"] == 0.0
        assert second["ratio_dev"] > 0.0 and second["clip_hi"] + second["clip_lo"] == pytest.approx(second["clip"])
