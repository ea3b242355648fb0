"""Official values pinned with the official objects and literal numbers (Luo-Yihong/DGPO @01ceb4b
``scripts/train_sd3_dgpo.py``; yifan123/flow_grpo @ac4c86e ``scripts/train_sd3.py``,
``sd3_sde_with_logprob.py``): the trainers' rollout grids, timesteps and training sigmas, Flow-GRPO's
SDE ends, DGPO's loss block, the slow-EMA cadence and Flow-GRPO's batching. Helpers named
``official_*`` restate the official behaviour from its formulas; they import nothing from dgpo."""

import math
from pathlib import Path

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from dgpo import bench
from dgpo.advantages import refill_zero_advantage
from dgpo.config import load_config
from dgpo.losses.dgpo import dgpo_velocity_loss
from dgpo.models.base import cfg_velocity
from dgpo.samplers.sde import sde_std
from dgpo.training.ema import SlowEMA
from dgpo.training.trainer import Trainer

DPM_10_SHIFT_3 = {
    "timesteps": [999, 963, 922, 874, 817, 749, 666, 562, 428, 249],
    "sigmas": [0.99967, 0.96394, 0.92272, 0.87464, 0.81781, 0.74962, 0.66630, 0.56215, 0.42827, 0.24979, 0.0]}
EULER_10_SHIFT_3 = [1.0, 0.96013, 0.91335, 0.85769, 0.79037, 0.70728, 0.60215, 0.46488, 0.27805, 0.00893, 0.0]


def official_rollout_scheduler(algorithm: str, steps: int, shift: float):
    """DGPO: DPMSolverMultistepScheduler from Sana's flow config with flow_shift set; Flow-GRPO: SD3's
    FlowMatchEulerDiscreteScheduler; then set_timesteps(steps)."""
    if algorithm == "dgpo":
        s = DPMSolverMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                        use_flow_sigmas=True, flow_shift=shift, algorithm_type="dpmsolver++",
                                        solver_order=2, solver_type="midpoint", lower_order_final=True,
                                        final_sigmas_type="zero", timestep_spacing="linspace")
    else:
        s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    s.set_timesteps(steps)
    return s


def _trainer(tiny_toy, tmp_path, *extra):
    return Trainer(load_config(None, [f"model.path={tiny_toy}", f"run.out_dir={tmp_path / 'run'}",
                                      "reward.name=jpeg_incompressibility", *extra]))


# ------------------------------------------------------------------ grids, timesteps, training sigma
@pytest.mark.parametrize("algorithm", ["dgpo", "flow_grpo"])
@pytest.mark.parametrize("steps", [10, 14])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_trainer_grid_timesteps_and_training_sigma_are_the_schedulers(tiny_toy, tmp_path, algorithm, steps, shift):
    tr = _trainer(tiny_toy, tmp_path, f"train.algorithm={algorithm}", f"sampler.steps={steps}",
                  f"sampler.shift={shift}", "timesteps.trunc_steps=6", "timesteps.count=4")
    s = official_rollout_scheduler(algorithm, steps, shift)
    assert torch.equal(tr.algo.grid.sigmas, s.sigmas.double()) and torch.equal(tr.algo.grid.timesteps, s.timesteps)
    assert tr.algo.grid.timesteps.dtype == (torch.int64 if algorithm == "dgpo" else torch.float32)
    if algorithm == "dgpo":
        assert float(tr.algo.grid.sigmas[0]) < 1.0  # 0.99967 at shift 3, 0.999 at shift 1: not 1
        for epoch in range(3):
            units = tr.algo.units(None, epoch, 0)
            assert len({int(u.timestep) for u in units}) == 4
            for u in units:
                assert u.timestep.dtype == torch.int64 and int(u.timestep) in s.timesteps[:7].tolist()
                assert u.sigma == pytest.approx(float(u.timestep) / 1000, abs=1e-15)  # re-noise at t / 1000
        if (steps, shift) == (10, 3.0):
            assert tr.algo.grid.timesteps.tolist() == DPM_10_SHIFT_3["timesteps"]
            assert tr.algo.grid.sigmas.tolist() == pytest.approx(DPM_10_SHIFT_3["sigmas"], abs=6e-6)
            assert tr.algo.grid.train_sigmas[:7].tolist() == pytest.approx(
                [0.999, 0.963, 0.922, 0.874, 0.817, 0.749, 0.666], abs=1e-12)
    else:
        assert float(tr.algo.grid.sigmas[0]) == 1.0
        assert tr.algo.units(None, 0, 0) == list(range(int(steps * 0.99)))  # the trained SDE steps
        if (steps, shift) == (10, 3.0):
            assert tr.algo.grid.sigmas.tolist() == pytest.approx(EULER_10_SHIFT_3, abs=6e-6)


