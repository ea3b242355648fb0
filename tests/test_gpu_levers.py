"""The GPU speed levers, tested as far as the CPU allows (docs/results/performance.md, "Levers"):
FP8 copies of the frozen weights made once (the per-call FP8 path's numbers exactly), inductor's
max-autotune (passed through; compiled vs eager), CUDA graphs of the rollouts (the static-shape
bookkeeping gives the plain calls' outputs bit for bit; on a CPU the option is noted and ignored) and FP8
attention (refused without its kernel; its rounding measured through an emulation on a tiny SD3)."""

import threading

import pytest
import torch
from test_speed import _fp8_probe, _sd3_cfg, _sd3_policy, _toy_cfg
from tiny_diffusers import build_sd3

from dgpo.config import load_config
from dgpo.errors import ConfigError
from dgpo.models.loading import load_model
from dgpo.training import speed
from dgpo.training.fp8_attention import FP8Attention, emulated_fp8_sdpa, fa3_unavailable, quantize_per_head
from dgpo.training.fp8_frozen import CastOnceFloat8Linear
from dgpo.training.graphs import StaticCalls
from dgpo.training.trainer import Trainer

SMALL = ("train.group_size=2", "train.batch_size=4", "sampler.steps=3", "timesteps.trunc_steps=1",
         "timesteps.count=1")  # one rollout chunk of 4 samples, 3 steps


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return build_sd3(tmp_path_factory.mktemp("pipes") / "sd3")


# ---------------------------------------------------------------- FP8 weights cast once

@pytest.mark.parametrize("recipe", ["rowwise", "tensorwise"])
def test_cast_once_fp8_gives_the_per_call_fp8_numbers(sd3, tmp_path, recipe):
    """LoRA's frozen base layers with FP8 copies made once: velocities, reference velocities and the LoRA
    gradients (through the cast layers' backward) equal torchao's per-call FP8 bit for bit; the weights
    themselves, their names and the trainable LoRA tensors are untouched."""
    per_call, once = _sd3_policy(sd3, tmp_path / "a"), _sd3_policy(sd3, tmp_path / "b")
    m, pol, _ = once
    before = {k: v.clone() for k, v in m.denoiser.state_dict().items()}
    lora = [(n, p) for n, p in zip(pol.names, pol.params)]
    assert speed.use_fp8(per_call[0], per_call[1], recipe) == {"recipe": recipe, "fp8_linears": 25}
    info = speed.use_fp8(m, pol, recipe, cast_once=True)
    assert info == {"recipe": recipe, "fp8_linears": 25, "cast_once_linears": 25}  # every block linear is frozen
    cast = [mod for mod in m.denoiser.modules() if isinstance(mod, CastOnceFloat8Linear)]
    assert len(cast) == 25 and all(mod.fp8_wt.numel() == mod.weight.numel() for mod in cast)  # backward copies
    after = m.denoiser.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    pol.collect()
    assert [(n, p) for n, p in zip(pol.names, pol.params)] == lora and all(p.requires_grad for p in pol.params)
    for a, b in zip(_fp8_probe(*per_call[:2]), _fp8_probe(m, pol)):
        assert torch.equal(a, b)
    assert all(mod.weight.grad is None for mod in cast)  # no weight gradient is computed


def test_cast_once_full_fine_tuning_casts_only_the_frozen_copy(sd3, tmp_path):
    """lora_rank=0: the live network's layers train, so they stay torchao's per-call FP8; the frozen
    reference copy is cast once, without the backward copy (it never runs with grad)."""
    from torchao.float8.float8_linear import Float8Linear

    tr = Trainer(_sd3_cfg(sd3, tmp_path, "train.lora_rank=0", "train.fp8=rowwise", "train.fp8_cast_once=true"))
    live, frozen = tr.model.denoiser, tr.policy._frozen
    assert sum(isinstance(m, Float8Linear) for m in live.modules()) == 25
    cast = [m for m in frozen.modules() if isinstance(m, CastOnceFloat8Linear)]
    assert len(cast) == 25 and all(m.fp8_wt.numel() == 0 for m in cast)
    assert tr.fp8_info == {"recipe": "rowwise", "fp8_linears": 50, "cast_once_linears": 25}
    x = torch.randn(2, 8, cast[0].in_features, requires_grad=True)
    with pytest.raises(RuntimeError, match="cast for forwards only"):
        cast[0](x).sum().backward()


