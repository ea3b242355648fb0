"""DGPO iterations on a Wan2.1-T2V-1.3B-sized transformer at 240 x 416, 33 frames (Flow-GRPO's Wan2.1
size): dgpo's own loop (the real Trainer, Wan adapter and recipe ``configs/wan21_1.3b_ocr.yaml``) beside
the official loops' structure on the same transformer, in one process on one card, printing seconds per
video per phase, peak memory and compile time, and writing JSON.

The transformer has random weights and the config of Wan-AI/Wan2.1-T2V-1.3B-Diffusers (``WAN21_1_3B``
below, as diffusers' scripts/convert_wan_to_diffusers.py writes it); latents are [B, 16, 9, 30, 52]
(3,510 tokens a video), text 512 tokens x 4096 from a one-layer random UMT5 of that width (the real
encoder does not change the transformer's work), the VAE tiny and random (diffusers' test size, the
real 4x temporal / 8x spatial compression). Every arm gets a fresh copy of the same transformer with
gradient checkpointing (the recipe's and Flow-GRPO's) and LoRA r 32 / alpha 64 on the Wan targets;
B = 8 videos per iteration (2 prompts x 4: Flow-GRPO's 8 videos per GPU batch, 4 per prompt).

Arms: ``official_flow_grpo``: Flow-GRPO's Wan2.1 structure (scripts/train_wan2_1.py): SDE rollout on
UniPC's 20-step grid with its Wan noise (``fg_wan_step``), CFG as two forwards of B per step, then for
each of int(20 x 0.99) = 19 steps the policy's two CFG forwards + backward and the reference's two
(KL 0.004), one optimizer step; ``official_dgpo``: the official DGPO structure (``official_loops.py``:
ODE rollout, 4 timesteps of reference, EMA-'old' and policy forwards); ``dgpo_bf16``: dgpo's Trainer
on the recipe (bf16 frozen weights, eager); ``dgpo_bf16_compile_rb``: and ``train.compile`` +
``train.reference_batch_size`` (every exact speed option).

Usage: python -m benchmarks.gpu.wan_gpu [--arms a,b] [--tiny] [--budget-s 420] [--out PATH]
Without ``--arms`` every arm runs, Flow-GRPO's first (``--budget-s`` skips the arms that would start
after it). ``--tiny`` is a CPU smoke run (CI runs it): a 2-layer transformer, 32 px, 5 frames, 4 steps;
its default arms are the eager ones.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import tempfile
import time
from pathlib import Path

import torch

from dgpo.config import load_config
from dgpo.models.wan import WAN_LORA_TARGETS, WanFlowModel
from dgpo.testing.random_pipelines import t5_tokenizer, umt5_encoder, wan_vae
from dgpo.training.trainer import Trainer

from benchmarks.common import write_result
from benchmarks.gpu.official_loops import OfficialLoop, sync

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "wan21_1.3b_ocr.yaml"
# WanTransformer3DModel config of Wan-AI/Wan2.1-T2V-1.3B-Diffusers (diffusers' conversion script, "Wan-T2V-1.3B")
WAN21_1_3B = {"patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
              "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
              "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024}
TINY_WAN = {**WAN21_1_3B, "num_attention_heads": 2, "attention_head_dim": 12, "text_dim": 32, "ffn_dim": 32,
            "num_layers": 2, "rope_max_seq_len": 32}
# sizes, group, steps: Flow-GRPO's Wan2.1 (config/grpo.py general_ocr_wan2_1: 240 x 416, 33 frames, 20 steps,
# timestep_fraction 0.99) and our recipe's DGPO values (timesteps.trunc_steps 12, count 4)
FULL = {"height": 240, "width": 416, "frames": 33, "prompts": 2, "group": 4, "transformer": WAN21_1_3B,
        "text_dim": 4096, "tokens": 512, "steps": 20, "train_t": 4, "trunc": 12, "fg_fraction": 0.99}
TINY = {"height": 32, "width": 32, "frames": 5, "prompts": 2, "group": 2, "transformer": TINY_WAN,
        "text_dim": 32, "tokens": 16, "steps": 4, "train_t": 2, "trunc": 2, "fg_fraction": 0.99}
S = FULL  # main() picks
ARMS = ("official_flow_grpo", "dgpo_bf16_compile_rb", "official_dgpo", "dgpo_bf16")
PROMPTS = ['A sign that says "dgpo"', 'A storefront with "Open 24 hours" written on it']
FG_KL, FG_CLIP = 0.004, 1e-3  # Flow-GRPO's Wan2.1 train.beta and train.clip_range (config/grpo.py)


def videos_per_iteration() -> int:
    return S["prompts"] * S["group"]


def latent_shape() -> tuple[int, int, int, int]:
    """[C, F', H', W'] of the benchmark's videos (Wan2.1: 4x temporal after the first frame, 8x spatial)."""
    return (S["transformer"]["in_channels"], (S["frames"] - 1) // 4 + 1, S["height"] // 8, S["width"] // 8)


def build_pipeline(device: str):
    """The pipeline with the template transformer (fp32, kept on the CPU; arms copy it)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU is seconds; on the CPU minutes
        tr = WanTransformer3DModel(**S["transformer"])
    tok = t5_tokenizer()
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                    flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tok, text_encoder=umt5_encoder(tok, S["text_dim"], 1, layers=1), vae=wan_vae(2),
                       scheduler=sched, transformer=tr.to("cpu"))
    return pipe, sum(p.numel() for p in tr.parameters())