def test_flow_grpo_sde_ends_and_sigma_one_guard_on_the_official_grid(tiny_toy, tmp_path):
    tr = _trainer(tiny_toy, tmp_path, "train.algorithm=flow_grpo", "sampler.shift=3")
    s = tr.algo.grid.sigmas.tolist()
    a = 0.7
    # last SDE step 0.00893 -> 0: step noise std s_t sqrt(-dt) = 0.0063 (the uniform grid gave 0.202)
    last = sde_std(s[-2], s[1], a) * math.sqrt(s[-2] - s[-1])
    assert last == pytest.approx(0.0063, abs=5e-5)
    trained = tr.algo.units(None, 0, 0)  # the 9 trained steps span sigma 1 -> 0.00893 (the last one 0.278 -> 0.00893)
    assert s[trained[0]] == 1.0 and s[trained[-1] + 1] == pytest.approx(0.00893, abs=6e-6)
    # sigma = 1: only the denominator 1 - sigma uses sigmas[1] = 0.96013
    assert sde_std(1.0, s[1], a) == pytest.approx(a * math.sqrt(1.0 / (1 - 0.96013)), rel=1e-5)


# ------------------------------------------------------------------ DGPO's loss block
def official_dgpo_block(model_v, ref_cond, ref_uncond, old_v, target_v, adv, prompt_keys, group_size, beta_dpo,
                        kl_beta, clip_range, clip_dsm, clip_kl, use_ema_ref, kl_cfg):
    """The official per-timestep loss, restated from its formulas."""
    n = len(model_v)
    per_sample = lambda v: (target_v - v).square().reshape(n, -1).mean(1)
    ref_v = ref_uncond + kl_cfg * (ref_cond - ref_uncond) if kl_cfg > 1 else ref_cond
    a = adv.clamp(-5.0, 5.0)
    dsm = per_sample(model_v)
    use_old = clip_dsm or clip_kl
    should_clip = None
    if use_old:
        ratio = torch.exp(per_sample(old_v) - dsm)
        should_clip = torch.where(a > 0, ratio > 1 + clip_range, ratio < 1 - clip_range)
        if clip_dsm:
            dsm = torch.where(should_clip, dsm.detach(), dsm)
    ref_dsm = per_sample(old_v if use_ema_ref else ref_v).detach()
    _, inverse = torch.unique(prompt_keys, return_inverse=True)
    sums = torch.zeros(int(inverse.max()) + 1, dtype=dsm.dtype).scatter_add(
        0, inverse, a * beta_dpo * (dsm.detach() - ref_dsm) / group_size)
    loss = (torch.sigmoid(sums)[inverse].detach() * a * dsm).mean()
    if kl_beta > 0:
        kl = (model_v - ref_v).square().reshape(n, -1).mean(1)
        if clip_kl:
            kl = torch.where(should_clip, kl.detach(), kl)
        loss = loss + kl_beta * kl.mean()
    return loss, should_clip


class LinearFlow:
    """A closed-form velocity field v = w x + b, (w, b) given by the condition (float64)."""

    def velocity(self, x, t, cond):
        return x * cond["w"][:, None, None, None] + cond["b"]


CASES = [  # (group_size, groups, clip_dsm, clip_kl, use_ema_ref, kl_cfg, kl_beta)
    (2, 5, True, False, False, 1.0, 0.02), (4, 3, False, True, False, 1.0, 0.02),
    (4, 3, True, True, False, 4.5, 0.02), (8, 2, True, False, True, 1.0, 0.001),
    (8, 2, False, True, True, 4.5, 0.001), (3, 4, False, False, False, 4.5, 0.02),
    (16, 2, True, True, True, 1.0, 0.0), (6, 3, False, False, False, 1.0, 0.0),
]


