"""Host (CPU) time that one DGPO iteration spends outside the transformer's own work, on the real
SD3.5-Medium module tree with LoRA r64 on the official targets, before and after dgpo's changes,
measured side by side in one run.

The network is built on the meta device (no memory, no compute): what is timed is Python and
dispatch work whose cost grows with the number of modules and tensors, not with their widths:

* entering and leaving the frozen reference: peft's ``disable_adapter()`` (walks every module and
  flips ``requires_grad`` on every LoRA tensor both ways) vs ``Policy.reference`` (flips the LoRA
  layers' switch);
* the compute dtype read before each forward: diffusers' ``ModelMixin.dtype`` (walks every module
  for casting hooks) vs the adapter's cached lookup;
* the EMA 'old' weights swapped in and out: a clone per tensor vs one multi-tensor copy (on CPU
  tensors of one element each, as many as the LoRA tensors: the per-tensor cost without the copy).

Per iteration (the benchmark's DGPO iteration: 10 rollout calls, each one CFG forward of batch 2B,
and 4 training timesteps x 3 forwards = 22 forwards; 4 reference and 4 EMA entries) the saved host
time is printed. On a GPU it shows where the host, not the GPU, is the bottleneck: at a sync, and
while the queue of launched kernels is shorter than the host's work.

``--compiled`` adds the forwards themselves, compiled by region as ``train.compile`` does, on a
24-layer SD3 of tiny widths (host-bound on a CPU, so the host's part shows): a plain no-grad forward,
the EMA 'old' forward, and the reference forward entered through the switch and through peft's
``disable_adapter()`` (whose ``requires_grad`` flips also change the guards the compiled blocks are
looked up by). About 3 minutes, most of it compiling.

Usage: python -m benchmarks.perf.host_overhead [--reps 20] [--compiled]
                                               [--out bench_results/host_overhead.json]
"""

from __future__ import annotations

import argparse
import platform
import time
from contextlib import contextmanager

import torch

from dgpo.models.sd3 import SD3_LORA_TARGETS
from dgpo.training.ema import OldModelEMA
from dgpo.training.policy import Policy

from benchmarks.common import write_result
from benchmarks.gpu.sd35m_gpu import SD35M

ROLLOUT_CALLS, TRAIN_T = 10, 4


class MetaSD3:
    """Just enough of a FlowModel for ``Policy``: the SD3.5-M transformer on the meta device."""

    lora_targets, frozen_prefixes = SD3_LORA_TARGETS, ()

    def __init__(self):
        from diffusers import SD3Transformer2DModel

        with torch.device("meta"):
            self.denoiser = SD3Transformer2DModel(**SD35M)


def per_call_ms(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


@contextmanager
def clone_swap(ema: OldModelEMA):
    """The EMA swap as it was: a clone per tensor to save the live weights."""
    live = [p.detach() for p in ema.params]
    saved = [t.clone() for t in live]
    torch._foreach_copy_(live, ema.shadow)
    try:
        yield
    finally:
        torch._foreach_copy_(live, saved)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--compiled", action="store_true", help="also time compiled forwards (about 3 minutes)")
    ap.add_argument("--out", default="bench_results/host_overhead.json")
    a = ap.parse_args()
    from dgpo.models.diffusers_common import DiffusersFlowModel

    model = MetaSD3()
    with torch.device("meta"):
        policy = Policy(model, lora_rank=64, lora_alpha=128)
    net = model.denoiser
    cached = DiffusersFlowModel.__new__(DiffusersFlowModel)  # only its dtype cache is used
    cached.denoiser, cached._dtypes = net, {}
    ema = OldModelEMA([torch.nn.Parameter(torch.zeros(1)) for _ in policy.params])

    def enter(ctx):
        def f():
            with torch.no_grad(), ctx():
                pass
        return f

    def dtype_read():
        return net.dtype

    calls = {
        "reference": (enter(policy.peft.disable_adapter), enter(policy.reference), TRAIN_T),
        "compute_dtype": (dtype_read, cached._compute_dtype, ROLLOUT_CALLS + 3 * TRAIN_T),
        "ema_swap": (enter(lambda: clone_swap(ema)), enter(ema.applied), TRAIN_T),
    }
    result = {"host": platform.processor() or platform.machine(), "torch": torch.__version__,
              "modules": sum(1 for _ in net.modules()), "lora_layers": len(policy._switches),
              "lora_tensors": len(policy.params), "calls": {}}
    saved = 0.0
    for name, (before, after, per_iter) in calls.items():
        b, n = per_call_ms(before, a.reps), per_call_ms(after, a.reps)
        result["calls"][name] = {"before_ms": b, "after_ms": n, "ratio": b / n, "per_iteration": per_iter}
        saved += (b - n) * per_iter
        print(f"{name:14s} {b:8.3f} ms -> {n:7.3f} ms  ({b / n:6.1f}x), {per_iter} per iteration", flush=True)
    result["saved_ms_per_iteration"] = saved
    print(f"host time saved per DGPO iteration: {saved:.0f} ms")
    if a.compiled:
        result["compiled_forwards_ms"] = compiled_forwards(a.reps)
    write_result(result, a.out)


def compiled_forwards(reps: int) -> dict:
    """Milliseconds per no-grad forward (batch 4) of a compiled 24-layer SD3 of tiny widths after one
    DGPO epoch of warm-up, each kind of call the best of two rounds."""
    import tempfile

    from dgpo.config import load_config
    from dgpo.training.trainer import Trainer

    import benchmarks.gpu.sd35m_gpu as bench

    bench.S = {**bench.TINY, "transformer": {**bench.TINY_SD3, "num_layers": 24,
                                             "dual_attention_layers": list(range(13))}}
    pipe, _ = bench.build_pipeline("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [
            "model.kind=sd3", "model.resolution=64", "model.max_sequence_length=16", "train.compile=true",
            f"run.out_dir={tmp}", "run.epochs=1", "run.sample_every=0", "run.save_every=0", "run.eval_at_ends=false",
            "run.log_with=none", "sampler.steps=4", "timesteps.trunc_steps=2", "timesteps.count=2",
            "reward.name=colorfulness", "train.lora_rank=64", "train.lora_alpha=128", "train.prompts_per_epoch=2",
            "train.group_size=2", "train.batch_size=4", "dgpo.kl_beta=0.02", "dgpo.clip_range=0.01"])
        tr = Trainer(cfg, model=bench.fresh_model(pipe, pipe.transformer, torch.float32, "cpu", cfg.model))
        tr.fit()  # compiles every variant the loop uses
    m = tr.model
    cond, x, t = m.encode_prompts(["a photo of a cat"] * 4), torch.randn(4, *m.latent_shape()), torch.full((4,), 700.0)

    def forward(ctx):
        def f():
            with torch.no_grad(), ctx():
                m.velocity(x, t, cond)
        return f

    arms = {"plain": forward(contextmanager(lambda: (yield))), "ema_old": forward(tr.algo.old_model.applied),
            "reference_switch": forward(tr.policy.reference), "reference_peft": forward(tr.policy.peft.disable_adapter)}
    out = {k: min(per_call_ms(f, reps) for _ in range(2)) for k, f in arms.items()}
    for k, v in out.items():
        print(f"compiled forward, {k:17s} {v:7.1f} ms", flush=True)
    return out


if __name__ == "__main__":
    main()
