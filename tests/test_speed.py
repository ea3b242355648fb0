"""Speed options give the same numbers as the plain path: regional torch.compile (inductor, on the
CPU), separate rollout micro-batches, bf16 frozen weights with fp32 LoRA and optimizer state,
gradient checkpointing, the reference forward skipped when nothing reads it, TF32 flags."""

import dataclasses
import sys

import pytest
import torch
from tiny_diffusers import build_sd3

from dgpo.config import load_config
from dgpo.errors import ConfigError
from dgpo.losses.dgpo import dgpo_velocity_loss
from dgpo.models.loading import load_model
from dgpo.training import speed
from dgpo.training.trainer import Trainer


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return build_sd3(tmp_path_factory.mktemp("pipes") / "sd3")


def _sd3_cfg(path, run, *extra):
    return load_config(None, ["model.kind=sd3", f"model.path={path}", "model.resolution=64",
                              "model.max_sequence_length=16", f"run.out_dir={run}", "run.epochs=1",
                              "run.sample_every=0", "run.save_every=0", "run.eval_at_ends=false", "run.log_with=none",
                              "train.prompts_per_epoch=2", "train.group_size=2", "train.batch_size=4",
                              "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=3",
                              "timesteps.trunc_steps=1", "timesteps.count=1", "reward.name=colorfulness", *extra])


def _toy_cfg(run, *extra):
    return load_config(None, [f"run.out_dir={run}", "run.epochs=1", "run.sample_every=0", "run.save_every=0",
                              "run.eval_at_ends=false", "run.log_with=none", "train.prompts_per_epoch=2",
                              "train.group_size=4", "train.batch_size=8", "sampler.steps=4", "timesteps.trunc_steps=2",
                              "timesteps.count=2", *extra])


@pytest.mark.slow
def test_regional_compile_trains_like_eager(sd3, tmp_path):
    """One DGPO epoch on a tiny SD3 with train.compile (inductor; rollouts with CFG, reference with
    LoRA disabled, EMA 'old', forward + backward) ends at the eager run's weights and metrics."""
    from torch._dynamo.utils import counters

    runs = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        tr = Trainer(_sd3_cfg(sd3, tmp_path / str(compiled), f"train.compile={compiled}"))
        tr.fit()
        runs[compiled] = (tr.policy.state_dict(), tr.metrics.read()[-1], tr.compile_info,
                          counters["stats"]["unique_graphs"])
    (eager, row_e, info_e, _), (comp, row_c, info, graphs) = runs[False], runs[True]
    assert info_e is None and info["compiled_modules"] == 2 and info["blocks"] == ["JointTransformerBlock"]
    assert graphs >= 3  # no-grad (rollouts, reference, old) and training graphs were compiled, not eager
    for n in eager:
        torch.testing.assert_close(comp[n], eager[n], rtol=1e-4, atol=1e-5)
    for k in ("loss", "dgpo", "kl", "grad_norm"):
        assert row_c[k] == pytest.approx(row_e[k], rel=1e-3, abs=1e-7), k


def test_compile_regions_needs_a_matching_block_and_compiles_the_toy_whole():
    m = load_model(load_config(None, []).model)
    assert speed.compile_regions(m.denoiser, []) == 1
    with pytest.raises(ValueError, match="no module of class"):
        speed.compile_regions(m.denoiser, ["NoSuchBlock"])


def test_rollout_batch_size_changes_no_sample(tmp_path):
    """Each sample's noise comes from its own seed: chunks of 2 or of 8 give the same rollouts, up to
    the kernels' batch-dependent rounding (oneDNN picks its convolution by batch size; 4 steps of CFG
    4.5 amplify it to ~2e-4 on images in [-1, 1])."""
    outs = []
    for rbs in (2, 0):
        tr = Trainer(_toy_cfg(tmp_path / str(rbs), f"train.rollout_batch_size={rbs}"))
        metas = [tr.prompts[0], tr.prompts[1]]
        outs.append(tr.algo.rollout(metas, 0, 0).x0)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-3)
    assert float((outs[0] - outs[1]).abs().mean()) < 1e-5


