"""The README's Python API: a Trainer from a config with the user's own reward function, and the same
function named in YAML as ``reward.name: "package.module:function"``."""

import textwrap

import pytest
import torch

from dgpo.config import load_config
from dgpo.training.trainer import Trainer

SMALL = ["run.epochs=2", "run.eval_at_ends=false", "run.sample_every=0", "run.log_with=none",
         "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=4", "train.lora_rank=4",
         "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=4", "timesteps.trunc_steps=2", "timesteps.count=2"]


def brightness(images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
    """Mean pixel value of each image: a reward the toy model can move."""
    return images.mean(dim=(1, 2, 3))


def test_a_trainer_takes_a_python_reward_function(tiny_toy, tmp_path):
    seen, scores = [], []

    def reward(images, metas):
        seen.append((tuple(images.shape), len(metas), metas[0]["prompt"]))
        scores.append(brightness(images, metas))
        return scores[-1]

    cfg = load_config(None, [f"model.path={tiny_toy}", f"run.out_dir={tmp_path / 'run'}", *SMALL])
    tr = Trainer(cfg, reward=reward)
    tr.fit()
    rows = tr.metrics.read()
    assert len(rows) == 2 and seen and all(n == shape[0] for shape, n, _ in seen)
    assert seen[0][0][1:] == (3, *seen[0][0][2:]) and isinstance(seen[0][2], str)
    # the logged reward is the function's mean over the first epoch's 2 x 4 images
    assert abs(rows[0]["reward_mean"] - float(torch.cat(scores)[:8].mean())) < 1e-6


def test_yaml_names_the_reward_as_package_module_function(tiny_toy, tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent('''
        CALLS = []

        def brightness(images, metas):
            CALLS.append(len(metas))
            return images.mean(dim=(1, 2, 3))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "run.yaml").write_text("reward:\n  name: my_rewards:brightness\n")
    cfg = load_config(tmp_path / "run.yaml", [f"model.path={tiny_toy}", f"run.out_dir={tmp_path / 'run'}", *SMALL])
    assert cfg.reward.name == "my_rewards:brightness"
    tr = Trainer(cfg)
    tr.fit()
    import my_rewards

    assert sum(my_rewards.CALLS) == 2 * 8  # every rollout of both epochs scored by the user's function
    assert (tmp_path / "run" / "config.yaml").read_text().count("my_rewards:brightness") == 1


def test_a_video_reward_on_an_image_model_is_a_clear_error_before_training(tiny_toy, tmp_path):
    from dgpo.errors import InputError

    cfg = load_config(None, [f"model.path={tiny_toy}", f"run.out_dir={tmp_path / 'run'}", *SMALL,
                             "reward.name=toy_video"])
    with pytest.raises(InputError, match="video") as e:
        Trainer(cfg)
    assert "toy_video" in str(e.value) and not (tmp_path / "run" / "metrics.jsonl").exists()
