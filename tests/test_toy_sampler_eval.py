"""benchmarks/studies/toy_sampler_eval.py: Flow-GRPO's SDE sampler in eval, and the ODE/SDE x split table."""

from __future__ import annotations

import pytest
import torch

from dgpo.evaluation import model_image_fn
from dgpo.toy.grammar import CATEGORIES
from dgpo.training.export import load_any

from benchmarks.studies import toy_sampler_eval as tse

pytestmark = pytest.mark.slow  # make test-all (CI); not in the fast tier

METAS = [{"prompt": "a photo of a red circle"}, {"prompt": "a photo of two blue squares"}]


def test_sde_without_noise_is_the_euler_ode_and_seeds_fix_the_noise():
    model = load_any("")
    euler = model_image_fn(model, 10, model.default_shift(), 4.5, "euler")(METAS, [3, 4])
    assert torch.allclose(tse.sde_image_fn(model, 0.0)(METAS, [3, 4]), euler, atol=1e-5)
    noisy = tse.sde_image_fn(model, 0.7)
    a, b = noisy(METAS, [3, 4]), noisy(METAS, [3, 4])
    assert torch.equal(a, b) and (a - euler).abs().max() > 0.05
    assert torch.allclose(noisy(METAS[:1], [3])[0], a[0], atol=1e-4)  # nor on the batch it sits in


def test_run_tabulates_every_model_split_and_sampler():
    out = tse.run({"base": ""}, per_cat=1, noise=0.7)
    res = out["results"]["base"]
    assert set(res) == {"toy:test", "toy:train"} and all(set(r) == {"ode", "sde"} for r in res.values())
    assert set(CATEGORIES) <= set(res["toy:test"]["ode"])  # the held-out split has every category
    for split in res.values():
        for row in split.values():
            cats = [row[c] for c in CATEGORIES if c in row]
            assert abs(row["overall"] - sum(cats) / len(cats)) < 1e-9 and 0 <= row["reward"] <= 1
