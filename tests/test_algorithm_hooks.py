"""Each algorithm's hooks on a LoopContext alone (no Trainer), the rule that algorithms override only
hooks, and the "add an algorithm" guide's example run as written."""

import re
import types
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from dgpo.algorithms import ALGORITHMS, HOOKS, Algorithm, LoopContext, Rollouts
from dgpo.config import load_config
from dgpo.models.loading import load_model
from dgpo.timesteps import train_timesteps
from dgpo.training.distributed import Layout
from dgpo.training.policy import Policy

GUIDE = Path(__file__).parents[1] / "docs" / "guides" / "add-algorithm.md"


def context(tiny, *overrides) -> LoopContext:
    cfg = load_config(None, [f"model.path={tiny}", "train.prompts_per_epoch=2", "train.group_size=4",
                             "train.batch_size=4", "train.lora_rank=4", "train.lora_alpha=8", "sampler.steps=4",
                             "timesteps.trunc_steps=2", "timesteps.count=2", *overrides])
    model = load_model(cfg.model)
    policy = Policy(model, cfg.train.lora_rank, cfg.train.lora_alpha, cfg.run.seed)
    layout = Layout()
    return LoopContext(cfg=cfg, model=model, params=policy.params, shift=model.default_shift(), layout=layout,
                       group_sum=layout.group_sum_fn(cfg.train.prompts_per_epoch), lockstep=False,
                       autocast=nullcontext, reference=policy.reference)


def metas(n=2):
    return [{"prompt": f"a photo of a red square {i}", "tag": "single_object"} for i in range(n)]


def test_algorithms_override_only_hooks():
    for algo in ALGORITHMS.values():
        base = {n for n in vars(Algorithm) if callable(getattr(Algorithm, n)) and not n.startswith("__")}
        overridden = base & set(vars(algo))
        assert overridden <= HOOKS, f"{algo.__name__} overrides helpers {sorted(overridden - HOOKS)}"
    assert {"micro_loss", "select", "units", "rollout", "after_step", "end_epoch", "make_old_model"} <= HOOKS


def test_dgpo_units_follow_the_timestep_options_and_anneal_with_the_step(tiny_toy):
    algo = ALGORITHMS["dgpo"](context(tiny_toy))
    ref = train_timesteps("grid", algo.grid, 2, 2, 0.6, 0, 3, 2, algo.ctx.shift)
    got = algo.units(None, 3, 0)
    assert [float(u.sigma) for u in got] == [float(u.sigma) for u in ref] and len(got) == 2
    assert all(float(u.sigma) >= float(algo.grid.train_sigmas[2]) for u in got)  # the clip: 0..trunc_steps
    ann = ALGORITHMS["dgpo"](context(tiny_toy, "timesteps.mode=uniform", "timesteps.t_min=0.8",
                                     "timesteps.t_min_end=0.2", "run.epochs=5"))
    assert ann.t_min(0) == 0.8 and ann.t_min(4) == pytest.approx(0.2) and ann.t_min(2) == pytest.approx(0.5)
    assert all(float(u.sigma) >= 0.8 for u in ann.units(None, 0, 0))


def test_rollouts_record_holds_this_processes_samples_with_deterministic_seeds(tiny_toy):
    algo = ALGORITHMS["dgpo"](context(tiny_toy, "sampler.cfg_scale=1"))
    batch = algo.rollout(metas(), 0, 0)
    assert isinstance(batch, Rollouts) and batch.n_total == 8 and batch.group_ids.tolist() == [0] * 4 + [1] * 4
    assert batch.x0.shape == (8, *algo.ctx.model.latent_shape()) and batch.alive is None
    again = algo.rollout(metas(), 0, 0)
    assert torch.equal(batch.x0, again.x0) and not torch.equal(batch.x0, algo.rollout(metas(), 1, 0).x0)


def test_dgpo_micro_loss_trains_the_lora_weights_towards_positive_samples(tiny_toy):
    ctx = context(tiny_toy, "sampler.cfg_scale=1", "dgpo.kl_beta=0", "dgpo.clip_range=0")
    algo = ALGORITHMS["dgpo"](ctx)
    batch = algo.rollout(metas(), 0, 0)
    signal = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.5, -0.5])
    mb, unit = torch.arange(8), algo.units(batch, 0, 0)[0]
    out = algo.micro_loss(batch, signal, mb, unit, 0, 0)
    out.loss_sum.backward()
    assert torch.isfinite(out.loss_sum) and set(out.stats) >= {"dgpo", "kl", "clip", "weight"}
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.params)


