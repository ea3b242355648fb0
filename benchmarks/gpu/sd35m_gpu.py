"""DGPO iterations on an SD3.5-Medium-sized transformer at 512 px: dgpo's own loop (the real Trainer,
SD3 adapter, LoRA r64 on the official targets, rewards, the DGPO loss, AdamW) beside the official
loops' structure (``official_loops.py``), in one process on one card, printing seconds per sample
per phase, the ratio, the loop overhead, peak memory and compile time, and writing JSON.

The transformer has random weights and the transformer config of stabilityai/stable-diffusion-3.5-medium
(``SD35M`` below); text encoders and VAE are random and small but have the real interface widths
(CLIP 768 + 1280 -> pooled 2048, T5 4096; 77 + 128 text tokens), so the transformer sees real shapes.
Every arm gets a fresh copy of the same transformer; B = 16 samples per iteration (2 prompts x 8).

Arms: ``official_dgpo`` / ``official_flow_grpo`` (eager, fp32 weights under bf16 autocast),
``dgpo_fp32`` (dgpo, the same precision), ``dgpo_bf16`` (bf16 frozen weights, fp32 LoRA and AdamW
state), ``dgpo_bf16_compile`` (and ``train.compile``), ``dgpo_fp8_compile``
(and ``train.fp8=rowwise``: FP8 matmuls in the blocks, needs torchao), ``dgpo_fp8tw_compile``
(tensorwise scales), ``dgpo_fp32_compile`` (compile alone), ``dgpo_fp8`` (FP8 alone, eager, bf16
weights); ``_rb`` adds ``train.reference_batch_size`` = all 4 timesteps x B: one reference and one
EMA-'old' forward of 64 samples per iteration instead of 4 of 16 (``dgpo_bf16_compile_rb``: every exact
option; its ``calls`` time the reference forward at both sizes). ``--compare`` runs them all, in an order
that puts the ones that matter first (``--budget-s`` skips the arms that would start after it).
Loop overhead = 1 - (the arm's model calls timed alone, composed as its loop calls them) / its
measured iteration: everything outside model calls (sampler, VAE, reward, loss, optimizer, EMAs).

Usage: python -m benchmarks.gpu.sd35m_gpu [--compare | --arms a,b] [--tiny] [--budget-s 480] [--out PATH]
                                          [--profile dgpo_bf16_compile,...]
Without ``--compare`` or ``--arms`` only ``dgpo_bf16_compile_rb`` runs (a quick check of dgpo's speed).
``--tiny`` is a CPU smoke run (CI runs it): a 2-layer transformer, small text encoders, 64 px, 4 samples;
by default its arms are the eager ones. ``benchmarks/gpu/sd35m_gpu.sh`` is a GPU session's whole check.
"""

from __future__ import annotations

import argparse
import copy
import gc
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from dgpo.config import load_config
from dgpo.models.base import cfg_velocity
from dgpo.models.sd3 import SD3_LORA_TARGETS, SD3FlowModel
from dgpo.testing.random_pipelines import clip_encoder, clip_tokenizer, kl_vae, t5_encoder, t5_tokenizer
from dgpo.training.trainer import Trainer

from benchmarks.common import write_result
from benchmarks.gpu.official_loops import OfficialLoop, sync

# SD3Transformer2DModel config of stabilityai/stable-diffusion-3.5-medium (its transformer/config.json)
SD35M = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
         "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
         "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 384,
         "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm"}
# --compare's arms, the ones that matter first (for --budget-s): the official structure, dgpo with all exact
# options, + FP8, then each option alone; Flow-GRPO's structure last (85 GiB on the H200: more than an H100 has)
ARMS = ("official_dgpo", "dgpo_bf16_compile_rb", "dgpo_fp8_compile_rb", "dgpo_bf16_compile", "dgpo_fp8_compile",
        "dgpo_bf16", "dgpo_fp32", "dgpo_fp8tw_compile", "dgpo_fp32_compile", "dgpo_fp8", "official_flow_grpo")