def test_bf16_frozen_weights_keep_lora_and_adam_state_in_fp32(sd3, tmp_path):
    tr = Trainer(_sd3_cfg(sd3, tmp_path, "model.dtype=bf16"))
    frozen = [p for p in tr.model.denoiser.parameters() if not p.requires_grad]
    assert {p.dtype for p in frozen} == {torch.bfloat16}
    assert {p.dtype for p in tr.policy.params} == {torch.float32}
    tr.fit()
    states = [tr.opt.state[p] for p in tr.policy.params]
    assert {s["exp_avg"].dtype for s in states} == {s["exp_avg_sq"].dtype for s in states} == {torch.float32}
    # the bf16 model's velocity agrees with the fp32 one to bf16 rounding
    m32 = load_model(_sd3_cfg(sd3, tmp_path).model)
    m16 = load_model(_sd3_cfg(sd3, tmp_path, "model.dtype=bf16").model)
    x, t = torch.randn(2, *m32.latent_shape(), generator=torch.Generator().manual_seed(0)), torch.tensor([700.0, 300.0])
    with torch.no_grad():
        v32 = m32.velocity(x, t, m32.encode_prompts(["a red cube", "a ball"]))
        v16 = m16.velocity(x, t, m16.encode_prompts(["a red cube", "a ball"]))
    assert v16.dtype == torch.float32
    assert float((v16 - v32).norm() / v32.norm()) < 3e-2


def test_gradient_checkpointing_gives_the_same_gradients(sd3, tmp_path):
    grads = []
    for gc in (False, True):
        torch.manual_seed(0)
        tr = Trainer(_sd3_cfg(sd3, tmp_path / str(gc), f"model.gradient_checkpointing={gc}"))
        m = tr.model
        x = torch.randn(2, *m.latent_shape(), generator=torch.Generator().manual_seed(1))
        m.velocity(x, torch.tensor([900.0, 500.0]), m.encode_prompts(["a", "b"])).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in tr.policy.params])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_reference_forward_is_skipped_only_when_nothing_reads_it(tmp_path):
    """use_ema_ref without KL: the frozen reference is never run in training, and the loss with
    v_ref omitted equals the loss with any v_ref."""
    calls = {"n": 0}
    tr = Trainer(_toy_cfg(tmp_path, "dgpo.use_ema_ref=true", "dgpo.kl_beta=0"))
    ref = tr.algo.ctx.reference

    def counting():
        calls["n"] += 1
        return ref()

    tr.algo.ctx = dataclasses.replace(tr.algo.ctx, reference=counting)
    tr.fit()
    assert calls["n"] == 0 and "v_mse_ref" not in tr.metrics.read()[-1]
    g = torch.Generator().manual_seed(0)
    v, v_old, target = (torch.randn(4, 3, 2, 2, generator=g) for _ in range(3))
    adv, gids = torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.tensor([0, 0, 1, 1])
    kw = dict(beta_dpo=100.0, group_size=2, v_old=v_old, clip_range=0.01, use_ema_ref=True, kl_beta=0.0)
    a = dgpo_velocity_loss(v, None, target, adv, gids, **kw).loss
    b = dgpo_velocity_loss(v, torch.randn(4, 3, 2, 2, generator=g), target, adv, gids, **kw).loss
    assert float(a) == float(b)
    with pytest.raises(ValueError, match="v_ref is needed"):
        dgpo_velocity_loss(v, None, target, adv, gids, **{**kw, "kl_beta": 0.1})


def _counting(tr, calls):
    """Count the reference and EMA-'old' forwards of a trainer's run (contexts entered)."""
    ref, old = tr.algo.ctx.reference, tr.algo.old_model.applied

    def reference():
        calls["ref"] += 1
        return ref()

    def applied():
        calls["old"] += 1
        return old()

    tr.algo.ctx = dataclasses.replace(tr.algo.ctx, reference=reference)
    tr.algo.old_model.applied = applied


