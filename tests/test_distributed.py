"""Groups split across processes: 2-process (gloo, CPU) training equals 1-process training."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from dgpo.config import load_config
from dgpo.losses.dgpo import dgpo_loss
from dgpo.training.distributed import Layout
from dgpo.training.trainer import Trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _case():
    g = torch.Generator().manual_seed(0)
    n, groups = 8, 2
    return (torch.rand(n, generator=g), torch.rand(n, generator=g), torch.randn(n, generator=g),
            torch.arange(groups).repeat_interleave(n // groups))


def _split_worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    dsm, ref, adv, gids = _case()
    layout = Layout(2, rank)
    mine = layout.local_indices(2, 4)
    res = dgpo_loss(dsm[mine], ref[mine], adv[mine], gids[mine], 100.0, 4, layout.group_sum_fn(2))
    out[rank] = (mine, res.weight)
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_group_split_across_two_processes_gets_the_weights_of_the_whole_group():
    dsm, ref, adv, gids = _case()
    whole = dgpo_loss(dsm, ref, adv, gids, 100.0, 4).weight
    assert len(torch.unique(whole)) == 2  # one sigma(S_g) per group, and the groups differ
    out = mp.Manager().dict()
    mp.spawn(_split_worker, args=(_free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        mine, w = out[rank]
        assert len(mine) == 4 and set((mine % 4 % 2).tolist()) == {rank}  # 2 members of each group here
        assert torch.allclose(w, whole[mine], atol=0, rtol=1e-6)


def test_layout_gathers_in_global_order():
    layout = Layout(1, 0)
    idx = layout.local_indices(3, 4)
    assert torch.equal(idx, torch.arange(12))
    halves = [Layout(2, r).local_indices(3, 4) for r in (0, 1)]
    assert sorted(torch.cat(halves).tolist()) == list(range(12))
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        Layout(2, 0).check_group_size(3)


def _overrides(tiny, out, algo):
    return [f"model.path={tiny}", f"run.out_dir={out}", "run.epochs=2", "run.sample_every=0",
            "run.save_every=0", "run.eval_at_ends=false", "train.prompts_per_epoch=2", "train.group_size=4",
            "train.batch_size=8", "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2",
            "sampler.steps=3", "timesteps.trunc_steps=2", "timesteps.count=2", "dgpo.switch_ema_ref=0",
            "dgpo.kl_beta=0.1", "train.text_dropout=0.25", "grpo.clip_range=0.2", "dpo.beta=50",
            "reward.name=colorfulness", f"train.algorithm={algo}"]


@pytest.mark.parametrize("algo", ["dgpo", *(pytest.param(a, marks=pytest.mark.slow)
                                             for a in ("flow_grpo", "dpo", "nft"))])
def test_two_processes_train_the_same_adapter_as_one(tiny_toy, tmp_path, algo):
    Trainer(load_config(None, _overrides(tiny_toy, tmp_path / "one", algo))).fit()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "dgpo.cli", "train", *_overrides(tiny_toy, tmp_path / "two", algo)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_file(str(tmp_path / "one/checkpoints/step_000002/policy.safetensors"))
    two = load_file(str(tmp_path / "two/checkpoints/step_000002/policy.safetensors"))
    assert one.keys() == two.keys()
    moved = 0
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=0), (k, (one[k] - two[k]).abs().max())
        moved += int("lora_B" in k and bool(one[k].abs().sum() > 0))
    assert moved > 0  # training did something
    rows = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2  # one writer: the main process


@pytest.fixture(scope="module")
def tiny_pipes(tmp_path_factory):
    from tiny_diffusers import BUILDERS

    root = tmp_path_factory.mktemp("ddp_pipes")
    return {k: BUILDERS[k](root / k) for k in ("sd3", "flux", "sana", "qwenimage")}


def _pipe_overrides(kind, path, out):
    return [f"model.kind={kind}", f"model.path={path}", "model.resolution=64", "model.max_sequence_length=16",
            f"run.out_dir={out}", "run.epochs=1", "run.sample_every=0", "run.save_every=0", "run.eval_at_ends=false",
            "run.log_with=none", "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=8",
            "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=3", "timesteps.trunc_steps=1",
            "timesteps.count=1", "dgpo.kl_beta=0.1", "dgpo.clip_range=0.01", "reward.name=colorfulness"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sd3", "flux", "sana", "qwenimage"])
def test_two_processes_train_a_diffusers_model_like_one(tiny_pipes, tmp_path, kind):
    """DDP with the diffusers adapters (the training forwards go through the DDP wrapper, which has no
    .config or .dtype of its own): 2 processes end at the 1-process adapter. Qwen-Image trains two
    steps: a parameter without a gradient (its last block's text stream) stops DDP at the second."""
    steps = 2 if kind == "qwenimage" else 1
    extra = [f"run.epochs={steps}"]
    Trainer(load_config(None, [*_pipe_overrides(kind, tiny_pipes[kind], tmp_path / "one"), *extra])).fit()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "dgpo.cli", "train", *_pipe_overrides(kind, tiny_pipes[kind], tmp_path / "two"),
           *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_file(str(tmp_path / f"one/checkpoints/step_{steps:06d}/policy.safetensors"))
    two = load_file(str(tmp_path / f"two/checkpoints/step_{steps:06d}/policy.safetensors"))
    assert one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=0), (k, (one[k] - two[k]).abs().max())
    assert any("lora_B" in k and bool(one[k].abs().sum() > 0) for k in one)  # training did something


def _wan_overrides(path, out, prompts):
    # Wan2.2's two experts, uniform training times in [0.3, 1]: each micro-batch mixes samples of both
    # experts (one process may hold samples of one expert only: the other still gets zero gradients)
    return ["model.kind=wan", f"model.path={path}", "model.resolution=16", "model.width=32", "model.frames=5",
            "model.max_sequence_length=16", "model.guidance_scale_2=2.0", f"run.out_dir={out}", "run.epochs=2",
            "run.sample_every=0", "run.save_every=0", "run.eval_at_ends=false", "run.log_with=none",
            f"train.prompts={prompts}", "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=8",
            "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=3", "timesteps.mode=uniform",
            "timesteps.t_min=0.3", "timesteps.count=2", "dgpo.kl_beta=0.1",
            "reward.name=tiny_diffusers:video_brightness"]


@pytest.mark.slow
def test_two_processes_train_wan22_like_one(tmp_path):
    """DDP on Wan2.2's two experts (one network, each sample routed by its timestep): 2 processes end at the
    1-process adapters of both experts (DDP needs a gradient for every LoRA tensor at every backward)."""
    from pathlib import Path

    from tiny_diffusers import build_wan

    pipe = build_wan(tmp_path / "wan22", "2.2")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue ball on grass\na green sign\n")
    Trainer(load_config(None, _wan_overrides(pipe, tmp_path / "one", prompts))).fit()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "dgpo.cli", "train", *_wan_overrides(pipe, tmp_path / "two", prompts)]
    tests = str(Path(__file__).parent)  # the reward tiny_diffusers:video_brightness
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_file(str(tmp_path / "one/checkpoints/step_000002/policy.safetensors"))
    two = load_file(str(tmp_path / "two/checkpoints/step_000002/policy.safetensors"))
    assert one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=0), (k, (one[k] - two[k]).abs().max())
    for expert in (".transformer.", ".transformer_2."):  # training did something, to both experts
        assert any(expert in k and "lora_B" in k and bool(one[k].abs().sum() > 0) for k in one), expert