EXTRA_ARMS = ("dgpo_bf16_rb",)  # --arms only (the tiny CPU test's eager check of the _rb path)
DEFAULT_ARMS = ("dgpo_bf16_compile_rb",)  # without --compare: dgpo with every exact option
FP8_ARMS = {"dgpo_fp8_compile_rb": "rowwise", "dgpo_fp8_compile": "rowwise", "dgpo_fp8tw_compile": "tensorwise",
            "dgpo_fp8": "rowwise"}
TINY_SD3 = {"sample_size": 8, "patch_size": 2, "in_channels": 16, "num_layers": 2, "attention_head_dim": 16,
            "num_attention_heads": 2, "joint_attention_dim": 64, "caption_projection_dim": 32,
            "pooled_projection_dim": 64, "out_channels": 16, "pos_embed_max_size": 32, "dual_attention_layers": [0],
            "qk_norm": "rms_norm"}
FULL = {"res": 512, "group": 8, "transformer": SD35M, "clip": (768, 1280), "t5": 4096, "tokens": 128}
TINY = {"res": 64, "group": 2, "transformer": TINY_SD3, "clip": (32, 32), "t5": 64, "tokens": 16}
S = FULL  # main() picks
PROMPTS = 2
STEPS, TRAIN_T = 10, 4