@pytest.mark.parametrize("case", CASES)
def test_dgpo_loss_gradient_and_masks_equal_the_official_block(case):
    g_size, groups, clip_dsm, clip_kl, use_ema_ref, kl_cfg, kl_beta = case
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    n, shape = g_size * groups, (2, 3, 3)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    x, target = rnd(n, *shape), rnd(n, *shape)
    model_v = (target + 0.7 * rnd(n, *shape)).requires_grad_(True)
    old_v = model_v.detach() + 0.05 * rnd(n, *shape)  # ratios near 1: some clipped, some not
    cond = {"w": rnd(n) * 0.3, "b": rnd(n, *shape) * 0.5 + target}
    null = {"w": rnd(n) * 0.3, "b": rnd(n, *shape) * 0.5 + target}
    adv = rnd(n) * 1.5
    gid = torch.arange(groups).repeat_interleave(g_size)
    adv[gid == groups - 1] = 0.0  # a zero-spread group
    t = torch.full((n,), 874)
    model = LinearFlow()
    ref_c, ref_u = model.velocity(x, t, cond), model.velocity(x, t, null)

    want, mask = official_dgpo_block(model_v, ref_c, ref_u, old_v if (clip_dsm or clip_kl or use_ema_ref) else None,
                                     target, adv, gid * 7 + 3, g_size, 100.0, kl_beta, 0.01, clip_dsm, clip_kl,
                                     use_ema_ref, kl_cfg)
    (g_want,) = torch.autograd.grad(want, model_v)
    v_ref = cfg_velocity(model, x, t, cond, null, kl_cfg)  # our reference forward (CFG'd when kl_cfg > 1)
    ours = dgpo_velocity_loss(model_v, v_ref, target, adv, gid, 100.0, g_size, v_old=old_v, clip_range=0.01,
                              clip_dsm=clip_dsm, clip_kl=clip_kl, kl_beta=kl_beta, use_ema_ref=use_ema_ref)
    (g_ours,) = torch.autograd.grad(ours.loss, model_v)
    assert float(ours.loss) == pytest.approx(float(want), abs=1e-6)
    assert torch.allclose(g_ours, g_want, atol=1e-6, rtol=0)
    if mask is None:
        assert not ours.clipped.any()
    else:
        assert torch.equal(ours.clipped, mask) and 0 < int(mask.sum()) < n


@pytest.mark.parametrize("clip_dsm,clip_kl", [(True, False), (False, True), (True, True)])
def test_clip_flags_mask_dsm_and_kl_independently(clip_dsm, clip_kl):
    gen = torch.Generator().manual_seed(0)
    n = 12
    target = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    v = (target + torch.randn(n, 4, generator=gen, dtype=torch.float64)).requires_grad_(True)
    v_old = v.detach() + 0.1 * torch.randn(n, 4, generator=gen, dtype=torch.float64)
    v_ref = v.detach() + torch.randn(n, 4, generator=gen, dtype=torch.float64)
    gid = torch.arange(n) // 4
    kw = {"v_old": v_old, "clip_range": 0.01, "clip_dsm": clip_dsm, "clip_kl": clip_kl}
    # A = 0: only the KL has a gradient
    out = dgpo_velocity_loss(v, v_ref, target, torch.zeros(n, dtype=torch.float64), gid, 100.0, 4, kl_beta=0.5, **kw)
    (g,) = torch.autograd.grad(out.loss, v)
    m = out.clipped
    assert 0 < int(m.sum()) < n
    assert (g[m] == 0).all() == clip_kl and (g[~m] != 0).any(dim=1).all()
    # no KL: only the DGPO term
    adv = torch.randn(n, generator=gen, dtype=torch.float64)
    out = dgpo_velocity_loss(v, v_ref, target, adv, gid, 100.0, 4, kl_beta=0.0, **kw)
    (g,) = torch.autograd.grad(out.loss, v)
    m = out.clipped
    assert 0 < int(m.sum()) < n and (g[m] == 0).all() == clip_dsm and (g[~m] != 0).any(dim=1).all()


def test_edge_semantics_clip_range_zero_and_the_old_forward():
    gen = torch.Generator().manual_seed(3)
    n = 8
    target = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    v = target + torch.randn(n, 5, generator=gen, dtype=torch.float64)
    v_old = v + 0.1 * torch.randn(n, 5, generator=gen, dtype=torch.float64)
    adv, gid = torch.randn(n, generator=gen, dtype=torch.float64), torch.arange(n) // 4
    # clip_range = 0: the official mask clips every sample whose ratio moved in its A-direction...
    _, official = official_dgpo_block(v, v, v, v_old, target, adv, gid, 4, 100.0, 0.0, 0.0, True, False, False, 1.0)
    assert int(official.sum()) >= n // 2
    # ...here 0 means off
    ours = dgpo_velocity_loss(v, v, target, adv, gid, 100.0, 4, v_old=v_old, clip_range=0.0)
    assert not ours.clipped.any()
    # no clip flag: no mask (official: no 'old' forward when neither clip_dsm nor clip_kl is set)
    ours = dgpo_velocity_loss(v, v, target, adv, gid, 100.0, 4, v_old=v_old, clip_range=0.01, clip_dsm=False)
    assert not ours.clipped.any()


