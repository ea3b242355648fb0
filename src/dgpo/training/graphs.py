"""CUDA graphs for the rollouts' velocity calls (``train.cuda_graphs``).

A rollout calls the denoiser 10-40 times with the same shapes (the CFG batch of a chunk), no gradient
and the same weights. :class:`StaticCalls` records each such call once per input signature into a CUDA
graph and replays it afterwards: the host launches one graph instead of the forward's hundreds of
kernels (and, compiled, skips the compiled regions' guard checks). Inputs are copied into the graph's
static tensors before each replay; the output is cloned after it (a multistep solver keeps earlier
outputs). Weights are read where they live: the optimizer and the EMA 'old' swap update them in place,
so a graph sees them change. What a graph cannot see (the LoRA switch of the reference, the frozen copy
of full fine-tuning, autocast) is part of its key, so each state has its own graph.

On a machine without CUDA the trainer does not wrap the calls (a one-line note says so);
``StaticCalls(capture=False)`` runs the same bookkeeping without graphs, which is how the CPU tests check
it (the same outputs as the plain calls, bit for bit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from contextlib import nullcontext

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

log = logging.getLogger(__name__)

WARMUP = 2  # calls on a side stream before capture: compilation, cuBLAS workspaces, lazy initialisation
MAX_GRAPHS = 8  # input signatures x states recorded; later ones run without a graph (each holds activations)


def _autocast_key() -> tuple:
    return tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cuda", "cpu"))


class StaticCalls:
    """``fn(*args)`` (tensors in nested lists / dicts, a tensor out) replayed from a CUDA graph per input
    signature and ``state()``; calls with grad enabled, or with non-tensor leaves, run plainly.
    ``capture=False`` keeps the static inputs and outputs but calls ``fn`` instead of a graph."""

    def __init__(self, fn: Callable, state: Callable[[], Hashable] = lambda: None, capture: bool = True,
                 max_graphs: int = MAX_GRAPHS):
        self.fn, self.state, self.capture, self.max_graphs = fn, state, capture, max_graphs
        self.entries: dict = {}
        self.failed: set = set()
        self.pool = None
        self.stats = {"recorded": 0, "replays": 0, "plain": 0, "errors": []}

    def __call__(self, *args):
        leaves, spec = tree_flatten(args)
        if torch.is_grad_enabled() or not leaves or not all(isinstance(x, torch.Tensor) for x in leaves):
            return self._plain(args)
        key = (spec, tuple((x.shape, x.stride(), x.dtype, x.device) for x in leaves), _autocast_key(), self.state())
        entry = self.entries.get(key)
        if entry is None:
            if key in self.failed or len(self.entries) >= self.max_graphs:
                return self._plain(args)
            entry = self._record(key, leaves, spec)
            if entry is None:
                return self._plain(args)
        static_in, replay, out = entry
        torch._foreach_copy_(static_in, leaves)
        replay()
        self.stats["replays"] += 1
        return out.clone()

    def _plain(self, args):
        self.stats["plain"] += 1
        return self.fn(*args)

    def _record(self, key, leaves: list, spec):
        static_in = [x.clone() for x in leaves]
        call = lambda: self.fn(*tree_unflatten(static_in, spec))  # noqa: E731
        try:
            replay, out = self._graph(call) if self.capture else self._dry(call)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the call returned {type(out).__name__}, not a tensor")
        except Exception as e:  # the run goes on without a graph for this signature
            self.failed.add(key)
            self.stats["errors"].append(f"{type(e).__name__}: {e}"[:300])
            log.warning("train.cuda_graphs: recording a rollout call failed (%s: %s); that call runs without a "
                        "graph", type(e).__name__, str(e)[:200])
            return None
        self.entries[key] = (static_in, replay, out)
        self.stats["recorded"] += 1
        return self.entries[key]

    @staticmethod
    def _dry(call):
        out = call()
        return (lambda: out.copy_(call())), out

    def _graph(self, call):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _uncached_autocast():
            for _ in range(WARMUP):
                call()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.pool = self.pool if self.pool is not None else torch.cuda.graph_pool_handle()
        # thread_local: the reward thread decodes and scores earlier chunks meanwhile (reward.overlap)
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"), _uncached_autocast():
            out = call()
        return graph.replay, out


def _uncached_autocast():
    """Autocast as it is, without its cache of cast weights: a cast made during capture lives in the
    graph's memory, which later replays overwrite (PyTorch's rule for graphs under autocast)."""
    if not torch.is_autocast_enabled("cuda"):
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