@pytest.mark.slow
@pytest.mark.parametrize("kind,algo", [("toy", "dgpo"), ("toy", "dpo"), ("sd3", "dgpo")])
def test_batched_reference_forwards_train_like_per_micro_batch_ones(sd3, tmp_path, kind, algo):
    """train.reference_batch_size runs the reference (CFG'd: kl_cfg 2) and EMA-'old' forwards of an
    optimizer step's 2 timesteps x 2 micro-batches together before its backward passes: the same
    weights and metrics as one forward per micro-batch and timestep, from fewer, bigger forwards (a
    size of 6 needs several forwards per step)."""
    common = ("run.epochs=2", "train.steps_per_epoch=1", f"train.algorithm={algo}", "dgpo.kl_cfg=2",
              "dgpo.clip_range=0.01", "dgpo.kl_beta=0.1", "train.text_dropout=0.5", "dgpo.switch_ema_ref=0")
    runs = {}
    for size in (0, 6, 64):
        if kind == "toy":
            cfg = _toy_cfg(tmp_path / str(size), *common, f"train.reference_batch_size={size}", "train.batch_size=4")
        else:
            cfg = _sd3_cfg(sd3, tmp_path / str(size), *common, f"train.reference_batch_size={size}",
                           "train.batch_size=2", "timesteps.trunc_steps=2", "timesteps.count=2")
        calls = {"ref": 0, "old": 0}
        tr = Trainer(cfg)
        _counting(tr, calls)
        tr.fit()
        runs[size] = tr.policy.state_dict(), tr.metrics.read(), calls
    (base, rows, calls0), rollouts_old = runs[0], 1  # the 2nd epoch rolls out from the EMA (one context)
    per_step_ref = 2 * 2  # timesteps x micro-batches, each epoch
    assert calls0["ref"] == 2 * per_step_ref
    assert 2 < runs[6][2]["ref"] <= calls0["ref"] and runs[64][2]["ref"] == 2  # 64: one forward per step
    if algo == "dgpo":
        assert calls0["old"] == 2 * per_step_ref + rollouts_old and runs[64][2]["old"] == 2 + rollouts_old
    else:
        assert calls0["old"] == runs[64][2]["old"] == rollouts_old  # DPO reads no 'old' model
    for size in (6, 64):
        state, rows_b, _ = runs[size]
        for n in base:
            torch.testing.assert_close(state[n], base[n], rtol=1e-5, atol=1e-6)
        for r0, rb in zip(rows, rows_b):
            for k in ("loss", "grad_norm", *(("dgpo", "kl", "clip") if algo == "dgpo" else ("dpo",))):
                assert rb[k] == pytest.approx(r0[k], rel=1e-4, abs=1e-7), k


def test_batched_reference_forwards_are_refused_for_flow_grpo():
    with pytest.raises(ConfigError, match="train.reference_batch_size: Flow-GRPO"):
        load_config(None, ["train.algorithm=flow_grpo", "train.reference_batch_size=64"])


def test_tf32_switch():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        speed.set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        speed.set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _sd3_policy(sd3, tmp_path):
    from dgpo.training.policy import Policy

    m = load_model(_sd3_cfg(sd3, tmp_path).model)
    pol = Policy(m, lora_rank=4, lora_alpha=8)
    with torch.no_grad():
        for n, p in zip(pol.names, pol.params):
            if "lora_B" in n:
                p.normal_(std=0.1)
    x, t = torch.randn(2, *m.latent_shape()), torch.tensor([300.0, 800.0])
    return m, pol, (x, t, m.encode_prompts(["a red cube", "two dogs"]))