def bench_config(tmp: str, arm: str, cuda: bool, epochs: int):
    """The recipe (configs/wan21_1.3b_ocr.yaml) for one card and this benchmark: B videos an epoch, one
    optimizer step, a reward without weights (colorfulness on every 4th frame), no eval or checkpoints."""
    B = videos_per_iteration()
    return load_config(str(RECIPE), [
        f"model.resolution={S['height']}", f"model.width={S['width']}", f"model.frames={S['frames']}",
        f"model.max_sequence_length={S['tokens']}", f"sampler.steps={S['steps']}",
        f"timesteps.trunc_steps={S['trunc']}", f"timesteps.count={S['train_t']}",
        f"train.mixed_precision={'bf16' if cuda else 'no'}", f"train.compile={'compile' in arm}",
        f"train.reference_batch_size={S['train_t'] * B if arm.endswith('_rb') else 0}",
        f"run.out_dir={tmp}", f"run.epochs={epochs}", "run.sample_every=0", "run.save_every=0", "run.eval_every=0",
        "run.eval_at_ends=false", "run.log_with=none", "reward.name=colorfulness", "reward.frames=every_k",
        "reward.frames_every=4", "train.prompts=ocr:test", f"train.prompts_per_epoch={S['prompts']}",
        f"train.group_size={S['group']}", f"train.batch_size={B}", f"train.rollout_batch_size={B}",
        "train.sampling_batches=1", "train.steps_per_epoch=1"])


def fg_wan_step(x, v, s: float, s_next: float, s_max: float, s_min: float) -> tuple[torch.Tensor, float]:
    """Flow-GRPO's Wan SDE step: the mean of its flow SDE with the per-step std_dev = s_min + (s_max - s_min) s
    (s_max = sigmas[1], s_min = sigmas[-1] of UniPC's grid; no noise_level), and the step's noise std."""
    dt = s_next - s
    std = s_min + (s_max - s_min) * s
    mean = x * (1 + std**2 / (2 * s) * dt) + v * (1 + std**2 * (1 - s) / (2 * s)) * dt
    return mean, std * math.sqrt(-dt)


class WanLoop(OfficialLoop):
    """The official loops on Wan's transformer: DGPO's as in ``official_loops.py``; Flow-GRPO's with its
    Wan script's grid, noise, CFG as two forwards, 19 of 20 trained steps and its KL and clip."""

    def forward(self, x, t, cond) -> torch.Tensor:
        with self.autocast:
            return self.tr(hidden_states=x, timestep=t, encoder_hidden_states=cond["embeds"],
                           return_dict=False)[0].float()

    def two_forward_cfg(self, x, t) -> torch.Tensor:
        v_c, v_u = self.forward(x, t, self.cond), self.forward(x, t, self.null)
        return v_u + self.cfg * (v_c - v_u)

    def unipc_grid(self):
        from diffusers import UniPCMultistepScheduler

        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=self.shift)
        sched.set_timesteps(self.steps)
        return sched.sigmas.tolist(), sched.timesteps.to(self.device).float()

    @torch.no_grad()
    def sde_rollout(self, gen):
        s, ts = self.unipc_grid()
        x, xs, logps = self._noise(gen), [], []
        for i in range(self.steps):
            xs.append(x)
            v = self.two_forward_cfg(x, ts[i].expand(len(x)))
            mean, std = fg_wan_step(x, v, s[i], s[i + 1], s[1], s[-1])
            x = mean + std * torch.randn_like(x)
            logps.append(-((x - mean) ** 2).flatten(1).mean(1) / (2 * std**2))
        self.decode(x)
        return torch.stack(xs + [x]), (s, ts, torch.stack(logps))

    def grpo_train(self, traj, grid, trained: int = 19) -> None:
        s, ts, old = grid
        adv = torch.randn(traj.shape[1], device=self.device)
        for i in range(trained):
            x, x_next, t = traj[i], traj[i + 1], ts[i].expand(traj.shape[1])
            with torch.no_grad(), self.tr.disable_adapter():
                ref, _ = fg_wan_step(x, self.two_forward_cfg(x, t), s[i], s[i + 1], s[1], s[-1])
            mean, std = fg_wan_step(x, self.two_forward_cfg(x, t), s[i], s[i + 1], s[1], s[-1])
            ratio = torch.exp(-((x_next - mean) ** 2).flatten(1).mean(1) / (2 * std**2) - old[i])
            loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - FG_CLIP, 1 + FG_CLIP)).mean()
            loss = loss + FG_KL * ((mean - ref) ** 2).flatten(1).mean(1).mean() / (2 * std**2)
            loss.backward()
        self._update()

    def iteration(self, algorithm: str, gen) -> dict[str, float]:
        if algorithm == "dgpo":
            return super().iteration(algorithm, gen)
        sync()
        t0 = time.perf_counter()
        traj, grid = self.sde_rollout(gen)
        sync()
        t1 = time.perf_counter()
        self.grpo_train(traj, grid, int(self.steps * S["fg_fraction"]))
        sync()
        return {"rollout": t1 - t0, "train": time.perf_counter() - t1}