def test_lever_options_are_checked(tmp_path):
    errors = {"train.compile_mode=max-autotune": "set train.compile=true",
              "train.fp8_cast_once=true": "set train.fp8",
              "train.compile_mode=fast": "train.compile_mode: 'fast' is not one of"}
    for override, message in errors.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])
    with pytest.raises(ConfigError, match="max-autotune-no-cudagraphs"):
        load_config(None, ["train.compile=true", "train.compile_mode=max-autotune", "train.cuda_graphs=true"])
    load_config(None, ["train.compile=true", "train.compile_mode=max-autotune-no-cudagraphs", "train.cuda_graphs=true"])
    train = load_config(None, ["train.cuda_graphs=true"]).train
    speed.check_sharded(train, sharded=False)
    with pytest.raises(ConfigError, match="train.cuda_graphs: not supported under FSDP"):
        speed.check_sharded(train, sharded=True)


# ---------------------------------------------------------------- max-autotune

def test_compile_mode_reaches_torch_compile(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: seen.append(kw))
    m = load_model(load_config(None, []).model)
    info = speed.compile_model(m, None, "max-autotune-no-cudagraphs")
    assert seen == [{"mode": "max-autotune-no-cudagraphs"}] and info["mode"] == "max-autotune-no-cudagraphs"
    assert "mode" not in speed.compile_model(m, None) and seen[-1] == {}  # default: torch's own call, unchanged


@pytest.mark.slow
def test_max_autotune_compiled_toy_matches_eager():
    """The toy's network compiled with max-autotune (inductor benchmarks its kernel choices; on the CPU
    without CUDA graphs) gives the eager velocities to float rounding."""
    torch._dynamo.reset()
    m = load_model(load_config(None, []).model)
    x, t = torch.randn(4, *m.latent_shape(), generator=torch.Generator().manual_seed(0)), torch.full((4,), 600.0)
    cond = m.encode_prompts(["a red cube", "two blue balls", "a cat", "a dog"])
    with torch.no_grad():
        eager = m.velocity(x, t, cond)
        speed.compile_model(m, None, "max-autotune-no-cudagraphs")
        compiled = m.velocity(x, t, cond)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- CUDA graphs of the rollouts

def test_static_calls_bookkeeping_without_graphs():
    """One record per input signature and state; inputs copied in, outputs cloned out (a later call does
    not change an earlier result); calls with grad, over the limit or that fail to record run plainly."""
    state = {"s": 0}
    calls = StaticCalls(lambda x, c: x * c["w"] + state["s"], state=lambda: state["s"], capture=False, max_graphs=3)
    w = {"w": torch.tensor([2.0])}
    with torch.no_grad():  # the rollouts' calls
        a = calls(torch.ones(2), w)
        b = calls(torch.full((2,), 3.0), w)
        assert a.tolist() == [2.0, 2.0] and b.tolist() == [6.0, 6.0] and calls.stats["recorded"] == 1
        assert calls(torch.ones(3), w).tolist() == [2.0] * 3 and calls.stats["recorded"] == 2  # another shape
        state["s"] = 1
        assert calls(torch.ones(2), w).tolist() == [3.0, 3.0] and calls.stats["recorded"] == 3  # another state
        assert calls(torch.ones(4), w).tolist() == [3.0] * 4 and calls.stats["plain"] == 1  # over max_graphs
    with torch.enable_grad():
        calls(torch.ones(2, requires_grad=True), w)
    assert calls.stats["plain"] == 2 and calls.stats["replays"] == 4
    bad = StaticCalls(lambda x: (x, x), capture=False)
    with torch.no_grad():
        assert len(bad(torch.ones(1))) == 2 and "TypeError" in bad.stats["errors"][0] and bad.stats["plain"] == 1