def test_reference_switch_is_peft_disable_adapter_without_the_module_walk(sd3, tmp_path):
    """Without grad, ``Policy.reference`` flips the LoRA layers' switch directly: the same outputs as
    peft's ``disable_adapter()``, LoRA grads left on, the switch restored after an error; under grad
    (and when the switch is not found) it is peft's context."""
    m, pol, args = _sd3_policy(sd3, tmp_path)
    assert len(pol._switches) == sum("lora_A" in n for n in pol.names) == 15  # 2 blocks; the last lacks to_add_out
    with torch.no_grad(), pol.peft.disable_adapter():
        want = m.velocity(*args)
    with torch.no_grad():
        live = m.velocity(*args)
        with pol.reference():
            got = m.velocity(*args)
            assert all(p.requires_grad for p in pol.params)  # peft's context would have turned them off
    assert not torch.equal(live, want)
    assert torch.equal(got, want)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), pol.reference():
        raise RuntimeError("boom")
    assert not any(layer.disable_adapters for layer in pol._switches)
    with torch.no_grad():
        assert torch.equal(m.velocity(*args), live)
    with pol.reference():  # under grad: peft's own switch (LoRA grads off inside)
        out = m.velocity(*args)
        assert not any(p.requires_grad for p in pol.params)
    assert torch.equal(out.detach(), want) and all(p.requires_grad for p in pol.params)
    pol._switches = []  # the flag not found: peft's context without grad too
    with torch.no_grad(), pol.reference():
        assert torch.equal(m.velocity(*args), want)


def test_compute_dtype_is_looked_up_once_per_network_and_after_a_cast(sd3, tmp_path, monkeypatch):
    """diffusers' ``ModelMixin.dtype`` walks every module; the adapters look it up once per network
    (the LoRA-wrapped one included) and again after the weights change dtype, not per forward."""
    import diffusers.models.modeling_utils as mu

    lookups, real = [], mu.get_parameter_dtype
    monkeypatch.setattr(mu, "get_parameter_dtype", lambda module: lookups.append(1) or real(module))
    m, pol, args = _sd3_policy(sd3, tmp_path)
    with torch.no_grad():
        outs = [m.velocity(*args) for _ in range(3)]
        assert len(lookups) == 1 and outs[0].dtype == torch.float32
        with pol.reference():
            m.velocity(*args)
        m.denoiser.to(torch.bfloat16)
        out = m.velocity(*args)
    assert len(lookups) == 2 and out.dtype == torch.float32  # computed in bf16, returned in x's dtype
    assert not torch.equal(out, outs[0])


def _fp8_probe(m, pol, seed=1):
    """Velocity, reference velocity, the per-sample DGPO log-ratio estimate (policy minus reference
    denoising loss) and the LoRA gradients on 8 samples across timesteps."""
    g = torch.Generator().manual_seed(seed)
    x, tgt = torch.randn(8, *m.latent_shape(), generator=g), torch.randn(8, *m.latent_shape(), generator=g)
    t, cond = torch.linspace(100, 950, 8), m.encode_prompts(["a red cube", "two dogs"] * 4)
    v = m.velocity(x, t, cond)
    with torch.no_grad(), pol.reference():
        v_ref = m.velocity(x, t, cond)
    dsm, dsm_ref = ((v - tgt) ** 2).mean((1, 2, 3)), ((v_ref - tgt) ** 2).mean((1, 2, 3))
    dsm.mean().backward()
    grads = torch.cat([p.grad.flatten() for p in pol.params])
    pol.model.denoiser.zero_grad(set_to_none=True)
    return v.detach(), v_ref, (dsm - dsm_ref).detach(), grads