def run_official(algorithm: str, pipe, template, device: str, iters: int) -> dict:
    from peft import LoraConfig, get_peft_model

    pipe.transformer = copy.deepcopy(template).to(device).requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        model = WanFlowModel(pipe, bench_config(tmp, "official", device == "cuda", 1).model).to(device)
    tr = get_peft_model(pipe.transformer, LoraConfig(r=32, lora_alpha=64, init_lora_weights="gaussian",
                                                     target_modules=WAN_LORA_TARGETS))
    B = videos_per_iteration()
    cond = model.encode_prompts([PROMPTS[i % S["prompts"]] for i in range(B)])
    null = model.encode_prompts([""] * B)
    loop = WanLoop(tr, cond, null, latent_shape(), model.decode, steps=S["steps"], shift=3.0, device=device)
    loop.opt.param_groups[0]["lr"] = 1e-4  # Flow-GRPO's Wan2.1 learning_rate (and the recipe's)
    gen = torch.Generator().manual_seed(0)
    first = loop.iteration(algorithm, gen)
    rows = [loop.iteration(algorithm, gen) for _ in range(iters)]
    per = {k: sum(r[k] for r in rows) / len(rows) / B for k in rows[0]}
    loop = tr = model = None  # the arm's GPU memory goes
    pipe.transformer = template
    return {"seconds_per_sample": {**per, "total": sum(per.values())}, "first_iteration_s": sum(first.values())}


def as_loaded(tr, dtype: torch.dtype):
    """``tr`` in ``dtype`` as ``from_pretrained(torch_dtype=dtype)`` loads it (model.dtype=bf16): the
    transformer's ``_keep_in_fp32_modules`` (rope, time embedder, norms, modulation tables) stay fp32."""
    keep = set(getattr(tr, "_keep_in_fp32_modules", None) or ())
    for name, t in [*tr.named_parameters(), *tr.named_buffers()]:
        if t.is_floating_point():
            t.data = t.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    return tr


def frozen_numel_by_dtype(net) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in net.parameters():
        if not p.requires_grad:
            out[str(p.dtype)] = out.get(str(p.dtype), 0) + p.numel()
    return out