def test_duplicate_prompts_in_one_epoch_stay_separate_groups(tiny_toy, tmp_path):
    """dgpo: a group is an epoch slot (the official code would merge the two into one group of 2G)."""
    tr = _trainer(tiny_toy, tmp_path, "train.group_size=4", "train.prompts_per_epoch=2")
    meta = tr.prompts[0]
    batch = tr.algo.conditions([meta, meta], epoch=0)
    assert batch.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(set(batch.seeds)) == 8


# ------------------------------------------------------------------ the slow EMA's cadence
def official_slow_ema(weight_after, epochs, sampling_batches, steps_per_epoch, decay=0.9, every=8):
    """The official loop: the wrapper's step(params, global_step) after every sampling batch; the
    batch that ends a gradient accumulation has just made an optimizer step (counter + 1)."""
    ema, counter, accumulate = weight_after[0], 0, sampling_batches // steps_per_epoch
    for _ in range(epochs):
        for b in range(sampling_batches):
            if (b + 1) % accumulate == 0:
                counter += 1
            if (counter + 1) % every == 0:
                d = min(decay, (1 + counter) / (10 + counter))
                ema = ema + (1 - d) * (weight_after[counter] - ema)
    return ema, counter


@pytest.mark.parametrize("batches,steps_per_epoch", [(2, 1), (4, 1), (4, 2)])
def test_slow_ema_after_24_steps_follows_the_official_cadence(batches, steps_per_epoch):
    weights = [float(m) ** 1.5 for m in range(200)]  # the parameter after m optimizer steps
    want, counter = official_slow_ema(weights, 24 // steps_per_epoch, batches, steps_per_epoch)
    assert counter == 24
    p = torch.nn.Parameter(torch.tensor([weights[0]], dtype=torch.float64))
    ema = SlowEMA([p], 0.9, 8, "per_batch", batches // steps_per_epoch)
    for k in range(24):  # the trainer: optimizer step k, then update(k)
        with torch.no_grad():
            p.fill_(weights[k + 1])
        ema.update(k)
    assert float(ema.shadow[0]) == pytest.approx(want, rel=1e-12)
    # by hand: updates at counters 7, 15, 23, each blending the same weights `blends` times
    blends, hand = batches // steps_per_epoch, weights[0]
    for m in (7, 15, 23):
        hand = weights[m] + (hand - weights[m]) * ((1 + m) / (10 + m)) ** blends
    assert float(ema.shadow[0]) == pytest.approx(hand, rel=1e-12)
    # once the decay saturates, an update shrinks the distance by 0.9^blends: 0.81 (2x), 0.656 (4x)
    late = SlowEMA([p], 0.9, 8, "per_batch", blends)
    with torch.no_grad():
        p.fill_(1.0)
    late.shadow[0].zero_()
    late.update(198)  # counter 199: (199 + 1) % 8 == 0
    assert 1 - float(late.shadow[0]) == pytest.approx(0.9**blends, rel=1e-12)


def test_the_trainer_wires_the_official_cadence_and_the_per_step_option(tiny_toy, tmp_path):
    official = _trainer(tiny_toy, tmp_path, "train.ema_cadence=per_batch", "train.sampling_batches=4")
    assert (official.ema_slow.cadence, official.ema_slow.blends, official.ema_slow.every) == ("per_batch", 4, 1)
    grpo = _trainer(tiny_toy, tmp_path, *bench.FLOW_GRPO_OFFICIAL, "train.ema_cadence=per_batch")
    assert (grpo.ema_slow.cadence, grpo.ema_slow.blends) == ("per_batch", 2)
    demo = _trainer(tiny_toy, tmp_path)
    assert demo.ema_slow.cadence == "per_step"  # the toy demo's choice
    defaults = load_config("")
    t = defaults.train
    assert (t.ema_cadence, t.sampling_batches, t.ema_every) == ("per_batch", 2, 8)
    with pytest.raises(ValueError, match="train.sampling_batches=3 must be a multiple of train.steps_per_epoch=2"):
        load_config("", ["train.sampling_batches=3", "train.steps_per_epoch=2"])


# ------------------------------------------------------------------ Flow-GRPO's batching
def official_keep_count(adv_local: torch.Tensor, batches: int) -> int:
    keep = int((adv_local != 0).sum())
    need = (batches - keep % batches) % batches
    return keep + need if int((adv_local == 0).sum()) >= need else keep


@pytest.mark.parametrize("world", [1, 2])
def test_zero_advantage_filter_drops_exact_zeros_and_refills_per_process(world):
    g_size = 4
    adv = torch.tensor([0.0, 0.0, 0.0, 0.0,   # zero-spread group
                        1.2, -1.2, 0.0, 0.0,  # a live group: two members exactly on the mean
                        0.5, -0.5, 1.0, -1.0,
                        0.0, 0.0, 0.0, 0.0])
    owner = (torch.arange(16) % g_size) % world
    keep = refill_zero_advantage(adv, owner, world, 4, torch.Generator().manual_seed(0))
    assert keep[adv != 0].all()
    for r in range(world):
        mine = owner == r
        assert int((keep & mine).sum()) == official_keep_count(adv[mine], 4)


def test_flow_grpo_official_recipe_batching(tiny_toy, tmp_path):
    tr = _trainer(tiny_toy, tmp_path, *bench.FLOW_GRPO_OFFICIAL)
    c = tr.cfg
    assert (c.train.steps_per_epoch, c.train.sampling_batches, c.advantages.std, c.grpo.zero_adv,
            c.grpo.shuffle) == (2, 4, "global", "samples", True)
    recipe = load_config(Path(__file__).resolve().parents[1] / "configs" / "toy_flow_grpo_official.yaml").train
    assert (recipe.lora_rank, recipe.lora_alpha) == (32, 64.0)  # the bench arm keeps the suite's parameter set
    group_ids = torch.arange(64) // 8
    pos = torch.arange(64)[torch.arange(64) % 3 != 0]  # the kept samples
    chunks = tr.algo.optimizer_chunks(group_ids, pos, epoch=5)
    assert len(chunks) == 2 and abs(len(chunks[0]) - len(chunks[1])) <= 1
    assert torch.equal(torch.cat(chunks).sort().values, pos)
    assert len(torch.unique(group_ids[chunks[0]])) > 4  # a shuffle across groups, not whole groups
    assert not torch.equal(chunks[0], tr.algo.optimizer_chunks(group_ids, pos, epoch=6)[0])
    micro = tr.algo.micro_batches(group_ids, chunks[0])
    assert torch.equal(torch.cat(micro), chunks[0]) and max(len(m) for m in micro) <= c.train.batch_size
    recipe = load_config(Path(__file__).resolve().parents[1] / "configs" / "toy_flow_grpo_official.yaml")
    for item in bench.FLOW_GRPO_OFFICIAL:
        key, value = item.split("=")
        section, name = key.split(".")
        got = getattr(getattr(recipe, section), name)
        assert str(got).lower() == value.lower() or got == type(got)(value), key


def test_the_toy_dpo_recipe_has_the_official_dpo_scripts_numbers():
    """flow_grpo config/dpo.py geneval_sd3 + base.py, scripts/train_sd3_dpo.py, single_node/dpo.sh."""
    c = load_config(Path(__file__).resolve().parents[1] / "configs" / "toy_dpo_official.yaml")
    assert (c.train.algorithm, c.train.offline, c.dpo.beta, c.dpo.ref_update_every) == ("dpo", True, 100.0, 0)
    assert (c.timesteps.mode, c.timesteps.count) == ("logit_normal", int(40 * 0.99))
    assert (c.sampler.steps, c.sampler.sde_noise, c.sampler.cfg_scale, c.eval.steps) == (40, 0.7, 4.5, 40)
    assert (c.train.group_size, c.train.prompts_per_epoch, c.train.steps_per_epoch) == (24, 1, 1)
    assert (c.train.lora_rank, c.train.lora_alpha, c.train.lr, c.train.weight_decay) == (32, 64.0, 3e-4, 1e-4)


def test_the_options_doc_states_each_configs_ema_cadence():
    root = Path(__file__).resolve().parents[1]
    rows = [r for r in (root / "docs" / "reference" / "options.md").read_text().splitlines()
            if r.startswith(("| `configs/", "| `src/dgpo/configs/"))]
    shipped = sorted((root / "configs").glob("*.yaml")) + [root / "src/dgpo/configs/toy_demo.yaml"]
    assert len(rows) == len(shipped)
    for path in shipped:
        row = next(r for r in rows if f"`{path.relative_to(root)}`" in r)
        t = load_config(path).train
        cells = [c.strip() for c in row.split("|")[2:-1]]
        assert cells[:4] == [f"`{t.ema_cadence}`", str(t.sampling_batches), str(t.steps_per_epoch), str(t.ema_every)]


def test_prompts_are_drawn_uniformly_by_default():
    assert load_config("").train.balance_categories is False
    assert load_config(None).train.balance_categories is True  # the toy demo asks for balance
