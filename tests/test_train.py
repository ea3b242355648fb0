import json

import pytest
import torch
from safetensors.torch import load_file

from dgpo.config import load_config
from dgpo.training.trainer import Trainer


def _cfg(tiny, out, *extra):
    return load_config(None, [
        f"model.path={tiny}", f"run.out_dir={out}", "run.epochs=2", "run.sample_every=0",
        "run.save_every=1", "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=4",
        "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=3",
        "timesteps.trunc_steps=2", "timesteps.count=2", "dgpo.switch_ema_ref=0",
        "eval.max_prompts=4", "eval.batch_size=8", "reward.name=jpeg_incompressibility", *extra])


def _snapshot(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.denoiser.named_parameters()}


@pytest.mark.parametrize("lora,algo", [(False, "dgpo"), *(pytest.param(True, a, marks=pytest.mark.slow)
                                                        for a in ("dgpo", "flow_grpo", "dpo", "nft"))])
def test_short_run_changes_every_trainable_parameter_and_no_frozen_one(tiny_toy, tmp_path, lora, algo):
    extra = [] if lora else ["train.lora_rank=0"]
    tr = Trainer(_cfg(tiny_toy, tmp_path / "run", *extra, "dgpo.kl_beta=0.1", "train.text_dropout=0.2",
                      f"train.algorithm={algo}", "grpo.clip_range=0.2", "dpo.beta=50"))
    before = _snapshot(tr)
    summary = tr.fit()
    after = _snapshot(tr)
    trainable = set(tr.policy.names)
    assert trainable and (any("lora_" in n for n in trainable) == lora)
    for n in before:
        assert (not torch.equal(before[n], after[n])) == (n in trainable), n
    assert not any("text_encoder" in n for n in trainable)
    assert summary["steps"] == 2 and {"overall", "single_object"} <= set(summary["eval_after"])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"reward_mean", "zero_spread_share", "loss", "grad_norm", "lr", "time_rollout", "update_norm",
            "dist_from_start"} <= set(rows[0])
    assert {"dgpo": "weight", "flow_grpo": "ratio_dev", "dpo": "accuracy", "nft": "old_deviate"}[algo] in rows[0]
    for f in ("summary.json", "config.yaml", "samples/before.png", "samples/after.png", "plots/reward.png"):
        assert (tmp_path / "run" / f).is_file(), f


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_toy, tmp_path):
    Trainer(_cfg(tiny_toy, tmp_path / "a")).fit()
    Trainer(_cfg(tiny_toy, tmp_path / "b", "run.epochs=1")).fit()
    tr = Trainer(_cfg(tiny_toy, tmp_path / "b"), resume=True)
    assert tr.step == 1 and tr.start_epoch == 1
    tr.fit()
    a = load_file(str(tmp_path / "a/checkpoints/step_000002/policy.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoints/step_000002/policy.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_periodic_evals_by_epochs_and_by_training_time(tiny_toy, tmp_path):
    tr = Trainer(_cfg(tiny_toy, tmp_path / "e", "run.epochs=3", "run.eval_every=1"))
    summary = tr.fit()
    assert [e["step"] for e in summary["evals"]] == [0, 1, 2, 3]
    tr = Trainer(_cfg(tiny_toy, tmp_path / "t", "run.epochs=100", "run.time_budget_s=1.5", "run.eval_every_s=0.5"))
    summary = tr.fit()
    times = [e["train_time_s"] for e in summary["evals"]]
    assert summary["steps"] < 100 and times[-1] >= 1.5 and len(times) >= 3 and times == sorted(times)


def test_resume_without_checkpoint_is_a_clear_error(tiny_toy, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(_cfg(tiny_toy, tmp_path / "empty"), resume=True)


@pytest.mark.parametrize("window,precision,kind", [(0, "no", "sde"), (2, "no", "cps"), *(
    pytest.param(*case, marks=pytest.mark.slow)
    for case in ((2, "no", "sde"), (0, "bf16", "sde"), (2, "bf16", "cps")))])
def test_flow_grpo_reevaluating_the_rollout_is_on_policy(tiny_toy, tmp_path, window, precision, kind):
    """Before any update the training forward reproduces the rollout's log-probs (ratio 1), in bf16
    too: both CFG branches in one autocast forward, as the rollout and the official compute_log_prob
    (with a clip of 1e-4, a bf16 mismatch alone would clip most samples)."""
    from accelerate.state import AcceleratorState

    from dgpo.data.prompts import epoch_prompts

    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one precision per process
    try:
        tr = Trainer(_cfg(tiny_toy, tmp_path / "run", "train.algorithm=flow_grpo", f"grpo.sde_window={window}",
                          "grpo.sde_window_range=3", "sampler.steps=4", f"train.mixed_precision={precision}",
                          "grpo.kl_beta=0.04", f"grpo.sde_type={kind}", "train.rollout_batch_size=2",
                          "train.sampling_batches=2", "run.seed=1"))
        with tr.acc.autocast():  # as the trainer rolls out
            batch = tr.algo.rollout(epoch_prompts(tr.prompts, 2, 0, 0), 0, 0)
        units = tr.algo.units(batch, 0, 0)
        assert units == ([0, 1, 2] if window == 0 else [0, 1])
        if window:  # a window per sampling batch (2 of 4 samples, chunks of 2): samples train different steps
            starts = batch.sde_start.tolist()
            assert starts[:4] == [starts[0]] * 4 and starts[4:] == [starts[4]] * 4 and starts[0] != starts[4]
        adv = torch.linspace(-1, 1, len(batch.x0))
        for j in units:
            out = tr.algo.micro_loss(batch, adv, torch.arange(len(adv)), j, 0, 0)
            assert float(out.stats["ratio_dev"]) < 1e-5, j
            if window:  # per-sample steps round as the rollout's shared ones: exactly on-policy
                assert float(out.stats["ratio_dev"]) == 0.0, j
            assert float(out.stats["kl"]) < 1e-10, j  # the reference (adapter off) is the policy before training
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_flow_grpo_without_cfg_in_training_still_rolls_out_with_cfg(tiny_toy, tmp_path):
    """grpo.cfg_train=false (official train.cfg=False) drops CFG from the training forwards only: the
    rollouts are those of cfg_train=true, and the training forward is then off-policy (ratio != 1)."""
    from dgpo.data.prompts import epoch_prompts

    out = {}
    for cfg_train in (True, False):
        tr = Trainer(_cfg(tiny_toy, tmp_path / str(cfg_train), "train.algorithm=flow_grpo", "sampler.steps=4",
                          f"grpo.cfg_train={cfg_train}"))
        batch = tr.algo.rollout(epoch_prompts(tr.prompts, 2, 0, 0), 0, 0)
        adv = torch.linspace(-1, 1, len(batch.x0))
        dev = tr.algo.micro_loss(batch, adv, torch.arange(len(adv)), 0, 0, 0).stats["ratio_dev"]
        out[cfg_train] = batch.x0, batch.log_probs, float(dev)
    assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])
    assert out[True][2] < 1e-5 < out[False][2]


def test_evals_and_grids_denoise_under_autocast_but_decode_and_score_in_full_precision(tiny_toy, tmp_path):
    """train.mixed_precision=bf16: the denoiser runs under autocast in evals and sample grids as in the
    rollouts; the VAE decode and the reward do not (official: the VAE in fp32, outside autocast)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        tr = Trainer(_cfg(tiny_toy, tmp_path / "run", "train.mixed_precision=bf16", "run.sample_every=1",
                          "run.eval_at_ends=true", "eval.max_prompts=2", "eval.min_per_category=0"))
        seen = {"velocity": set(), "decode": set(), "reward": set()}
        on = lambda: torch.is_autocast_enabled("cpu")  # noqa: E731
        velocity, decode, reward = tr.model.velocity, tr.model.decode, tr.reward_fn
        tr.model.velocity = lambda *a, **k: (seen["velocity"].add(on()), velocity(*a, **k))[1]
        tr.model.decode = lambda *a, **k: (seen["decode"].add(on()), decode(*a, **k))[1]
        tr.reward_fn = lambda *a, **k: (seen["reward"].add(on()), reward(*a, **k))[1]
        tr._evaluate("eval")
        tr._grid("grid")
        assert seen == {"velocity": {True}, "decode": {False}, "reward": {False}}
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow
def test_online_dpo_refreshes_its_reference_from_the_policy_rolls_out_from_it_and_resumes(tiny_toy, tmp_path):
    """dpo.ref_update_every=2 (Flow-GRPO's ref_update_step): before the rollouts of an epoch that starts
    at step 2, 4, ..., the reference becomes a copy of the policy; rollouts and the reference forwards
    use that copy; the copy is saved in checkpoints, so a resumed run equals an uninterrupted one."""
    args = ("train.algorithm=dpo", "dpo.ref_update_every=2", "run.epochs=4", "run.eval_at_ends=false")
    tr = Trainer(_cfg(tiny_toy, tmp_path / "a", *args))
    start = [p.detach().clone() for p in tr.policy.params]
    seen = []
    rollout, applied = tr.algo.rollout, tr.algo.old_model.applied

    def spy_rollout(*a, **k):
        seen.append(("rollout", tr.step, [s.clone() for s in tr.algo.old_model.shadow],
                     [p.detach().clone() for p in tr.policy.params]))
        return rollout(*a, **k)

    def spy_applied():
        seen.append(("applied", tr.step))
        return applied()

    tr.algo.rollout, tr.algo.old_model.applied = spy_rollout, spy_applied
    tr.fit()
    rollouts = [s for s in seen if s[0] == "rollout"]
    assert [s[1] for s in rollouts] == [0, 1, 2, 3]
    same = lambda xs, ys: all(torch.equal(x, y) for x, y in zip(xs, ys))  # noqa: E731
    assert same(rollouts[1][2], start) and not same(rollouts[1][3], start)  # step 1: still the initial copy
    assert same(rollouts[3][2], rollouts[2][3])  # refreshed at step 2 (from the policy as it was then)
    uses = [s[1] for s in seen if s[0] == "applied"]
    assert uses.count(0) == 1 + 2 * 2  # epoch 0: the rollout, then 2 timesteps x 2 micro-batches of reference
    with pytest.raises(Exception, match="dpo.ref_update_every"):
        load_config(None, ["train.algorithm=dpo", "dpo.ref_update_every=40", "train.offline=true"])
    Trainer(_cfg(tiny_toy, tmp_path / "b", *args[:-2], "run.epochs=3", "run.eval_at_ends=false")).fit()
    Trainer(_cfg(tiny_toy, tmp_path / "b", *args), resume=True).fit()
    for part in ("policy", "ema_old"):
        a = load_file(str(tmp_path / f"a/checkpoints/step_000004/{part}.safetensors"))
        b = load_file(str(tmp_path / f"b/checkpoints/step_000004/{part}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), part


@pytest.mark.slow
def test_flow_grpo_fast_windows_do_not_depend_on_the_rollout_chunk_and_cps_keeps_the_last_step_out(tiny_toy,
                                                                                                   tmp_path):
    """Windows are drawn per sampling batch, so the rollout chunk size (a memory knob) changes no window
    and no sample beyond rounding; the cps KL divides by a step std that is 0 on the last step."""
    from dgpo.data.prompts import epoch_prompts
    from dgpo.errors import ConfigError

    out = {}
    for bs in (2, 8):
        tr = Trainer(_cfg(tiny_toy, tmp_path / str(bs), "train.algorithm=flow_grpo", "sampler.steps=4",
                          "grpo.sde_window=2", "grpo.sde_window_range=3", f"train.rollout_batch_size={bs}"))
        out[bs] = tr.algo.rollout(epoch_prompts(tr.prompts, 2, 0, 0), 0, 0)
    assert torch.equal(out[2].sde_start, out[8].sde_start)
    assert torch.allclose(out[2].x0, out[8].x0, atol=1e-5)
    bad = ["train.algorithm=flow_grpo", "grpo.sde_type=cps", "sampler.steps=4", "grpo.sde_window=2",
           "timesteps.trunc_steps=2", "timesteps.count=2"]
    with pytest.raises(ConfigError, match="last step"):
        load_config(None, bad)  # the window may reach step 3 (range 5 >= 4 steps) with the default KL
    load_config(None, [*bad, "grpo.sde_window_range=3"])
    load_config(None, [*bad, "grpo.kl_beta=0"])
    with pytest.raises(ConfigError, match="last step"):  # a window as long as the rollout: start 0, all steps
        load_config(None, [*bad, "grpo.sde_window=4", "grpo.sde_window_range=3"])
    with pytest.raises(ConfigError, match="0 < a < 2"):
        load_config(None, [*bad, "grpo.kl_beta=0", "grpo.noise_level=2.0"])


def test_flow_grpo_keeps_the_unconditional_gradient_only_when_asked(tiny_toy, tmp_path):
    """grpo.detach_uncond=false (the official Qwen-Image script): the same training velocity, and its
    gradient also flows through the unconditional branch (the default detaches it, as train_sd3.py)."""
    from dgpo.data.prompts import epoch_prompts

    grads = {}
    for detach in (True, False):
        tr = Trainer(_cfg(tiny_toy, tmp_path / str(detach), "train.algorithm=flow_grpo", "sampler.steps=4",
                          f"grpo.detach_uncond={detach}"))
        batch = tr.algo.rollout(epoch_prompts(tr.prompts, 2, 0, 0), 0, 0)
        x, t = batch.latents[:, 1], tr.algo.grid.model_time(1, len(batch.x0))
        v = tr.algo.velocity(x, t, batch.cond, batch.null, grad=True)
        v.square().sum().backward()
        grads[detach] = (v.detach(), torch.cat([p.grad.flatten() for p in tr.policy.params if p.grad is not None]))
    assert torch.equal(grads[True][0], grads[False][0])
    assert not torch.allclose(grads[True][1], grads[False][1])
