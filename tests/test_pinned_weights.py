"""Refactors must not change behaviour: two epochs of each algorithm on a small random toy (seed 0, one
thread) end in weights whose SHA-256 digests were recorded before the loop's interfaces were rebuilt
(`python tests/test_pinned_weights.py --record` writes them anew after an intended change)."""

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from dgpo.config import load_config
from dgpo.training.trainer import Trainer

PINS = Path(__file__).parent / "data" / "pinned_weights.json"
COMMON = ("run.epochs=2", "run.sample_every=0", "run.save_every=0", "run.eval_at_ends=false",
          "run.log_with=none", "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=4",
          "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=4",
          "timesteps.trunc_steps=2", "timesteps.count=2", "dgpo.switch_ema_ref=0",
          "reward.name=jpeg_incompressibility")
RUNS = {
    "dgpo": ("train.algorithm=dgpo", "dgpo.kl_beta=0.1", "train.text_dropout=0.3"),
    "dgpo_uniform_refbatch": ("train.algorithm=dgpo", "timesteps.mode=uniform", "timesteps.t_min_end=0.3",
                              "train.reference_batch_size=3", "dgpo.clip_kl=true"),
    "flow_grpo": ("train.algorithm=flow_grpo", "grpo.clip_range=0.2", "train.steps_per_epoch=2"),
    "flow_grpo_fast": ("train.algorithm=flow_grpo", "grpo.sde_window=2", "grpo.sde_window_range=3",
                       "grpo.kl_beta=0.1", "train.sampling_batches=2"),
    "dpo": ("train.algorithm=dpo", "dpo.beta=50"),
    "dpo_online": ("train.algorithm=dpo", "dpo.ref_update_every=1", "dpo.beta=50"),
    "nft": ("train.algorithm=nft", "nft.kl_beta=0.1", "nft.decay_rate=0.2", "train.steps_per_epoch=2"),
}


def digests(tiny: Path, out: Path, name: str) -> dict[str, str]:
    torch.set_num_threads(1)
    cfg = load_config(None, [f"model.path={tiny}", f"run.out_dir={out / name}", *COMMON, *RUNS[name]])
    tr = Trainer(cfg)
    tr.fit()
    tensors = {"policy": tr.policy.params, "old": tr.algo.old_model.shadow, "slow": tr.ema_slow.shadow}
    h = hashlib.sha256()
    for key in sorted(tensors):
        for t in tensors[key]:
            h.update(t.detach().float().contiguous().numpy().tobytes())
    return {"weights": h.hexdigest(), "steps": str(tr.step)}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_two_epochs_end_in_the_recorded_weights(tiny_toy, tmp_path, name):
    assert digests(tiny_toy, tmp_path, name) == json.loads(PINS.read_text())[name]


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:  # pragma: no cover
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_toy  # noqa: E402

    with tempfile.TemporaryDirectory() as d:
        tiny = tiny_toy.__wrapped__(Path(d))
        PINS.write_text(json.dumps({n: digests(tiny, Path(d), n) for n in sorted(RUNS)}, indent=1) + "\n")
