"""How much of one optimizer step's gradient is signal: the cosine between the step gradients of
(a) independent epochs (other prompts, rollouts, noise) and (b) the same rollouts with other
training noise and timesteps. Pure noise gives cosines around 0 and a norm of the mean of K
gradients of 1/sqrt(K) times their mean norm.

Usage: python -m benchmarks.studies.toy_grad_snr [--k 4] [key=value ...]   (the toy demo config by default)
Writes bench_results/toy_grad_snr.json.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile

import torch

from dgpo.advantages import group_advantages
from dgpo.config import load_config
from dgpo.data.prompts import epoch_prompts
from dgpo.training.trainer import Trainer

from benchmarks.common import write_result


def step_gradient(tr: Trainer, batch: dict, rewards: torch.Tensor, key: int) -> torch.Tensor:
    """The flattened gradient of one optimizer step over the whole batch (no update)."""
    c = tr.cfg
    gids = torch.arange(batch.n_total) // c.train.group_size
    adv, zero = group_advantages(rewards, gids, c.advantages.std, clip_max=c.advantages.clip_max)
    _, signal = tr.algo.select(batch, rewards, adv, zero, gids)
    units, idx = tr.algo.units(batch, key, 0), torch.arange(batch.n_total)
    tr.opt.zero_grad(set_to_none=True)
    for slot, unit in enumerate(units):
        for mb in tr.algo.micro_batches(batch.group_ids, idx):
            out = tr.algo.micro_loss(batch, signal, mb, unit, slot, key)
            (out.loss_sum / (len(idx) * len(units))).backward()
    return torch.cat([p.grad.flatten() for p in tr.policy.params if p.grad is not None]).clone()


def rollout(tr: Trainer, epoch: int) -> tuple[dict, torch.Tensor]:
    c = tr.cfg
    metas = epoch_prompts(tr.prompts, c.train.prompts_per_epoch, c.run.seed, epoch, c.train.balance_categories)
    batch = tr.algo.rollout(metas, epoch, 0)
    return batch, tr.reward_fn(tr.model.decode(batch.x0), batch.metas).float().cpu()


def agreement(grads: list[torch.Tensor]) -> dict:
    cos = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in itertools.combinations(grads, 2)]
    mean_norm = float(torch.stack([g.norm() for g in grads]).mean())
    if mean_norm == 0:
        raise ValueError("every gradient is zero (constant rewards?): nothing to compare")
    return {"cosines": cos, "mean_cosine": sum(cos) / len(cos),
            "norm_of_mean_over_mean_norm": float(torch.stack(grads).mean(0).norm()) / mean_norm,
            "pure_noise_ratio": len(grads) ** -0.5}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=4, help="gradients per comparison")
    ap.add_argument("--out", default="bench_results/toy_grad_snr.json")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(load_config(None, [f"run.out_dir={tmp}", *a.overrides]))
        rolls = [rollout(tr, e) for e in range(a.k)]
        independent = [step_gradient(tr, b, r, e) for e, (b, r) in enumerate(rolls)]
        same = [step_gradient(tr, *rolls[0], 1000 + e) for e in range(a.k)]
    write_result({"k": a.k, "overrides": a.overrides, "independent_epochs": agreement(independent),
                  "same_rollouts_other_noise": agreement(same)}, a.out)


if __name__ == "__main__":
    main()
