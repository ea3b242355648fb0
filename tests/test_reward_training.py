"""Rewards in training: overlapped chunk scoring equals sequential scoring, the weighted multi-reward is
logged per component, and a run with the remote reward equals the in-process run."""

import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from dgpo.config import load_config
from dgpo.rewards.server import RewardServer
from dgpo.training.scoring import ChunkScorer
from dgpo.training.trainer import Trainer


def _cfg(tiny, out, *extra):
    return load_config(None, [
        f"model.path={tiny}", f"run.out_dir={out}", "run.epochs=2", "run.sample_every=0", "run.save_every=0",
        "run.eval_at_ends=false", "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=4",
        "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=3", "timesteps.trunc_steps=2",
        "timesteps.count=2", "dgpo.switch_ema_ref=0", "eval.max_prompts=4", "eval.batch_size=8",
        "reward.name=jpeg_incompressibility", *extra])


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _policy(out):
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    return load_file(str(ckpt / "policy.safetensors"))


def test_chunk_scoring_runs_while_the_next_chunk_is_generated():
    scoring_started = threading.Event()
    calls = []

    def reward(images, metas):
        calls.append((threading.current_thread().name, len(images)))
        scoring_started.set()
        return images.flatten(1).mean(1)

    chunks = [torch.rand(3, 3, 4, 4) for _ in range(3)]
    with ChunkScorer(reward, lambda x: x * 1.0, overlap=True) as scoring:
        for i, x in enumerate(chunks):
            if i == 1:  # "generating" chunk 1: chunk 0 is being scored meanwhile, in another thread
                assert scoring_started.wait(10)
            scoring.submit(x, [{"prompt": "p"}] * 3)
        overlapped, _ = scoring.result()
    assert all(name.startswith("dgpo-reward") for name, _ in calls) and [n for _, n in calls] == [3, 3, 3]
    with ChunkScorer(reward, lambda x: x * 1.0, overlap=False) as scoring:
        for x in chunks:
            scoring.submit(x, [{"prompt": "p"}] * 3)
        sequential, _ = scoring.result()
    assert calls[-1] == (threading.current_thread().name, 9)  # one call after the rollout, in this thread
    assert torch.equal(overlapped, sequential)


def test_a_failing_chunk_stops_the_rollout_early():
    def reward(images, metas):
        raise ValueError("scorer down")

    with ChunkScorer(reward, lambda x: x, overlap=True) as scoring:
        scoring.submit(torch.rand(2, 3, 4, 4), [{}, {}])
        scoring._futures[0].exception(timeout=10)  # wait until chunk 0 has failed
        with pytest.raises(ValueError, match="scorer down"):
            scoring.submit(torch.rand(2, 3, 4, 4), [{}, {}])


@pytest.mark.parametrize("algo", ["dgpo", "flow_grpo"])
def test_overlapped_scoring_trains_exactly_like_sequential_scoring(tiny_toy, tmp_path, algo):
    runs = {}
    for overlap in (True, False):
        out = tmp_path / f"o{overlap}"
        Trainer(_cfg(tiny_toy, out, f"train.algorithm={algo}", f"reward.overlap={overlap}",
                     "grpo.clip_range=0.2")).fit()
        runs[overlap] = (_rows(out), _policy(out))
    (rows_a, pol_a), (rows_b, pol_b) = runs[True], runs[False]
    assert [r["reward_mean"] for r in rows_a] == [r["reward_mean"] for r in rows_b]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert all(torch.equal(pol_a[k], pol_b[k]) for k in pol_a)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["weighted_sum", "per_component"])
def test_multi_reward_run_logs_every_component(tiny_toy, tmp_path, mode):
    out = tmp_path / "multi"
    summary = Trainer(_cfg(tiny_toy, out, "run.epochs=1", "run.eval_at_ends=true",
                           "reward.name=[jpeg_incompressibility,toy_geneval]", "reward.weights=[0.5,2.0]",
                           f"advantages.combine={mode}")).fit()
    row = _rows(out)[0]
    assert row["reward_mean"] == pytest.approx(0.5 * row["reward_jpeg_incompressibility_mean"]
                                               + 2.0 * row["reward_toy_geneval_mean"], abs=1e-5)
    assert row["reward_toy_geneval_std"] >= 0
    after = summary["eval_after"]
    assert {"reward_jpeg_incompressibility", "reward_toy_geneval", "overall", "single_object"} <= set(after)
    assert after["reward"] == pytest.approx(0.5 * after["reward_jpeg_incompressibility"]
                                            + 2.0 * after["reward_toy_geneval"], abs=1e-5)
    assert 0.0 <= after["overall"] <= 1.0  # strict toy GenEval accuracy, from the toy_geneval component


@pytest.mark.slow
def test_training_with_the_remote_reward_equals_the_in_process_reward(tiny_toy, tmp_path, monkeypatch):
    from dgpo.rewards import build_reward

    token = "remote-training-token-0123456789"
    monkeypatch.setenv("DGPO_TEST_TOKEN", token)
    Trainer(_cfg(tiny_toy, tmp_path / "local")).fit()
    with RewardServer(build_reward("jpeg_incompressibility"), "jpeg_incompressibility", token=token) as srv:
        # JPEG sizes of 8-bit images: the PNG on the wire carries exactly what the local reward encodes
        Trainer(_cfg(tiny_toy, tmp_path / "remote", "reward.name=remote", f"reward.url={srv.url}",
                     "reward.token_env=DGPO_TEST_TOKEN")).fit()
        served = srv.app.served
    assert served == 2 * 2  # 2 epochs x 2 rollout chunks of 4 images, one request each
    local, remote = _rows(tmp_path / "local"), _rows(tmp_path / "remote")
    assert [r["reward_mean"] for r in local] == [r["reward_mean"] for r in remote]
    pol_l, pol_r = _policy(tmp_path / "local"), _policy(tmp_path / "remote")
    assert all(torch.equal(pol_l[k], pol_r[k]) for k in pol_l)