def test_static_calls_are_used_only_without_grad():
    calls = StaticCalls(lambda x: 2 * x, capture=False)
    with torch.no_grad():
        calls(torch.ones(2))
    y = calls(torch.ones(2, requires_grad=True))  # grad enabled here (pytest's default)
    assert y.requires_grad and calls.stats == {"recorded": 1, "replays": 1, "plain": 1, "errors": []}


def test_rollouts_through_static_calls_train_like_plain_ones(tmp_path, caplog):
    """A DGPO epoch of the toy (DPM rollouts keep earlier velocities; CFG doubles the batch) with the
    rollouts' velocity calls through the static-shape path (without graphs: the CPU) ends at the plain
    run's weights bit for bit. On the CPU ``train.cuda_graphs`` itself is noted and ignored."""
    runs = {}
    for graphed in (False, True):
        with caplog.at_level("WARNING", logger="dgpo.training.speed"):
            tr = Trainer(_toy_cfg(tmp_path / str(graphed), f"train.cuda_graphs={graphed}", *SMALL))
        assert tr.rollout_levers.graphs is None
        if graphed:
            assert "train.cuda_graphs: no CUDA device here" in caplog.text
            tr.rollout_levers = speed.RolloutLevers(tr.model, tr.policy.mode_key, graphs="dry")
            calls = tr.rollout_levers.graphs
        tr.fit()
        assert "velocity" not in vars(tr.model)  # the class's method again after the rollouts
        runs[graphed] = tr.policy.state_dict()
    assert calls.stats["recorded"] == 1 and calls.stats["replays"] == 3 and calls.stats["plain"] == 0
    for k, v in runs[False].items():
        assert torch.equal(runs[True][k], v), k


def test_policy_mode_key_tells_the_reference_apart(sd3, tmp_path):
    m, pol, _ = _sd3_policy(sd3, tmp_path)
    live = pol.mode_key()
    with torch.no_grad(), pol.reference():
        ref = pol.mode_key()
    with pol.reference():  # peft's own context (under grad) flips the same switch
        assert pol.mode_key() == ref
    assert live != ref and live == pol.mode_key() and live[1] is False and ref[1] is True


# ---------------------------------------------------------------- FP8 attention

def test_fp8_attention_is_refused_without_its_kernel(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="train.fp8_attention needs a CUDA GPU.*set train.fp8_attention=false"):
        Trainer(_toy_cfg(tmp_path, "train.fp8_attention=true"))
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert "Hopper GPU (compute capability 9.x" in fa3_unavailable(cuda)
    assert "A100-SXM4-80GB has 8.0" in fa3_unavailable(cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "flash_attn_interface" else real(n))
    assert "flash_attn_interface" in fa3_unavailable(cuda)


def test_per_head_fp8_rounding_and_the_emulated_kernel():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 8, generator=g)
    x8, descale = quantize_per_head(x)
    assert x8.dtype == torch.float8_e4m3fn and descale.shape == (2, 3)
    torch.testing.assert_close(descale, x.abs().amax(dim=(2, 3)) / 448)
    back = x8.float() * descale[:, :, None, None]
    assert float(((back - x).abs() / x.abs().amax(dim=(2, 3), keepdim=True)).max()) <= 2 ** -4  # e4m3: 3 mantissa bits
    assert torch.equal(quantize_per_head(torch.zeros(1, 1, 2, 2))[1], torch.ones(1, 1))
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g) for _ in range(3))
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    fp8 = emulated_fp8_sdpa(q, k, v)
    assert 0 < float((fp8 - exact).norm() / exact.norm()) < 0.08
    k0 = torch.zeros_like(k)  # uniform attention: the mean of the (rounded) values, the weights exact
    torch.testing.assert_close(emulated_fp8_sdpa(q, k0, v), quantize_dequant(v).mean(dim=2, keepdim=True).expand_as(q))
    causal = emulated_fp8_sdpa(q, k, v, is_causal=True)
    torch.testing.assert_close(causal[:, :, 0], quantize_dequant(v)[:, :, 0])  # the first query sees one key


