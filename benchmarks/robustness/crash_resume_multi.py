"""Crash-resume harness for multi-process runs: a 2-process CPU (gloo) toy DGPO run under ``torchrun``
(DDP) or ``accelerate launch`` (FSDP2) has one process killed, at a random moment or an aimed one, and is
resumed with ``--resume`` until it finishes; the end must equal an uninterrupted 2-process run bit for bit.

Usage: OMP_NUM_THREADS=1 python -m benchmarks.robustness.crash_resume_multi [--launcher ddp|fsdp2]
       [--kills 12] [--seed 0] [--out bench_results/crash_resume_multi.json] [--work DIR]

Kills: ``random`` (SIGKILL a random process after a random delay), ``checkpoint`` (SIGKILL process 1
as soon as process 0's checkpoint write shows its .tmp folder; process 0 writes slowly, as on a busy
disk), ``allreduce`` / ``evalgather`` (a process SIGKILLs itself entering its n-th all-reduce, or its n-th
all-gather inside an eval: ``multi_worker``), ``hang`` (SIGSTOP a process: the others must give up after
``train.collective_timeout_s``). For each kill: how long the survivors took to exit after it, the
launcher's exit status, and whether they said why in one line.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from dgpo.testing.toy import tiny_toy_checkpoint

from benchmarks.robustness.crash_compare import compare
from benchmarks.robustness.crash_resume import (
    Tail,
    child_env,
    has_checkpoint,
    leftovers,
    newest_state,
    overrides,
    phase,
)

HANG_TIMEOUT_S = 8  # train.collective_timeout_s of every launch: how long a survivor waits for a stopped peer
FSDP2_CONFIG = Path(__file__).parents[2] / "configs/accelerate/fsdp2_8gpu.yaml"
# all-reduces twice: the group sums and fault counters are the collectives a run spends most of its time in
KINDS = ("checkpoint", "allreduce", "random", "evalgather", "hang", "allreduce")
MESSAGE = "dgpo train: stopped: process"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(launcher: str, pids: Path, fault: str, args: list[str]) -> list[str]:
    worker = ["-m", "benchmarks.robustness.multi_worker", str(pids), fault, "--", *args]
    if launcher == "ddp":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), *worker]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP2_CONFIG), "--num_processes",
            "2", "--mixed_precision", "no", "--main_process_port", str(free_port()), *worker]


def run_args(launcher: str, model: Path, run: Path, epochs: int) -> list[str]:
    extra = ["train.lora_rank=0", "train.lr=1e-3"] if launcher == "fsdp2" else []  # FSDP2: full fine-tuning
    return [*overrides(model, run, epochs), *extra, f"train.collective_timeout_s={HANG_TIMEOUT_S}"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] if Path(f"/proc/{pid}").exists() else "Z"
    return state != "Z"


def plan_kill(kind: str, rng: random.Random, run_s: float) -> dict:
    """What to do in one launch: the fault the worker arms itself, or the signal the harness sends, to whom, when."""
    rank = rng.randrange(2)
    if kind in ("allreduce", "evalgather"):
        return {"kind": kind, "rank": rank, "fault": f"{kind}:{rank}:{rng.randint(1, 6 if kind == 'allreduce' else 2)}"}
    if kind == "checkpoint":
        return {"kind": kind, "rank": 1, "fault": "slowsave:0:1", "signal": signal.SIGKILL, "n": rng.randint(1, 2)}
    sig = signal.SIGSTOP if kind == "hang" else signal.SIGKILL
    return {"kind": kind, "rank": rank, "fault": "none", "signal": sig, "delay": rng.uniform(0.2, 0.8) * run_s}


def _due(plan: dict, t0: float, run: Path, stale: set, seen: set) -> bool:
    """The n-th checkpoint write of the launch has started (its .tmp folder), or the delay is over."""
    if plan["kind"] == "checkpoint":
        seen |= {(n, ino) for n, ino, _ in leftovers(run) if n.endswith(".tmp")} - stale
        return len(seen) >= plan.get("n", 1)
    return time.monotonic() - t0 >= plan["delay"]


def launch(launcher: str, args: list[str], run: Path, log: Path, plan: dict | None, timeout: float = 600) -> dict:
    """One launch; the kill of ``plan`` (None: let it finish). -> what happened and how the survivors exited."""
    pids, stale = run.parent / f"{run.name}.pids", {(n, ino) for n, ino, _ in leftovers(run)}
    shutil.rmtree(pids, ignore_errors=True)
    before, t0 = leftovers(run), time.monotonic()
    with log.open("wb") as err:
        proc = subprocess.Popen(command(launcher, pids, plan["fault"] if plan else "none", args),
                                stdout=subprocess.DEVNULL, stderr=err, env=child_env(), start_new_session=True)
    t_kill, victim, seen = None, None, set()
    try:
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"the launch ran over {timeout} s (log: {log})")
            ranks = {int(p.stem[4:]): int(p.read_text()) for p in pids.glob("rank*.pid") if p.read_text()}
            if plan and t_kill is None and len(ranks) == 2:
                victim = ranks[plan["rank"]]
                if "signal" in plan and _due(plan, t0, run, stale, seen):
                    try:
                        os.kill(victim, plan["signal"])
                        t_kill = time.monotonic()
                    except ProcessLookupError:  # it ended first (the run finished): a launch without a kill
                        plan = None
                elif "signal" not in plan and (pids / "fired").exists() and not alive(victim):  # it killed itself
                    t_kill = time.monotonic()
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = Tail(log).read()
    out = {"rc": proc.returncode, "seconds": round(time.monotonic() - t0, 2)}
    if plan is None or t_kill is None:
        return {**out, "killed": False}
    return {**out, "killed": True, "kind": plan["kind"], "rank": plan["rank"], "fault": plan["fault"],
            "phase": phase(run, text, before), "survivor_exit_s": round(time.monotonic() - t_kill, 2),
            "said_why": MESSAGE in text}


def episode(launcher: str, model: Path, ref: Path, run: Path, epochs: int, kinds: list[str], rng: random.Random,
            run_s: float) -> dict:
    kills, launches = [], 0
    for kind in [*kinds, None]:
        args = [*run_args(launcher, model, run, epochs), *(["--resume"] if has_checkpoint(run) else [])]
        plan = plan_kill(kind, rng, run_s) if kind else None
        res = launch(launcher, args, run, run.parent / f"{run.name}.launch{launches:02d}.log", plan)
        launches += 1
        if res["killed"]:
            kills.append({**res, "resumed": "--resume" in args, "epoch_at_kill": newest_state(run)["epoch"]})
            continue
        if res["rc"] != 0:
            return {"kills": kills, "launches": launches, "diffs": [f"a launch exited with {res['rc']} unkilled"]}
        if newest_state(run)["epoch"] >= epochs:
            break
    return {"kills": kills, "launches": launches, "diffs": compare(ref, run)}


def run_harness(work: Path, launcher: str, n_kills: int, seed: int, epochs: int, per_episode: int) -> dict:
    rng = random.Random(seed)
    model = tiny_toy_checkpoint(work / "tiny")
    t0, ref = time.monotonic(), work / "reference"
    ref_res = launch(launcher, run_args(launcher, model, ref, epochs), ref, work / "reference.log", None)
    if ref_res["rc"] != 0:
        raise RuntimeError(f"the uninterrupted run failed; see {work / 'reference.log'}")
    kinds = [KINDS[i % len(KINDS)] for i in range(n_kills)]
    rng.shuffle(kinds)
    episodes = []
    for start in range(0, n_kills, per_episode):
        run = work / f"crash{len(episodes):02d}"
        episodes.append(episode(launcher, model, ref, run, epochs, kinds[start:start + per_episode], rng,
                                ref_res["seconds"]))
    kills = [k for ep in episodes for k in ep["kills"]]
    exits = [k["survivor_exit_s"] for k in kills]
    return {"launcher": launcher, "processes": 2, "kill_points": len(kills),
            "divergences": sum(len(ep["diffs"]) for ep in episodes),
            "divergence_details": [d for ep in episodes for d in ep["diffs"]],
            "kills_by_kind": dict(Counter(k["kind"] for k in kills).most_common()),
            "kills_by_phase": dict(Counter(k["phase"] for k in kills).most_common()),
            "killed_rank": dict(Counter(k["rank"] for k in kills)),
            "longest_survivor_exit_s": max(exits, default=None),
            "longest_survivor_exit_s_without_hangs": max((k["survivor_exit_s"] for k in kills if k["kind"] != "hang"),
                                                        default=None),
            "survivors_said_why": sum(k["said_why"] for k in kills), "collective_timeout_s": HANG_TIMEOUT_S,
            "episodes": len(episodes), "launches": sum(ep["launches"] for ep in episodes),
            "uninterrupted_run_s": ref_res["seconds"], "harness_s": round(time.monotonic() - t0, 1),
            "epochs": epochs, "omp_threads": 1, "seed": seed, "kills": kills}


def main() -> None:
    from benchmarks.common import write_result

    ap = argparse.ArgumentParser()
    ap.add_argument("--launcher", choices=["ddp", "fsdp2"], default="ddp")
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the toy run (2 optimizer steps each)")
    ap.add_argument("--per-episode", type=int, default=3, help="kills before a run may finish")
    ap.add_argument("--out", default="bench_results/crash_resume_multi.json")
    ap.add_argument("--work", default="", help="work folder (default: a temporary one, deleted afterwards)")
    a = ap.parse_args()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="dgpo-crash-multi-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run_harness(work, a.launcher, a.kills, a.seed, a.epochs, a.per_episode)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    write_result(result, a.out)
    print(f"{a.launcher}: {result['kill_points']} kills, {result['divergences']} divergences; survivors exited "
          f"within {result['longest_survivor_exit_s']} s; by kind {result['kills_by_kind']}")


if __name__ == "__main__":
    main()
