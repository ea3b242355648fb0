"""The GPU speed levers side by side, in one process on one card: the official DGPO loop's structure,
dgpo with every exact option (bf16 frozen weights, ``train.compile``, ``train.reference_batch_size``) and
dgpo + each lever, on the SD3.5-Medium-sized setup of ``sd35m_gpu.py`` (random weights, 512 px, LoRA r64,
16 samples, 10 DPM steps with CFG, 4 training timesteps). Per arm: seconds per sample per DGPO iteration
(rollout, reward wait, train), its ratio to the official structure and to dgpo, peak GPU memory, compile
time, the rollouts' mean rewards (the levers that keep the numbers give dgpo's, to rounding), and what
the lever reports; JSON after every arm.

Arms (``ARMS``, in this order: ``--budget-s`` skips those that would start after it):
  official_dgpo   the official structure (eager, fp32 weights under bf16 autocast)
  dgpo            dgpo, every exact option (``dgpo_bf16_compile_rb`` of sd35m_gpu.py)
  cuda_graphs     + ``train.cuda_graphs`` (the rollouts' calls replayed from CUDA graphs; same numbers)
  fp8_attention   + ``train.fp8_attention`` (FA3's FP8 attention in the rollouts; needs flash_attn_interface)
  fp8_cast_once   + ``train.fp8=rowwise`` + ``train.fp8_cast_once`` (frozen weights cast to FP8 once)
  fp8_per_call    + ``train.fp8=rowwise`` (torchao casts every weight per call: the cast-once baseline)
  levers_all      + cast-once FP8 + CUDA graphs (+ FP8 attention where it runs)
  max_autotune    + ``train.compile_mode=max-autotune-no-cudagraphs`` (minutes of autotuning: last)

Usage: python -m benchmarks.gpu.levers_gpu [--arms a,b] [--tiny] [--budget-s 420] [--out PATH]
``--tiny`` runs the same arms on the CPU in seconds (CI runs it): the tiny transformer of sd35m_gpu.py,
eager (no ``train.compile``; max_autotune, which compiles, only when named in ``--arms``).
``benchmarks/gpu/run_all_gpu.sh`` runs it within a GPU session's whole check.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import time

import torch

import benchmarks.gpu.sd35m_gpu as sd
from benchmarks.common import write_result

FP8_CAST_ONCE = ("train.fp8=rowwise", "train.fp8_cast_once=true")
LEVERS: dict[str, tuple[str, ...]] = {
    "dgpo": (),
    "cuda_graphs": ("train.cuda_graphs=true",),
    "fp8_attention": ("train.fp8_attention=true",),
    "fp8_cast_once": FP8_CAST_ONCE,
    "fp8_per_call": ("train.fp8=rowwise",),
    "levers_all": (*FP8_CAST_ONCE, "train.cuda_graphs=true"),
    "max_autotune": ("train.compile_mode=max-autotune-no-cudagraphs",),
}
ARMS = ("official_dgpo", *LEVERS)
TINY_DEFAULT = tuple(a for a in ARMS if a != "max_autotune")  # compiling on a CPU takes minutes


def lever_overrides(arm: str, tiny: bool) -> tuple[str, ...]:
    extra = LEVERS[arm]
    if arm == "levers_all" and importlib.util.find_spec("flash_attn_interface") is not None:
        extra = (*extra, "train.fp8_attention=true")
    if tiny and arm == "max_autotune":  # the tiny base arm is eager: the mode needs the compile
        extra = ("train.compile=true", *extra)
    return extra


def dry_graphs_on_cpu() -> None:
    """--tiny: ``train.cuda_graphs`` runs its static-shape bookkeeping without graphs on the CPU (the
    trainer itself notes and ignores it there), so the smoke run covers that path end to end."""
    from dgpo.training import speed

    real = speed.RolloutLevers.from_config.__func__

    def from_config(cls, model, policy, train, device):
        if train.cuda_graphs and device.type == "cpu":
            return cls(model, policy.mode_key, "dry")
        return real(cls, model, policy, train, device)

    speed.RolloutLevers.from_config = classmethod(from_config)


def run_arm(arm: str, pipe, template, device: str, a, cuda: bool) -> dict:
    if arm == "official_dgpo":
        return sd.run_official("dgpo", pipe, template, device, a.tiny, a.iters)
    base = "dgpo_bf16_rb" if a.tiny else "dgpo_bf16_compile_rb"
    out = sd.run_dgpo(base, pipe, template, device, a.tiny, a.epochs, cuda, extra=lever_overrides(arm, a.tiny),
                      calls=False)
    out["overrides"] = list(lever_overrides(arm, a.tiny))
    return out


def summarize(result: dict) -> list[str]:
    """Ratios to the official structure and to dgpo (each > 1: faster), and the table's lines."""
    arms = result["arms"]
    total = {k: r["seconds_per_sample"]["total"] for k, r in arms.items() if "seconds_per_sample" in r}
    lines = [f"{'arm':<16}{'s/sample':>10}{'vs official':>13}{'vs dgpo':>9}{'peak GiB':>10}{'compile s':>11}"]
    for k, r in arms.items():
        if k not in total:
            lines.append(f"{k:<16}  {r.get('error', 'no timing')[:100]}")
            continue
        r["vs_official"] = total["official_dgpo"] / total[k] if "official_dgpo" in total else None
        r["vs_dgpo"] = total["dgpo"] / total[k] if "dgpo" in total else None
        cells = [f"{r[x]:.2f}x" if r[x] else "-" for x in ("vs_official", "vs_dgpo")]
        mem, comp = r.get("peak_memory_gib"), r.get("compile_s")
        lines.append(f"{k:<16}{total[k]:>10.4f}{cells[0]:>13}{cells[1]:>9}{'-' if mem is None else f'{mem:.1f}':>10}"
                     f"{'-' if comp is None else f'{comp:.0f}':>11}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--arms", default="", help=f"comma-separated subset of {', '.join(ARMS)} (default: all)")
    ap.add_argument("--epochs", type=int, default=3, help="dgpo arms: epochs (the first is warm-up)")
    ap.add_argument("--iters", type=int, default=2, help="the official arm: timed iterations after one warm-up")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip the arms that would start after this")
    ap.add_argument("--out", default="bench_results/levers_gpu.json")
    a = ap.parse_args()
    arms = a.arms.split(",") if a.arms else list(TINY_DEFAULT if a.tiny else ARMS)
    bad = [x for x in arms if x not in ARMS]
    if bad:
        raise SystemExit(f"unknown arm(s) {bad}; allowed: {', '.join(ARMS)}")
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    t_start = time.perf_counter()
    sd.S = sd.TINY if a.tiny else sd.FULL
    if a.tiny:
        dry_graphs_on_cpu()
    pipe, n_params = sd.build_pipeline(device)
    template = pipe.transformer
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "tiny": a.tiny, "torch": torch.__version__,
              "transformer_params": n_params, "samples_per_iteration": sd.PROMPTS * sd.S["group"],
              "flops": sd.iteration_flops(), "arms": {}, "skipped": []}
    for arm in arms:
        if time.perf_counter() - t_start > a.budget_s:
            result["skipped"].append(arm)
            continue
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        print(f"== {arm} (at {t0 - t_start:.0f} s)", flush=True)
        try:
            r = run_arm(arm, pipe, template, device, a, cuda)
        except Exception as e:  # one failing lever must not lose the others' figures
            r = {"error": f"{type(e).__name__}: {e}"}
            pipe.transformer = template
        r["arm_wall_s"] = time.perf_counter() - t0
        r["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        if "seconds_per_sample" in r:
            r["achieved_tflops"] = result["flops"]["iteration_per_sample"] / r["seconds_per_sample"]["total"] / 1e12
        result["arms"][arm] = r
        gc.collect()
        result["table"] = summarize(result)
        write_result(result, a.out)
    print("\n".join(result["table"] if result["arms"] else ["no arm ran"]))


if __name__ == "__main__":
    main()