def quantize_dequant(x):
    x8, d = quantize_per_head(x)
    return x8.float() * d[:, :, None, None]


def test_fp8_attention_tolerance_on_a_tiny_sd3_and_only_where_entered(sd3, tmp_path):
    """The tolerance documented in docs/results/performance.md: a tiny SD3's velocity with its attention
    rounded as FP8 attention rounds it (emulated) differs from the exact one by under 1 % (relative norm),
    more than with bf16 attention. The mode reaches every attention call of the forward, and
    only in the thread that entered it (the reward thread keeps exact attention)."""
    m, pol, (x, t, cond) = _sd3_policy(sd3, tmp_path)
    seen = []

    def counting(q, k, v, **kw):
        seen.append(threading.get_ident())
        return emulated_fp8_sdpa(q, k, v, **kw)

    def bf16(q, k, v, scale=None, is_causal=False):
        return torch.nn.functional.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16()).float()

    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    with torch.no_grad():
        exact = m.velocity(x, t, cond)
        with FP8Attention(counting, head_dims=None):
            fp8 = m.velocity(x, t, cond)
            other = []
            th = threading.Thread(target=lambda: other.append(m.velocity(x, t, cond)))
            th.start()
            th.join()
        with FP8Attention(bf16, head_dims=None):
            half = m.velocity(x, t, cond)
        assert torch.equal(m.velocity(x, t, cond), exact)
    assert len(seen) == 2 and set(seen) == {threading.get_ident()}  # 2 blocks, this thread's calls only
    assert torch.equal(other[0], exact)
    assert rel(half, exact) < rel(fp8, exact) < 0.01  # measured 0.0011-0.0013 (bf16 attention: 0.0002)
    with FP8Attention(counting, head_dims=(64, 128, 256)), torch.no_grad():
        m.velocity(x, t, cond)  # head width 8: not the FP8 kernel's, so exact attention
    assert len(seen) == 2


@pytest.mark.slow
def test_fp8_attention_mode_is_seen_by_compiled_blocks(sd3, tmp_path):
    """Under train.compile (regional, inductor) the mode's calls and the plain ones get their own compiled
    graphs: compiled with the mode gives the eager FP8 velocities, compiled without it the exact ones, in
    either order (the same compiled blocks serve the rollouts and the loss's forwards)."""
    torch._dynamo.reset()
    m, pol, (x, t, cond) = _sd3_policy(sd3, tmp_path)
    mode = lambda: FP8Attention(emulated_fp8_sdpa, head_dims=None)  # noqa: E731
    with torch.no_grad():
        exact = m.velocity(x, t, cond)
        with mode():
            fp8 = m.velocity(x, t, cond)
        speed.compile_model(m, pol)
        runs = [m.velocity(x, t, cond)]
        with mode():
            runs.append(m.velocity(x, t, cond))
        runs.append(m.velocity(x, t, cond))
    for got, want in zip(runs, (exact, fp8, exact)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert float((fp8 - exact).abs().max()) > 1e-3  # the two differ far beyond the tolerance


def test_fp8_attention_in_rollouts_only(tmp_path):
    """Through the trainer's rollout context: the FP8 kernel runs in the rollouts, never with grad (the
    loss's forwards keep exact attention)."""
    grads = []

    def kernel(q, k, v, **kw):
        grads.append(torch.is_grad_enabled())
        return emulated_fp8_sdpa(q, k, v, **kw)

    tr = Trainer(_toy_cfg(tmp_path))
    tr.rollout_levers = speed.RolloutLevers(tr.model, attention=lambda: FP8Attention(kernel, None))
    tr.fit()
    # the toy UNet's 3 self-attention layers (down3, mid, up3) x 4 rollout steps (one chunk); not its
    # cross-attention (a text mask: exact attention) nor the text encoder's (its embeddings are the loss's
    # conditions too)
    assert grads == [False] * 12
    assert tr.rollout_levers.info() == {"cuda_graphs": None, "fp8_attention": True}
