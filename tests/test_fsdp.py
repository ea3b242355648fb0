"""FSDP2 (torch's fully_shard, accelerate's FSDP settings) on 2 CPU processes with gloo, launched by
``accelerate launch`` with the shipped FSDP2 config: full fine-tuning equals 1-process training, a
resumed run equals the uninterrupted one bit for bit; and the pieces that keep processes in lockstep."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from dgpo.advantages import refill_zero_advantage
from dgpo.config import load_config

pytestmark = pytest.mark.slow  # make test-all (CI); not in the fast tier

FSDP2_CONFIG = Path(__file__).parents[1] / "configs/accelerate/fsdp2_8gpu.yaml"
PARTS = ("policy", "ema_old", "ema_slow", "optimizer")
# measured: FSDP (2 processes) vs 1 process after 2 steps, max |difference| 1.8e-6 in the weights,
# 2.4e-9 in Adam's moments (DDP: 2.0e-6); the reduce-scatter sums gradients in another order
ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(tiny, out, lora_rank=0):
    return [f"model.path={tiny}", f"run.out_dir={out}", "run.epochs=2", "run.sample_every=0", "run.save_every=1",
            "run.eval_at_ends=true", "eval.max_prompts=3", "eval.min_per_category=0", "eval.batch_size=1",
            "eval.steps=2",
            "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=4", f"train.lora_rank={lora_rank}",
            "train.lora_alpha=8", "train.lr=1e-3", "train.ema_every=1", "sampler.steps=3", "timesteps.trunc_steps=2",
            "timesteps.count=2", "dgpo.switch_ema_ref=0", "dgpo.kl_beta=0.1", "train.text_dropout=0.25",
            "reward.name=colorfulness", "train.algorithm=dgpo"]


def _launch(args: list[str], resume: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP2_CONFIG),
           "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", str(_free_port()), "-m", "dgpo.cli", "train", *args,
           *(["--resume"] if resume else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _ckpt(run, step=2):
    return {p: load_file(str(run / f"checkpoints/step_{step:06d}/{p}.safetensors")) for p in PARTS}


def _metric(run, key):
    return [json.loads(r)[key] for r in (run / "metrics.jsonl").read_text().splitlines()]


def test_fsdp_full_fine_tuning_equals_one_process_and_resumes_bit_exactly(tiny_toy, tmp_path):
    from dgpo.training.trainer import Trainer  # here: the spawned workers below import this module

    Trainer(load_config(None, _overrides(tiny_toy, tmp_path / "one"))).fit()
    proc = _launch(_overrides(tiny_toy, tmp_path / "fsdp"))
    assert "FSDP2: ToyUNet sharded over 2 processes in 8 units" in proc.stderr  # 7 Stages + the root
    one, two = _ckpt(tmp_path / "one"), _ckpt(tmp_path / "fsdp")
    for part in PARTS:
        assert one[part].keys() == two[part].keys(), part  # the same files and keys as a 1-process run
        for k in one[part]:
            assert one[part][k].shape == two[part][k].shape
            assert torch.allclose(one[part][k], two[part][k], atol=ATOL, rtol=0), (part, k)
    step1 = _ckpt(tmp_path / "fsdp", 1)
    moved = sum(not torch.equal(step1["policy"][k], two["policy"][k]) for k in two["policy"])
    assert moved > 100  # full fine-tuning: nearly every tensor moved in step 2
    for key in ("loss", "grad_norm", "update_norm"):  # metrics: the same numbers (one writer)
        assert _metric(tmp_path / "one", key) == pytest.approx(_metric(tmp_path / "fsdp", key), rel=1e-4, abs=1e-9)
    evals = [[json.loads(r) for r in (run / "evals.jsonl").read_text().splitlines()]
             for run in (tmp_path / "one", tmp_path / "fsdp")]
    assert [e["overall"] for e in evals[0]] == pytest.approx([e["overall"] for e in evals[1]], rel=1e-6)

    # the FSDP checkpoint resumes in one process too (the same files): step 2 as the 1-process run's
    shutil.copytree(tmp_path / "fsdp", tmp_path / "cross")
    shutil.rmtree(tmp_path / "cross/checkpoints/step_000002")
    Trainer(load_config(None, _overrides(tiny_toy, tmp_path / "cross")), resume=True, change_processes=True).fit()
    cross = _ckpt(tmp_path / "cross")
    for part in PARTS:
        for k in one[part]:
            assert torch.allclose(one[part][k], cross[part][k], atol=ATOL, rtol=0), (part, k)

    # resume under FSDP from the step-1 checkpoint: the step-2 checkpoint is the uninterrupted one's
    shutil.copytree(tmp_path / "fsdp", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed/checkpoints/step_000002")
    _launch(_overrides(tiny_toy, tmp_path / "resumed"), resume=True)
    again = _ckpt(tmp_path / "resumed")
    for part in PARTS:
        for k in two[part]:
            assert torch.equal(again[part][k], two[part][k]), (part, k)


def test_fsdp_with_fp8_equals_one_process_with_fp8(tiny_toy, tmp_path):
    """train.fp8 under FSDP2 (the FP8 layers are made before sharding): 2 processes train like the
    1-process FP8 run (full fine-tuning of the toy: its attention and embedding linears run in FP8,
    its separately called text encoder does not)."""
    from dgpo.training.trainer import Trainer

    args = lambda run: [*_overrides(tiny_toy, run), "run.eval_at_ends=false", "train.fp8=rowwise"]  # noqa: E731
    tr = Trainer(load_config(None, args(tmp_path / "one")))
    from torchao.float8.float8_linear import Float8Linear

    fp8 = [n for n, m in tr.model.denoiser.named_modules() if isinstance(m, Float8Linear)]
    assert tr.fp8_info["fp8_linears"] == 2 * len(fp8) == 74  # the live network and the frozen reference copy
    assert not any(n.startswith("text_encoder.") for n in fp8) and "mid.attn.to_q" in fp8
    tr.fit()
    proc = _launch(args(tmp_path / "fsdp"))
    assert "FSDP2: ToyUNet sharded over 2 processes in 8 units" in proc.stderr
    from dgpo.toy.weights import load_toy

    one, two = _ckpt(tmp_path / "one")["policy"], _ckpt(tmp_path / "fsdp")["policy"]
    base = load_toy(tiny_toy).state_dict()
    assert one.keys() == two.keys() and set(one) <= set(base)
    update = lambda ckpt: torch.cat([(ckpt[k] - base[k]).flatten() for k in one])  # noqa: E731
    # FP8's dynamic scales are taken over each process's own rows, so the runs are not equal to float
    # rounding as without FP8: their 2-step updates agree to a cosine of 0.9999 (measured; FP8 against
    # exact: 0.982)
    assert torch.nn.functional.cosine_similarity(update(one), update(two), dim=0) > 0.999
    assert _metric(tmp_path / "one", "loss") == pytest.approx(_metric(tmp_path / "fsdp", "loss"), rel=1e-3)


def _sharding_worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", ACCELERATE_USE_FSDP="true", FSDP_VERSION="2")
    from accelerate import Accelerator
    from torch.distributed.tensor import DTensor

    from dgpo.training.distributed import Layout
    from dgpo.training.fsdp import Sharding, copy_full_, fsdp_plugin

    acc = Accelerator(cpu=True)  # MULTI_CPU (gloo): accelerate itself leaves FSDP off here
    res = {"type": acc.distributed_type.name}
    for key, value in (("FSDP_VERSION", "1"), ("FSDP_ACTIVATION_CHECKPOINTING", "true")):
        os.environ[key] = value
        try:
            fsdp_plugin(acc)
        except ValueError as e:
            res[key] = str(e)
        os.environ[key] = {"FSDP_VERSION": "2"}.get(key, "false")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    whole = {k: v.clone() for k, v in net.state_dict().items()}
    sh = Sharding.from_accelerator(acc)
    sh.shard(net, keep_whole=("2.",))  # the last layer stays whole (a frozen encoder's place)
    res.update(sharded=[k for k, p in net.named_parameters() if isinstance(p, DTensor)],
               local_rows=net[0].weight.to_local().shape[0])
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.randn(4, 3, generator=torch.Generator().manual_seed(rank))).square().sum().backward()
    opt.step()
    state = sh.optimizer_state(opt)  # gathered: whole moments on the main process
    res["gathered"] = {k: v for k, v in sh.gather(dict(net.named_parameters())).items()}
    res["moment_shape"] = tuple(state.state_dict()["state"][0]["exp_avg"].shape) if rank == 0 else None
    full_sd = [state.state_dict() if rank == 0 else None]
    dist.broadcast_object_list(full_sd)  # every process reads the same checkpoint
    before = net[0].weight.to_local().clone(), opt.state[net[0].weight]["exp_avg"].to_local().clone()
    for p in net.parameters():
        copy_full_(p, whole[[k for k, q in net.named_parameters() if q is p][0]])
    res["restored"] = torch.equal(net[0].weight.to_local(), whole["0.weight"].chunk(2)[rank])
    opt.state[net[0].weight]["exp_avg"].zero_()
    sh.optimizer_state(opt).load_state_dict(full_sd[0])
    res["moment_back"] = torch.equal(opt.state[net[0].weight]["exp_avg"].to_local(), before[1])
    try:
        Layout(2, rank).check_same(3 + rank, "micro-batches")
    except RuntimeError as e:
        res["mismatch"] = str(e)
    from dgpo.training.speed import compile_regions

    res["class"] = type(net).__name__  # fully_shard subclasses the module's class
    res["compiled"] = compile_regions(net, ["Sequential"])  # found through the MRO (never run here)
    out[rank] = res
    acc.end_training()  # destroys the process group


def test_sharding_gathers_whole_tensors_and_loads_them_back_into_shards_and_refuses_what_it_does_not_apply():
    out = mp.Manager().dict()
    mp.spawn(_sharding_worker, args=(_free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        r = out[rank]
        assert r["type"] == "MULTI_CPU"
        assert "FSDP version 1 is not supported: set fsdp_version: 2" in r["FSDP_VERSION"]
        assert "fsdp_activation_checkpointing is not applied" in r["FSDP_ACTIVATION_CHECKPOINTING"]
        assert r["sharded"] == ["0.weight", "0.bias"] and r["local_rows"] in (2, 3)  # 5 rows over 2 processes
        assert r["restored"] and r["moment_back"]
        assert "disagree on the number of micro-batches (from 3 to 4)" in r["mismatch"]
        assert r["class"] == "FSDPSequential" and r["compiled"] == 1  # train.compile finds sharded blocks
    assert out[1]["gathered"] == {} and out[0]["moment_shape"] == (5, 3)
    assert {k: tuple(v.shape) for k, v in out[0]["gathered"].items()} == {
        "0.weight": (5, 3), "0.bias": (5,), "2.weight": (2, 5), "2.bias": (2,)}


def test_equal_refill_gives_every_process_the_same_count():
    adv = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.5, 0.0, -0.5, 0.0])
    owner = torch.arange(12) % 4 % 2  # groups of 4 over 2 processes
    plain = refill_zero_advantage(adv, owner, 2, 1, torch.Generator().manual_seed(0))
    counts = [int((plain & (owner == r)).sum()) for r in (0, 1)]
    assert counts[0] != counts[1]  # the official refill leaves them unequal here
    equal = refill_zero_advantage(adv, owner, 2, 1, torch.Generator().manual_seed(0), equal=True)
    assert [int((equal & (owner == r)).sum()) for r in (0, 1)] == [max(counts)] * 2
    assert bool((equal | ~plain).all())  # only additions, from the dropped samples


def test_lockstep_eval_runs_the_same_batches_on_every_shard_and_keeps_the_rows():
    from dgpo.evaluation import evaluate

    metas = [{"prompt": f"p{i}", "tag": "reward"} for i in range(5)]
    calls: dict[tuple, int] = {}

    def score(images, batch):
        return [(1.0, float(int(m["prompt"][1:]) ** 2)) for m in batch]

    for lockstep in (False, True):
        for rank in (0, 1):
            def image_fn(batch, seeds, key=(lockstep, rank)):
                calls[key] = calls.get(key, 0) + 1
                return torch.full((len(batch), 3, 4, 4), 0.5)

            res = evaluate(image_fn, metas, 1, 0, 2, shard=(rank, 2), score_fn=score, lockstep=lockstep)
            assert res["reward"] == pytest.approx([20 / 3, 5.0][rank])  # rank 0: p0 p2 p4, rank 1: p1 p3
    assert calls[(False, 0)] == 2 and calls[(False, 1)] == 1  # 3 and 2 jobs in batches of 2
    assert calls[(True, 0)] == calls[(True, 1)] == 2


@pytest.mark.slow
def test_fsdp_wraps_wan22_and_equals_one_process(tmp_path):
    """FSDP2 shards Wan2.2's two experts as one network (units: every WanTransformerBlock of both, then the
    root), LoRA on both: every process runs both experts in every forward (an expert without samples on a
    dummy token), so the collectives stay in step, and 2 processes train the 1-process adapters."""
    from tiny_diffusers import build_wan

    from dgpo.training.trainer import Trainer

    pipe = build_wan(tmp_path / "wan22", "2.2")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue ball on grass\na green sign\n")
    args = lambda run: ["model.kind=wan", f"model.path={pipe}", "model.resolution=16", "model.width=32",  # noqa: E731
                        "model.frames=5", "model.max_sequence_length=16", f"run.out_dir={run}", "run.epochs=2",
                        "run.sample_every=0", "run.save_every=0", "run.eval_at_ends=false", "run.log_with=none",
                        f"train.prompts={prompts}", "train.prompts_per_epoch=2", "train.group_size=4",
                        "train.batch_size=4", "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-3",
                        "sampler.steps=3", "timesteps.mode=uniform", "timesteps.t_min=0.3", "timesteps.count=2",
                        "dgpo.kl_beta=0.1", "reward.name=tiny_diffusers:video_brightness"]
    Trainer(load_config(None, args(tmp_path / "one"))).fit()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP2_CONFIG),
           "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", str(_free_port()), "-m", "dgpo.cli", "train",
           *args(tmp_path / "fsdp")]
    tests = str(Path(__file__).parent)  # the reward tiny_diffusers:video_brightness
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FSDP2: PeftModel sharded over 2 processes in 5 units" in proc.stderr  # 2 x 2 blocks + the root
    one = load_file(str(tmp_path / "one/checkpoints/step_000002/policy.safetensors"))
    two = load_file(str(tmp_path / "fsdp/checkpoints/step_000002/policy.safetensors"))
    assert one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], atol=ATOL, rtol=0), (k, (one[k] - two[k]).abs().max())
    for expert in (".transformer.", ".transformer_2."):
        assert any(expert in k and "lora_B" in k and bool(one[k].abs().sum() > 0) for k in one), expert