def test_after_step_and_end_epoch_move_each_old_model_on_its_own_schedule(tiny_toy):
    dgpo, nft = ALGORITHMS["dgpo"](context(tiny_toy)), ALGORITHMS["nft"](context(tiny_toy, "train.algorithm=nft",
                                                                                  "nft.decay_rate=0.5"))
    for algo in (dgpo, nft):
        with torch.no_grad():
            for p in algo.ctx.params:
                p.add_(1.0)
    before = [s.clone() for s in nft.old_model.shadow]
    nft.after_step(5)  # DiffusionNFT's 'old' model does not move per step
    assert all(torch.equal(a, b) for a, b in zip(before, nft.old_model.shadow))
    nft.end_epoch(1)  # decay min(1 x 0.5, 0.5) = 0.5: halfway to the policy
    assert all(torch.allclose(s, b + 0.5) for s, b in zip(nft.old_model.shadow, before))
    dgpo.after_step(0)  # DGPO's EMA: decay min(0.3, 0.001 x 0) = 0, a copy of the policy
    assert all(torch.equal(s, p.detach()) for s, p in zip(dgpo.old_model.shadow, dgpo.ctx.params))


def test_online_dpo_refreshes_its_reference_at_the_step_it_is_given(tiny_toy):
    algo = ALGORITHMS["dpo"](context(tiny_toy, "train.algorithm=dpo", "dpo.ref_update_every=2"))
    with torch.no_grad():
        algo.ctx.params[0].add_(1.0)
    with algo.rollout_context(1):
        pass
    assert not torch.equal(algo.old_model.shadow[0], algo.ctx.params[0].detach())
    with algo.rollout_context(2):
        assert torch.equal(algo.ctx.params[0], algo.old_model.shadow[0])
    assert torch.equal(algo.old_model.shadow[0], algo.ctx.params[0].detach())


def test_flow_grpo_select_reads_the_alive_mask_and_dpo_labels_best_and_worst(tiny_toy):
    grpo = ALGORITHMS["flow_grpo"](context(tiny_toy, "train.algorithm=flow_grpo", "grpo.zero_adv=groups"))
    batch = Rollouts(torch.arange(8), torch.arange(8) // 4, None, None, [0] * 8, [{}] * 8, 8, 2, 0)
    gids, zero = torch.arange(8) // 4, torch.tensor([False, True])
    keep, _ = grpo.select(batch, torch.zeros(8), torch.ones(8), zero, gids)
    assert keep.tolist() == [True] * 4 + [False] * 4
    dpo = ALGORITHMS["dpo"](context(tiny_toy, "train.algorithm=dpo"))
    rewards = torch.tensor([0.1, 0.9, 0.5, 0.2, 1.0, 1.0, 1.0, 1.0])
    keep, label = dpo.select(batch, rewards, rewards, zero, gids)
    assert label.tolist() == [-1, 1, 0, 0, 0, 0, 0, 0] and keep.tolist() == [True, True] + [False] * 6


def test_nft_units_are_per_sample_orders_of_the_grid_steps(tiny_toy):
    algo = ALGORITHMS["nft"](context(tiny_toy, "train.algorithm=nft", "nft.timestep_fraction=0.5"))
    units = algo.units(types.SimpleNamespace(n_total=8), 0, 0)
    order = torch.stack(units, 1)
    assert order.shape == (8, 2) and all(len(set(r.tolist())) == 2 for r in order)
    assert torch.equal(order, torch.stack(algo.units(types.SimpleNamespace(n_total=8), 0, 0), 1))


def guide_module() -> types.ModuleType:
    """The guide's first python block, as a user's own module outside the package."""
    code = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)[0]
    module = types.ModuleType("my_algorithms")
    exec(compile(code, str(GUIDE), "exec"), module.__dict__)
    return module


def test_the_guides_example_algorithm_trains_two_epochs_through_the_public_api(tiny_toy, tmp_path):
    from dgpo.training.trainer import Trainer

    algo = guide_module().AdvantageWeightedMatching
    assert not issubclass(algo, tuple(ALGORITHMS.values()))
    cfg = load_config(None, [f"model.path={tiny_toy}", f"run.out_dir={tmp_path / 'run'}", "run.epochs=2",
                             "run.eval_at_ends=false", "run.sample_every=0", "run.log_with=none",
                             "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=4",
                             "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=4",
                             "timesteps.trunc_steps=2", "timesteps.count=2", "reward.name=jpeg_incompressibility"])
    tr = Trainer(cfg, algorithm=algo)
    start = [p.detach().clone() for p in tr.policy.params]
    summary = tr.fit()
    rows = tr.metrics.read()
    assert summary["steps"] == 2 and len(rows) == 2 and all("weighted_dsm" in r for r in rows)
    assert all(r["loss"] == r["loss"] for r in rows)  # finite, logged
    assert any(not torch.equal(a, p) for a, p in zip(start, tr.policy.params))
    assert (tmp_path / "run" / "checkpoints").is_dir()
