"""DGPO on a video model end to end: the toy video world's model trains through the one loop, the
shared noise and the loss cover every frame, and the run shows its samples as animated grids."""

import json

import pytest
import torch

from dgpo.config import load_config
from dgpo.testing.toy import tiny_video_checkpoint
from dgpo.training.trainer import Trainer

SMALL = ["run.epochs=2", "run.sample_every=0", "run.log_with=tensorboard", "train.prompts_per_epoch=2",
         "train.group_size=4", "train.batch_size=4", "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2",
         "sampler.steps=3", "timesteps.trunc_steps=2", "timesteps.count=2", "eval.max_prompts=4",
         "eval.batch_size=4", "eval.min_per_category=0", "train.prompts=toy_video:train", "eval.split=toy_video:test",
         "reward.name=toy_video", "model.kind=toy_video"]


@pytest.fixture
def tiny_video(tmp_path):
    return tiny_video_checkpoint(tmp_path / "tiny_video")


# DGPO on the toy video scorer; the others on an image reward applied to every frame (reward.frames), whose
# scores spread even for a random model (Flow-GRPO drops zero-advantage groups)
@pytest.mark.parametrize("algo,reward", [("dgpo", ["reward.name=toy_video"]), *(
    pytest.param(a, ["reward.name=jpeg_incompressibility", "reward.frames=all"], marks=pytest.mark.slow)
    for a in ("nft", "flow_grpo"))])
def test_a_video_model_trains_and_its_run_shows_animated_grids(tiny_video, tmp_path, algo, reward):
    cfg = load_config(None, [f"model.path={tiny_video}", f"run.out_dir={tmp_path / 'run'}", *SMALL,
                             f"train.algorithm={algo}", *reward])
    tr = Trainer(cfg)
    assert tr.modality == "video" and tr.model.latent_shape() == (3, 5, 32, 32)
    start = [p.detach().clone() for p in tr.policy.params]
    summary = tr.fit()
    assert summary["steps"] >= 2 and all(torch.isfinite(p).all() for p in tr.policy.params)
    assert any(not torch.equal(a, p) for a, p in zip(start, tr.policy.params))
    samples = tmp_path / "run" / "samples"
    for name in ("before", "after", "compare"):
        assert (samples / f"{name}.gif").stat().st_size > 0
    evals = [json.loads(line) for line in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()]
    assert len(evals) == 2 and {"overall"} <= set(evals[0])
    if algo == "dgpo":  # the animated grid reached TensorBoard as an image summary
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
        events.Reload()
        assert {"samples/before", "samples/after", "samples/compare"} <= set(events.Tags()["images"])
        gif = events.Images("samples/compare")[-1].encoded_image_string
        assert gif[:6] in (b"GIF87a", b"GIF89a")  # the animated grid itself


def test_the_shared_noise_of_a_group_has_the_videos_shape():
    from dgpo.timesteps import shared_noise

    eps = shared_noise((3, 5, 32, 32), torch.tensor([0, 0, 1]), 0, 0, 0)
    assert eps.shape == (3, 3, 5, 32, 32) and torch.equal(eps[0], eps[1]) and not torch.equal(eps[0], eps[2])