@pytest.mark.parametrize("recipe", ["rowwise", "tensorwise"])
def test_fp8_runs_the_block_linears_in_fp8_close_to_exact(sd3, tmp_path, recipe):
    """train.fp8 (torchao float8, on the CPU through torch._scaled_mm): the blocks' base linears run
    in FP8 and nothing else (LoRA's A/B and the layers outside the blocks stay), weight names are
    unchanged, and the numbers stay close: velocities to 2 %, the per-sample log-ratio estimate
    (what DGPO's loss reads) correlated above 0.99 with the exact one, the LoRA gradient's direction
    to a cosine above 0.99."""
    from torchao.float8.float8_linear import Float8Linear

    m, pol, _ = _sd3_policy(sd3, tmp_path)
    names = list(m.denoiser.state_dict())
    exact = _fp8_probe(m, pol)
    info = speed.use_fp8(m, pol, recipe)
    linears = {n: type(mod) for n, mod in m.denoiser.named_modules() if isinstance(mod, torch.nn.Linear)}
    fp8 = {n for n, kind in linears.items() if kind is Float8Linear}
    assert info == {"recipe": recipe, "fp8_linears": len(fp8)} and len(fp8) == 25
    # padded inner widths: CUDA's FP8 matmul needs multiples of 16, and the weight gradient's is batch x tokens
    assert all(mod.config.pad_inner_dim for mod in m.denoiser.modules() if isinstance(mod, Float8Linear))
    assert fp8 == {n for n in linears if ".transformer_blocks." in n and ".lora_" not in n}
    assert sum(n.endswith(".base_layer") for n in fp8) == len(pol._switches) == 15  # every LoRA'd layer's base
    assert all(linears[n] is torch.nn.Linear for n in linears if ".lora_" in n or n not in fp8)
    assert list(m.denoiser.state_dict()) == names  # checkpoints and export read the same keys
    v, v_ref, log_ratio, grads = _fp8_probe(m, pol)
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert 0 < rel(v, exact[0]) < 0.02 and 0 < rel(v_ref, exact[1]) < 0.02
    assert torch.corrcoef(torch.stack([log_ratio, exact[2]]))[0, 1] > 0.99
    assert torch.nn.functional.cosine_similarity(grads, exact[3], dim=0) > 0.99


@pytest.mark.slow
def test_fp8_dgpo_epoch_updates_like_the_exact_one(sd3, tmp_path, monkeypatch):
    """One DGPO epoch with train.fp8=rowwise moves the LoRA weights in the exact run's direction
    (AdamW's first step, nearly a sign per weight, is the most sensitive case)."""
    runs, said = {}, []
    monkeypatch.setattr(speed.log, "warning", lambda msg, *args: said.append(msg))
    for fp8 in ("none", "rowwise"):
        tr = Trainer(_sd3_cfg(sd3, tmp_path / fp8, f"train.fp8={fp8}", "train.lr=1e-3"))
        start = {k: v.clone() for k, v in tr.policy.state_dict().items()}
        tr.fit()
        end = tr.policy.state_dict()
        runs[fp8] = (torch.cat([(end[k] - start[k]).flatten() for k in start]), tr.metrics.read()[-1], tr.fp8_info)
    (d_exact, row_e, info_e), (d_fp8, row_f, info) = runs["none"], runs["rowwise"]
    assert info_e is None and info["fp8_linears"] == 25
    assert len(said) == 1 and "train.fp8 without train.compile" in said[0]  # eager FP8 is slower: said at start-up
    assert torch.nn.functional.cosine_similarity(d_fp8, d_exact, dim=0) > 0.95  # measured 0.976
    assert row_f["loss"] == pytest.approx(row_e["loss"], rel=0.1)  # measured 4 % apart