def build_pipeline(device: str):
    """The pipeline with the template transformer (fp32, kept on the CPU; arms copy it)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU is seconds; on the CPU minutes
        tr = SD3Transformer2DModel(**S["transformer"])
    tok, tok3 = clip_tokenizer(), t5_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=tr.to("cpu"), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=kl_vae(16, 1),
        text_encoder=clip_encoder(tok, True, 2, hidden=S["clip"][0], layers=1), tokenizer=tok,
        text_encoder_2=clip_encoder(tok, True, 3, hidden=S["clip"][1], layers=1), tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_encoder(tok3, S["t5"], 4, layers=1), tokenizer_3=tok3)
    return pipe, sum(p.numel() for p in tr.parameters())


def fresh_model(pipe, template, dtype, device, cfg) -> SD3FlowModel:
    pipe.transformer = copy.deepcopy(template).to(device, dtype)
    return SD3FlowModel(pipe, cfg)


def timed(fn, reps: int) -> float:
    fn()  # warm-up (and compilation)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps


def call_times(model, reference, old, autocast, B: int, reps: int, need_old: bool = True, frozen_B: int = 0) -> dict:
    """Each model call of a DGPO iteration alone: rollout step (CFG, batch 2B), reference / old
    forwards (batch ``frozen_B``: train.reference_batch_size, else B) and the policy forward + backward
    (batch B)."""
    c, d = model.latent_shape(), model.device
    cond, null = model.encode_prompts(["a photo of a cat"] * B), model.encode_prompts([""] * B)
    x, t = torch.randn(B, *c, device=d), torch.full((B,), 700.0, device=d)
    fb = frozen_B or B
    big = {"x": torch.randn(fb, *c, device=d), "t": torch.full((fb,), 700.0, device=d),
           "cond": model.encode_prompts(["a photo of a cat"] * fb)}

    def nograd(ctx, n=fb):
        x_, t_, c_ = (big["x"], big["t"], big["cond"]) if n == fb else (x, t, cond)

        def f():
            with torch.no_grad(), ctx(), autocast():
                model.velocity(x_, t_, c_)
        return f

    def rollout_step():
        with torch.no_grad(), autocast():
            cfg_velocity(model, x, t, cond, null, 4.5)

    def fwd_bwd():
        with autocast():
            loss = model.velocity(x, t, cond).float().pow(2).mean()
        loss.backward()
        model.denoiser.zero_grad(set_to_none=True)

    out = {"rollout_step_cfg": timed(rollout_step, reps), "frozen_batch": fb,
           "reference_fwd": timed(nograd(reference), reps),
           "old_fwd": timed(nograd(old), reps) if need_old else 0.0, "policy_fwd_bwd": timed(fwd_bwd, reps)}
    if fb != B:  # the same forwards at the micro-batch's size, for the ratio
        out["reference_fwd_at_B"] = timed(nograd(reference, B), reps)
        out["old_fwd_at_B"] = timed(nograd(old, B), reps) if need_old else 0.0
    frozen_calls = TRAIN_T * B / fb  # reference and 'old' forwards per iteration
    out["composed_per_sample"] = (STEPS * out["rollout_step_cfg"]
                                  + frozen_calls * (out["reference_fwd"] + out["old_fwd"])
                                  + TRAIN_T * out["policy_fwd_bwd"]) / B
    return out


def run_official(algorithm, pipe, template, device, tiny, iters) -> dict:
    from peft import LoraConfig, get_peft_model

    pipe.transformer = copy.deepcopy(template).to(device).requires_grad_(False)
    res = S["res"]
    model = SD3FlowModel(pipe, load_config(None, ["model.kind=sd3", f"model.resolution={res}",
                                                  f"model.max_sequence_length={S['tokens']}"]).model).to(device)
    tr = get_peft_model(pipe.transformer, LoraConfig(r=64, lora_alpha=128, init_lora_weights="gaussian",
                                                     target_modules=SD3_LORA_TARGETS))
    B = PROMPTS * S["group"]
    cond = model.encode_prompts(["a photo of a cat", "two dogs"] * (B // 2))
    null = model.encode_prompts([""] * B)
    loop = OfficialLoop(tr, cond, null, (16, res // 8, res // 8), model.decode, device=device)
    gen = torch.Generator().manual_seed(0)
    first = loop.iteration(algorithm, gen)
    rows = [loop.iteration(algorithm, gen) for _ in range(iters)]
    per = {k: sum(r[k] for r in rows) / len(rows) / B for k in rows[0]}
    out = {"seconds_per_sample": {**per, "total": sum(per.values())}, "first_iteration_s": sum(first.values())}
    if algorithm == "dgpo":
        model.denoiser = tr

        def ema_swap():  # called under no_grad
            saved = [p.detach().clone() for p in loop.params]
            torch._foreach_copy_(loop.params, loop.ema)
            try:
                yield
            finally:
                torch._foreach_copy_(loop.params, saved)

        out["calls"] = call_times(model, tr.disable_adapter, contextmanager(ema_swap), lambda: loop.autocast,
                                  B, 2 if tiny else 3)
    loop = tr = model = None  # the arm's GPU memory goes (rebound, not del: ema_swap closes over loop)
    pipe.transformer = template  # drop the arm's copy (the template stays on the CPU)
    return out


def run_dgpo(arm, pipe, template, device, tiny, epochs, cuda, profile_to: Path | None = None, save=None,
             extra: tuple[str, ...] = (), calls: bool = True) -> dict:
    """dgpo's Trainer on the arm (its name sets the precision, compile, FP8 and reference batching;
    ``extra`` config overrides follow), timed per phase; ``calls``: each model call timed alone too."""
    fp8 = FP8_ARMS.get(arm, "none")
    bf16 = "bf16" in arm or fp8 != "none"
    frozen_B = TRAIN_T * PROMPTS * S["group"] if arm.endswith("_rb") else 0
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [
            "model.kind=sd3", f"model.resolution={S['res']}", f"model.max_sequence_length={S['tokens']}",
            f"train.mixed_precision={'bf16' if cuda else 'no'}", f"train.compile={'compile' in arm}",
            f"train.fp8={fp8}", f"train.reference_batch_size={frozen_B}",
            f"run.out_dir={tmp}", f"run.epochs={epochs}", "run.sample_every=0", "run.save_every=0",
            "run.eval_at_ends=false", "run.log_with=none", "sampler.shift=3.0", "sampler.method=dpm",
            f"sampler.steps={STEPS}", "sampler.cfg_scale=4.5", "reward.name=colorfulness", "train.lora_rank=64",
            "train.lora_alpha=128", "train.lr=3e-4", f"train.prompts_per_epoch={PROMPTS}",
            f"train.group_size={S['group']}",
            f"train.batch_size={PROMPTS * S['group']}", "train.sampling_batches=1", f"timesteps.count={TRAIN_T}",
            "dgpo.kl_beta=0.02", "dgpo.kl_cfg=1.0", "dgpo.clip_range=0.01", "dgpo.switch_ema_ref=500", *extra])
        model = fresh_model(pipe, template, torch.bfloat16 if bf16 and cuda else torch.float32, device, cfg.model)
        t0 = time.perf_counter()
        trainer = Trainer(cfg, model=model)
        trainer.fit()
        rows = trainer.metrics.read()
        phases = ("rollout", "reward", "train")
        first = sum(rows[0][f"time_{k}"] for k in phases)
        timed_rows = rows[1:] or rows
        B = PROMPTS * S["group"]
        per = {k: sum(r[f"time_{k}"] for r in timed_rows) / len(timed_rows) / B for k in phases}
        steady = sum(per.values()) * B
        out = {"seconds_per_sample": {**per, "total": sum(per.values())}, "first_iteration_s": first,
               "compile_s": first - steady if "compile" in arm else None, "wall_s": time.perf_counter() - t0,
               "trainable_params": sum(p.numel() for p in trainer.policy.params),
               "trainable_dtype": str(trainer.policy.params[0].dtype),
               "frozen_dtype": str(next(p for p in trainer.model.denoiser.parameters() if not p.requires_grad).dtype),
               "compile_info": trainer.compile_info, "fp8_info": trainer.fp8_info,
               "rollout_levers": trainer.rollout_levers.info(), "mean_reward": [r["reward_mean"] for r in rows]}
        if calls:
            out["calls"] = call_times(trainer.model, trainer.policy.reference, trainer.algo.old_model.applied,
                                      trainer.acc.autocast, B, 2 if tiny else 3, frozen_B=frozen_B)
        if profile_to is not None:  # after every timing above: the profiler slows the host
            if save is not None:
                save({**out, "profile": "running"})  # the timings are on disk should the profiler crash
            try:
                out["profile"] = profile_epoch(trainer, profile_to)
            except Exception as e:  # the timings stand without it
                out["profile"] = {"error": f"{type(e).__name__}: {e}"}
        del trainer, model
    pipe.transformer = template
    return out


def profile_epoch(trainer, table: Path) -> dict:
    """One more epoch of a trained arm under torch.profiler: the GPU's kernel time against the epoch's
    own wall time (rollout + reward + train, as logged) is the share of the iteration the GPU was busy;
    the top operations by GPU (on a CPU run: CPU) time go to ``table``."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    trainer.start_epoch, trainer.cfg.run.epochs = trainer.cfg.run.epochs, trainer.cfg.run.epochs + 1
    with profile(activities=acts) as prof:
        trainer.fit()  # the one extra epoch (the first fit ended the trackers: none are on here)
        sync()
    row = trainer.metrics.read()[-1]
    epoch_s = row["time_rollout"] + row["time_reward"] + row["time_train"]
    events = prof.key_averages()
    # as the profiler's own table totals them: device-side events only (an op's row repeats its kernels'
    # time, and annotations such as compiled regions span them), memory copies and sets left out
    kernels_s = sum(e.self_device_time_total for e in events
                    if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
                    and not e.key.startswith(("Memcpy", "Memset"))) / 1e6
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(events.table(sort_by=sort, row_limit=40) + "\n")
    return {"epoch": row["epoch"], "epoch_s": epoch_s, "gpu_kernels_s": kernels_s, "gpu_busy": kernels_s / epoch_s,
            "table": str(table)}


