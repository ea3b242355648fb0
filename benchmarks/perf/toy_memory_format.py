"""Toy UNet forward and forward+backward time, contiguous vs channels-last, side by side in one run.

Usage: python -m benchmarks.perf.toy_memory_format [--batch 128] [--repeats 5]
Writes bench_results/toy_memory_format.json and prints seconds per call and the ratio.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from dgpo.toy.model import tokenize
from dgpo.toy.weights import load_toy

from benchmarks.common import write_result


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (kernel selection)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="bench_results/toy_memory_format.json")
    a = ap.parse_args()
    torch.manual_seed(0)
    x, t = torch.randn(a.batch, 3, 32, 32), torch.rand(a.batch)
    nets = {"contiguous": load_toy(), "channels_last": load_toy().to(memory_format=torch.channels_last)}
    with torch.no_grad():
        prompts = ["a photo of a red circle left of a blue square"] * a.batch
        text = nets["contiguous"].text_encoder(tokenize(prompts, 16))
    result: dict = {"batch": a.batch, "torch_threads": torch.get_num_threads(),
                    "machine": platform.processor() or platform.machine()}
    outs = {}
    for name, net in nets.items():
        xin = x.contiguous(memory_format=torch.channels_last) if name == "channels_last" else x

        def fwd(net=net, xin=xin):
            with torch.no_grad():
                return net(xin, t, text)

        def fwd_bwd(net=net, xin=xin):
            net.zero_grad(set_to_none=True)
            net(xin, t, text).pow(2).mean().backward()

        outs[name] = fwd()
        result[name] = {"forward_s": timed(fwd, a.repeats), "forward_backward_s": timed(fwd_bwd, a.repeats)}
    result["max_abs_diff"] = float((outs["contiguous"] - outs["channels_last"]).abs().max())
    result["speedup"] = {k: result["contiguous"][k] / result["channels_last"][k] for k in result["contiguous"]}
    write_result(result, a.out)


if __name__ == "__main__":
    main()