def test_fp8_errors_name_the_key(sd3, tmp_path, monkeypatch):
    from dgpo.errors import ConfigError, MissingExtraError

    m, pol, _ = _sd3_policy(sd3, tmp_path)
    with pytest.raises(ConfigError, match="train.fp8='e5m2'"):
        speed.use_fp8(m, pol, "e5m2")
    monkeypatch.setitem(sys.modules, "torchao.float8", None)  # as if torchao were not installed
    with pytest.raises(MissingExtraError, match=r"train.fp8 needs the 'torchao.float8' module.*dgpo\[fp8\]"):
        speed.use_fp8(m, pol, "rowwise")
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    assert "A100-SXM4-80GB has 8.0" in speed.fp8_device_error(torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert speed.fp8_device_error(torch.device("cuda", 0)) is None
    assert speed.fp8_device_error(torch.device("cpu")) is None
    m.repeated_blocks = ["NoSuchBlock"]
    with pytest.raises(ConfigError, match=r"no module of class \['NoSuchBlock'\]"):
        speed.use_fp8(m, pol, "rowwise")
    m.repeated_blocks = ["JointTransformerBlock"]
    keep, name = speed.fp8_filter(m.denoiser, m.repeated_blocks), "base_model.model.transformer_blocks.0."
    assert keep(torch.nn.Linear(128, 32), name + "ff.net.2")
    assert not keep(torch.nn.Linear(128, 20), name + "ff.net.2")  # a width that is no multiple of 16
    assert not keep(torch.nn.Linear(32, 32), name + "attn.to_q.lora_A.default")
    assert not keep(torch.nn.Linear(32, 32), "base_model.model.proj_out")  # outside the blocks
    monkeypatch.setattr(speed, "fp8_filter", lambda *args: lambda mod, fqn: False)
    with pytest.raises(ConfigError, match="widths must be multiples of 16"):
        speed.use_fp8(m, pol, "rowwise")


def test_fp8_full_fine_tuning_converts_the_frozen_copy_and_trains_the_converted_weights(sd3, tmp_path):
    """lora_rank=0: the live network and the frozen reference copy both run FP8; the trainable
    parameters are re-read (the converted layers' weights, same names) and one DGPO epoch moves them."""
    from torchao.float8.float8_linear import Float8Linear

    tr = Trainer(_sd3_cfg(sd3, tmp_path, "train.lora_rank=0", "train.fp8=rowwise", "train.lr=1e-4"))
    live, frozen = tr.model.denoiser, tr.policy._frozen
    n_live = sum(isinstance(m, Float8Linear) for m in live.modules())
    assert n_live == sum(isinstance(m, Float8Linear) for m in frozen.modules()) == 25  # 2 blocks' linears
    assert tr.fp8_info["fp8_linears"] == 2 * n_live
    fp8_weights = {id(m.weight) for m in live.modules() if isinstance(m, Float8Linear)}
    assert fp8_weights <= {id(p) for p in tr.policy.params}  # the optimizer trains the converted layers
    start = {k: v.clone() for k, v in tr.policy.state_dict().items()}
    tr.fit()
    moved = [k for k, v in tr.policy.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.startswith("transformer_blocks.0.attn.to_q.") for k in moved)
    base = frozen.state_dict()
    assert all(torch.equal(base[k], start[k]) for k in start)  # the reference copy stays the base model


@pytest.fixture(scope="module")
def fp8_pipes(tmp_path_factory):
    from tiny_diffusers import BUILDERS

    root = tmp_path_factory.mktemp("fp8_pipes")
    return {k: BUILDERS[k](root / k) for k in ("flux", "sana", "qwenimage")}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["flux", "sana", "qwenimage"])
def test_fp8_trains_flux_sana_and_qwenimage_like_exact(fp8_pipes, tmp_path, kind):
    """FLUX's two block kinds, Sana's and Qwen-Image's blocks run their linears in FP8 (Sana's attention
    hands its output projection a strided view, which torchao's rowwise cast refuses unless made
    contiguous); one DGPO epoch moves the LoRA weights in the exact run's direction."""
    runs = {}
    for fp8 in ("none", "rowwise"):
        cfg = load_config(None, [f"model.kind={kind}", f"model.path={fp8_pipes[kind]}", "model.resolution=64",
                                 "model.max_sequence_length=16", f"run.out_dir={tmp_path / fp8}", "run.epochs=1",
                                 "run.sample_every=0", "run.save_every=0", "run.eval_at_ends=false",
                                 "run.log_with=none", "train.prompts_per_epoch=2", "train.group_size=2",
                                 "train.batch_size=4",
                                 "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-3", "sampler.steps=3",
                                 "timesteps.trunc_steps=1", "timesteps.count=1", "reward.name=colorfulness",
                                 f"train.fp8={fp8}"])
        tr = Trainer(cfg)
        start = {k: v.clone() for k, v in tr.policy.state_dict().items()}
        tr.fit()
        end = tr.policy.state_dict()
        runs[fp8] = (torch.cat([(end[k] - start[k]).flatten() for k in start]), tr.fp8_info)
    assert runs["rowwise"][1]["fp8_linears"] > 0
    assert torch.nn.functional.cosine_similarity(runs["rowwise"][0], runs["none"][0], dim=0) > 0.9  # 0.937 / 0.942
