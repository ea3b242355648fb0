"""Toy models evaluated with the deterministic ODE and with Flow-GRPO's SDE, on held-out and on training
prompts, side by side: where a run's training reward comes from (its sampler, its prompts) and whether
it carries over to the held-out ODE eval that `dgpo bench` reports.

Usage:
  OMP_NUM_THREADS=2 python -m benchmarks.studies.toy_sampler_eval --model base= \
      --model flow_grpo=runs/bench/runs/flow_grpo__s0 --model dgpo=runs/bench/runs/dgpo__s0 \
      [--per-category 40] [--noise 0.7] [--out bench_results/toy_sampler_eval.json]

A model spec is what `dgpo eval --model` takes ('' = the shipped toy base; a run folder = its slow-EMA
weights). ODE: 10-step DPM-Solver++ (the eval's sampler); SDE: Flow-GRPO's rollout sampler (10 Euler
steps on the flow grid, every step stochastic at --noise). Both with CFG 4.5 and the same seeds. Scores:
strict toy-GenEval per category and overall, and the partial-credit reward the toy training uses.
"""

from __future__ import annotations

import argparse

import torch

from dgpo.data.prompts import load_prompts
from dgpo.evaluation import evaluate, model_image_fn, per_category
from dgpo.models.base import cfg_velocity
from dgpo.samplers.rollout import initial_noise
from dgpo.samplers.sde import sample_sde
from dgpo.toy.grammar import CATEGORIES
from dgpo.training.export import load_any

from benchmarks.common import write_result

SPLITS = ("toy:test", "toy:train")


def sde_image_fn(model, noise: float, steps: int = 10, cfg_scale: float = 4.5):
    """Images from Flow-GRPO's rollout sampler (SDE on the Euler flow grid, all steps stochastic)."""
    grid = model.rollout_grid("euler", steps, model.default_shift())

    def fn(metas: list[dict], seeds: list[int]) -> torch.Tensor:
        cond = model.encode_prompts([m["prompt"] for m in metas])
        null = model.encode_prompts([""] * len(metas))
        x = initial_noise(model.latent_shape(), seeds).to(getattr(model, "device", "cpu"))
        velocity = lambda x_t, t: cfg_velocity(model, x_t, t, cond, null, cfg_scale)
        step_seeds = [s + 1 for s in seeds]  # the step noise: its own stream, not the initial noise's
        return model.decode(sample_sde(velocity, x, grid, noise, step_seeds).x0)

    return fn


def run(models: dict[str, str], per_cat: int, noise: float, seed: int = 0) -> dict:
    out = {"settings": {"per_category": per_cat, "sde_noise": noise, "steps": 10, "cfg_scale": 4.5,
                        "seed": seed, "models": models}, "results": {}}
    for name, spec in models.items():
        model = load_any(spec)
        samplers = {"ode": model_image_fn(model, 10, model.default_shift(), 4.5, "dpm"),
                    "sde": sde_image_fn(model, noise)}
        for split in SPLITS:
            metas = per_category(load_prompts(split), per_cat)
            for sampler, fn in samplers.items():
                r = evaluate(fn, metas, 1, seed, 64, f"{name} {split} {sampler}", per_cat)
                row = {"overall": r["overall"], "reward": r["reward"], "n_images": r["n_images"],
                       **{c: r[c] for c in CATEGORIES if c in r}}
                out["results"].setdefault(name, {}).setdefault(split, {})[sampler] = row
                print(f"{name:24s} {split:10s} {sampler}: strict {r['overall']:.3f}  reward {r['reward']:.3f}",
                      flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=SPEC",
                   help="a model to evaluate (repeatable); SPEC as `dgpo eval --model` ('' = the toy base)")
    p.add_argument("--per-category", type=int, default=40, help="prompts (and at least images) per category")
    p.add_argument("--noise", type=float, default=0.7, help="the SDE's noise level (Flow-GRPO's default 0.7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_results/toy_sampler_eval.json")
    a = p.parse_args()
    models = {}
    for item in a.model:
        name, sep, spec = item.partition("=")
        if not sep or not name:
            p.error(f"--model {item!r}: expected NAME=SPEC (SPEC may be empty for the toy base)")
        models[name] = spec
    write_result(run(models, a.per_category, a.noise, a.seed), a.out)


if __name__ == "__main__":
    main()