def iteration_flops() -> dict:
    """FLOPs of one DGPO iteration per sample, counted by PyTorch's FlopCounterMode on the meta device
    (no memory, no GPU time): 10 rollout steps x 2 forwards (CFG) + 4 timesteps x (reference + old
    forwards + the policy's forward and backward)."""
    from diffusers import SD3Transformer2DModel
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        tr = SD3Transformer2DModel(**S["transformer"]).requires_grad_(False)
        tr = get_peft_model(tr, LoraConfig(r=64, lora_alpha=128, target_modules=SD3_LORA_TARGETS))
        hw, pooled = S["res"] // 8, S["transformer"]["pooled_projection_dim"]
        kw = dict(hidden_states=torch.randn(1, 16, hw, hw), timestep=torch.full((1,), 500.0),
                  encoder_hidden_states=torch.randn(1, 77 + S["tokens"], S["t5"]),
                  pooled_projections=torch.randn(1, pooled), return_dict=False)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            tr(**kw)
        fwd = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            tr(**kw)[0].float().pow(2).mean().backward()
        fwd_bwd = fc.get_total_flops()
    return {"forward": fwd, "forward_backward": fwd_bwd,
            "iteration_per_sample": STEPS * 2 * fwd + TRAIN_T * (2 * fwd + fwd_bwd)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--compare", action="store_true", help="every arm, in ARMS' order (the ones that matter first)")
    ap.add_argument("--arms", default="", help=f"comma-separated subset of {', '.join(ARMS)}")
    ap.add_argument("--epochs", type=int, default=3, help="dgpo arms: epochs (the first is warm-up)")
    ap.add_argument("--iters", type=int, default=2, help="official arms: timed iterations after one warm-up")
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip the arms that start after this")
    ap.add_argument("--out", default="bench_results/sd35m_gpu.json")
    ap.add_argument("--profile", default="", help="comma-separated dgpo arms to profile for one more epoch after "
                    "their timings (GPU busy share; top ops to <out>.<arm>.profile.txt)")
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    t_start = time.perf_counter()
    global S
    S = TINY if a.tiny else FULL
    pipe, n_params = build_pipeline(device)
    template = pipe.transformer
    import diffusers
    import peft

    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "tiny": a.tiny,
              "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__},
              "transformer_params": n_params, "resolution": S["res"], "samples_per_iteration":
              PROMPTS * S["group"], "rollout_steps": STEPS, "train_timesteps": TRAIN_T, "arms": {}, "skipped": [],
              "flops": iteration_flops()}
    eager = [arm for arm in ARMS if "compile" not in arm]  # --tiny's default: compiling on a CPU takes minutes
    arms = a.arms.split(",") if a.arms else list(ARMS) if a.compare else eager if a.tiny else list(DEFAULT_ARMS)
    bad = [p for p in a.profile.split(",") if p and (p not in ARMS + EXTRA_ARMS or p.startswith("official"))]
    if bad:
        raise SystemExit(f"--profile: {bad} are not dgpo arms; allowed: "
                         f"{', '.join(x for x in ARMS if x.startswith('dgpo'))}")
    for arm in arms:
        if arm not in ARMS + EXTRA_ARMS:
            raise SystemExit(f"unknown arm {arm!r}; allowed: {', '.join(ARMS + EXTRA_ARMS)}")
        if time.perf_counter() - t_start > a.budget_s:
            result["skipped"].append(arm)
            continue
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        print(f"== {arm} (at {t0 - t_start:.0f} s)", flush=True)
        try:
            if arm.startswith("official"):
                r = run_official(arm.removeprefix("official_"), pipe, template, device, a.tiny, a.iters)
            else:
                prof = Path(a.out).with_suffix(f".{arm}.profile.txt") if arm in a.profile.split(",") else None

                def save(partial: dict, arm: str = arm) -> None:
                    result["arms"][arm] = partial
                    write_result(result, a.out)

                r = run_dgpo(arm, pipe, template, device, a.tiny, a.epochs, cuda, prof, save)
        except Exception as e:  # one failing arm must not lose the others' figures
            r = {"error": f"{type(e).__name__}: {e}"}
        r["arm_wall_s"] = time.perf_counter() - t0
        r["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        if "calls" in r and "seconds_per_sample" in r:
            r["loop_overhead"] = 1 - r["calls"]["composed_per_sample"] / r["seconds_per_sample"]["total"]
        if "seconds_per_sample" in r:
            r["achieved_tflops"] = result["flops"]["iteration_per_sample"] / r["seconds_per_sample"]["total"] / 1e12
        result["arms"][arm] = r
        gc.collect()
        summarize(result)
        write_result(result, a.out)


def summarize(result: dict) -> None:
    arms = result["arms"]
    total = lambda k: arms.get(k, {}).get("seconds_per_sample", {}).get("total")  # noqa: E731
    ratios = {}
    base = total("official_dgpo")
    for k in arms:
        if base and total(k):
            ratios[f"official_dgpo/{k}"] = base / total(k)
    if total("official_flow_grpo") and base:
        ratios["official_flow_grpo/official_dgpo"] = total("official_flow_grpo") / base
    result["speedups"] = ratios


if __name__ == "__main__":
    main()