def run_dgpo(arm: str, pipe, template, device: str, epochs: int, cuda: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bench_config(tmp, arm, cuda, epochs)
        pipe.transformer = as_loaded(copy.deepcopy(template).to(device), torch.bfloat16 if cuda else torch.float32)
        model = WanFlowModel(pipe, cfg.model)
        t0 = time.perf_counter()
        trainer = Trainer(cfg, model=model)
        trainer.fit()
        rows = trainer.metrics.read()
        phases = ("rollout", "reward", "train")
        first = sum(rows[0][f"time_{k}"] for k in phases)
        timed_rows = rows[1:] or rows
        B = videos_per_iteration()
        per = {k: sum(r[f"time_{k}"] for r in timed_rows) / len(timed_rows) / B for k in phases}
        steady = sum(per.values()) * B
        out = {"seconds_per_sample": {**per, "total": sum(per.values())}, "first_iteration_s": first,
               "compile_s": first - steady if "compile" in arm else None, "wall_s": time.perf_counter() - t0,
               "trainable_params": sum(p.numel() for p in trainer.policy.params),
               "trainable_dtype": str(trainer.policy.params[0].dtype),
               "frozen_numel_by_dtype": frozen_numel_by_dtype(trainer.model.denoiser),
               "compile_info": trainer.compile_info}
        del trainer, model
    pipe.transformer = template
    return out


def iteration_flops() -> dict:
    """FLOPs per video of one transformer forward and forward + backward (PyTorch's FlopCounterMode on the
    meta device: no memory, no GPU time), and of a DGPO iteration (steps x 2 CFG forwards + train_t x
    (reference + old forwards + policy forward and backward)) and a Flow-GRPO one (steps x 2 + 19 x
    (2 reference + 2 policy forwards and backwards)); gradient checkpointing's recomputation not counted."""
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        tr = WanTransformer3DModel(**S["transformer"]).requires_grad_(False)
        tr = get_peft_model(tr, LoraConfig(r=32, lora_alpha=64, target_modules=WAN_LORA_TARGETS))
        kw = dict(hidden_states=torch.randn(1, *latent_shape()), timestep=torch.full((1,), 500.0),
                  encoder_hidden_states=torch.randn(1, S["tokens"], S["text_dim"]), return_dict=False)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            tr(**kw)
        fwd = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            tr(**kw)[0].float().pow(2).mean().backward()
        fwd_bwd = fc.get_total_flops()
    fg_t = int(S["steps"] * S["fg_fraction"])
    return {"forward": fwd, "forward_backward": fwd_bwd,
            "dgpo_iteration_per_sample": S["steps"] * 2 * fwd + S["train_t"] * (2 * fwd + fwd_bwd),
            "flow_grpo_iteration_per_sample": S["steps"] * 2 * fwd + fg_t * (2 * fwd + 2 * fwd_bwd)}


def summarize(result: dict) -> None:
    """Ratios of seconds per video: Flow-GRPO's structure over each DGPO arm."""
    total = {k: a.get("seconds_per_sample", {}).get("total") for k, a in result["arms"].items()}
    base = total.get("official_flow_grpo")
    result["speedups"] = {f"official_flow_grpo/{k}": base / v for k, v in total.items()
                          if base and v and k != "official_flow_grpo"}


def run_arm(arm: str, a, pipe, template, device: str, cuda: bool, flops: dict) -> dict:
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        if arm.startswith("official"):
            r = run_official(arm.removeprefix("official_"), pipe, template, device, a.iters)
        else:
            r = run_dgpo(arm, pipe, template, device, a.epochs, cuda)
    except Exception as e:  # one failing arm must not lose the others' figures
        r = {"error": f"{type(e).__name__}: {e}"}
    r["arm_wall_s"] = time.perf_counter() - t0
    r["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    key = "flow_grpo_iteration_per_sample" if arm == "official_flow_grpo" else "dgpo_iteration_per_sample"
    if "seconds_per_sample" in r and flops.get(key):
        r["achieved_tflops"] = flops[key] / r["seconds_per_sample"]["total"] / 1e12
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: 2 layers, 32 px, 5 frames, 4 steps")
    ap.add_argument("--arms", default="", help=f"comma-separated subset of {', '.join(ARMS)}")
    ap.add_argument("--epochs", type=int, default=3, help="dgpo arms: epochs (the first is warm-up)")
    ap.add_argument("--iters", type=int, default=1, help="official arms: timed iterations after one warm-up")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip the arms that start after this")
    ap.add_argument("--out", default="bench_results/wan_gpu.json")
    a = ap.parse_args()
    global S
    S = TINY if a.tiny else FULL
    arms = a.arms.split(",") if a.arms else [x for x in ARMS if not (a.tiny and "compile" in x)]
    bad = [x for x in arms if x not in ARMS]
    if bad:
        raise SystemExit(f"unknown arms {bad}; allowed: {', '.join(ARMS)}")
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    t_start = time.perf_counter()
    pipe, n_params = build_pipeline(device)
    template = pipe.transformer
    try:
        flops = iteration_flops()
    except Exception as e:  # the timings stand without it
        flops = {"error": f"{type(e).__name__}: {e}"}
    import diffusers
    import peft

    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "tiny": a.tiny,
              "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__},
              "transformer_params": n_params, "height": S["height"], "width": S["width"], "frames": S["frames"],
              "latent_shape": list(latent_shape()), "text_tokens": S["tokens"],
              "samples_per_iteration": videos_per_iteration(), "rollout_steps": S["steps"],
              "dgpo_train_timesteps": S["train_t"], "flow_grpo_train_steps": int(S["steps"] * S["fg_fraction"]),
              "flops": flops, "arms": {}, "skipped": []}
    for arm in arms:
        if time.perf_counter() - t_start > a.budget_s:
            result["skipped"].append(arm)
            continue
        print(f"== {arm} (at {time.perf_counter() - t_start:.0f} s)", flush=True)
        result["arms"][arm] = run_arm(arm, a, pipe, template, device, cuda, flops)
        gc.collect()
        summarize(result)
        write_result(result, a.out)
    write_result(result, a.out)


if __name__ == "__main__":
    main()
