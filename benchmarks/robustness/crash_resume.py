"""Crash-resume harness: SIGKILL a small toy DGPO run again and again, `--resume` it, and compare the end
result with an uninterrupted run, bit for bit.

Usage: OMP_NUM_THREADS=1 python -m benchmarks.robustness.crash_resume [--kills 24] [--seed 0]
       [--out bench_results/crash_resume.json] [--work DIR]

Each launch is ``python -m dgpo.cli train`` (``--resume`` once a checkpoint exists), SIGKILLed after a
random delay, as soon as its n-th checkpoint write starts, or a random moment into its n-th periodic or
its final eval; where the kill landed is read from what the process left (a ``.tmp``/``.trash``
checkpoint folder, else its last progress line). After the second kill of each run the newest checkpoint
gets a flipped byte (if there are two): the resume must skip it. A finished run is compared with the
uninterrupted one: the retained checkpoints (tensors with ``torch.equal``, optimizer.json, state.json),
metrics.jsonl, evals.jsonl, summary.json, TensorBoard scalars (one value per tag and step), grids and plots
(PNG bytes), wall-clock fields aside; no torn line or leftover folder may remain.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from dgpo.testing.toy import tiny_toy_checkpoint

from benchmarks.robustness.crash_compare import compare

TOY = ["run.epochs={epochs}", "run.save_every=1", "run.eval_every=2", "run.sample_every=2",
       "run.keep_checkpoints=2", "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=4",
       "train.steps_per_epoch=2", "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=3",
       "timesteps.trunc_steps=2", "timesteps.count=2", "dgpo.switch_ema_ref=0", "eval.max_prompts=4",
       "eval.batch_size=8", "reward.name=jpeg_incompressibility", "run.log_with=tensorboard"]
BAR = re.compile(r"^(eval [^:]+|dgpo): *\d+%\|.*?\| *(\d+)/(\d+)(.*)$")


def overrides(model: Path, run_dir: Path, epochs: int) -> list[str]:
    return [f"model.path={model}", f"run.out_dir={run_dir}", *(o.format(epochs=epochs) for o in TOY)]


def child_env() -> dict:
    import dgpo

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TQDM_MININTERVAL="0")
    src = str(Path(dgpo.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH", "")]))
    return env


# ----------------------------------------------------------------------------- where a kill landed
def last_bar(err: str) -> tuple[str, int, int, str] | None:
    """(description, done, total, postfix) of the last progress-bar line a process wrote."""
    for seg in reversed(re.split(r"[\r\n]", err.replace("\x1b[A", ""))):
        m = BAR.match(seg.strip())
        if m:
            return m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    return None


def leftovers(run_dir: Path) -> set[tuple[str, int, int]]:
    """The ``.tmp`` and ``.trash`` checkpoint folders (name, inode, mtime): an unfinished save or delete."""
    out = set()
    for p in [*run_dir.glob("checkpoints/step_*.tmp"), *run_dir.glob("checkpoints/step_*.trash")]:
        try:
            st = p.stat()
        except FileNotFoundError:  # renamed or deleted meanwhile
            continue
        out.add((p.name, st.st_ino, st.st_mtime_ns))
    return out


def phase(run_dir: Path, err: str, before: set) -> str:
    """Where a kill landed, from what the process left: a checkpoint folder it was writing (not one an
    earlier kill left), else its last progress line."""
    new = {name for name, *_ in leftovers(run_dir) - before}
    if any(n.endswith(".tmp") for n in new):
        return "checkpoint write"
    if new:
        return "checkpoint retention"
    bar = last_bar(err)
    if bar is None:
        return "startup (imports, model, resume)"
    desc, done, total, post = bar
    if desc.startswith("eval"):
        if done < total:
            return "eval"
        return {"eval before": "before grid", "eval after": "finish (grid, summary, plots)"}.get(
            desc, "epoch end (grid, checkpoint)")
    for key in ("rollout", "reward]", "train"):
        if key in post:
            return key.strip("]")
    return "epoch end (grid, checkpoint)" if "step=" in post else "epoch start"


# ----------------------------------------------------------------------------- one launch
class Tail:
    """A growing log file's text, read incrementally."""

    def __init__(self, path: Path):
        self.path, self.data = path, b""

    def read(self) -> str:
        with self.path.open("rb") as f:
            f.seek(len(self.data))
            self.data += f.read()
        return self.data.decode(errors="replace")


class Trigger:
    """When to kill: ``random`` (a delay after launch), ``checkpoint`` (as soon as the n-th checkpoint
    write of the launch shows its .tmp folder), ``eval`` (the n-th periodic eval's bar, + a delay) or
    ``finish`` (the final eval's bar, + a delay)."""

    BARS = {"eval": re.compile(r"eval @\d+: *0%"), "finish": re.compile(r"eval after: *0%")}

    def __init__(self, kind: str, n: int = 1, delay: float = 0.0):
        self.kind, self.n, self.delay = kind, n, delay
        self.seen: set[tuple] = set()
        self.at: float | None = None

    def __repr__(self) -> str:
        return f"{self.kind}(n={self.n}, delay={self.delay:.2f})"

    def reset(self, stale: set) -> None:
        """A new launch; ``stale``: leftovers() of earlier launches (not this launch's saves)."""
        self.stale, self.seen, self.at = {(n, ino) for n, ino, _ in stale}, set(), None

    def due(self, t0: float, run_dir: Path, log: Tail) -> bool:
        if self.at is None:
            self.at = self._armed(t0, run_dir, log)
        return self.at is not None and time.monotonic() >= self.at

    def _armed(self, t0: float, run_dir: Path, log: Tail) -> float | None:
        if self.kind == "random":
            return t0 + self.delay
        if self.kind == "checkpoint":
            self.seen |= {(n, ino) for n, ino, _ in leftovers(run_dir) if n.endswith(".tmp")} - self.stale
            return time.monotonic() if len(self.seen) >= self.n else None
        found = len(self.BARS[self.kind].findall(log.read()))
        return time.monotonic() + self.delay if found >= self.n else None


def launch(args: list[str], run_dir: Path, log: Path, trigger: Trigger | None, timeout: float = 600) -> dict:
    """Run ``dgpo train`` once; kill it when ``trigger`` says so. -> {killed, phase, rc, seconds}."""
    before = leftovers(run_dir)
    if trigger is not None:
        trigger.reset(before)
    t0 = time.monotonic()
    with log.open("wb") as err_f:
        proc = subprocess.Popen([sys.executable, "-m", "dgpo.cli", "train", *args], stdout=subprocess.DEVNULL,
                                stderr=err_f, env=child_env())
    tail = Tail(log)
    try:
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"dgpo train ran over {timeout} s (log: {log})")
            if trigger is not None and trigger.due(t0, run_dir, tail):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return {"killed": True, "phase": phase(run_dir, tail.read(), before), "trigger": repr(trigger),
                        "seconds": round(time.monotonic() - t0, 2)}
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"killed": False, "rc": proc.returncode, "seconds": round(time.monotonic() - t0, 2)}


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("step_*[0-9]/manifest.json"))


def corrupt_newest(run_dir: Path, rng: random.Random) -> str | None:
    """Flip one byte in the tensors of the newest checkpoint (bit rot): the resume must skip it."""
    ckpts = sorted((run_dir / "checkpoints").glob("step_*[0-9]"))
    if len(ckpts) < 2:
        return None
    f = ckpts[-1] / "policy.safetensors"
    data = bytearray(f.read_bytes())
    pos = rng.randrange(len(data) - 64, len(data))  # in the tensor data, not the header
    data[pos] ^= 0xFF
    f.write_bytes(bytes(data))
    return f"{ckpts[-1].name}/policy.safetensors"


# ----------------------------------------------------------------------------- the harness
def newest_state(run_dir: Path) -> dict:
    """state.json of the newest checkpoint with a manifest (what a resume continues from, unless corrupted)."""
    states = [json.loads((p / "state.json").read_text()) for p in run_dir.glob("checkpoints/step_*[0-9]")
              if (p / "manifest.json").is_file()]
    return max(states, key=lambda st: st["step"], default={"step": 0, "epoch": 0, "evals": []})


def rows_past_checkpoint(run_dir: Path) -> int:
    """metrics.jsonl and evals.jsonl lines a killed run left past its newest checkpoint (torn ones too):
    what the resume has to drop."""
    st, n = newest_state(run_dir), 0
    for name in ("metrics.jsonl", "evals.jsonl"):
        lines = (run_dir / name).read_text().splitlines() if (run_dir / name).is_file() else []
        for i, line in enumerate(lines):
            try:
                n += json.loads(line)["step"] > st["step"] if name == "metrics.jsonl" else i >= len(st["evals"])
            except ValueError:
                n += 1
    return n


def make_trigger(kind: str, rng: random.Random, done: int, epochs: int, run_s: float) -> Trigger:
    """A trigger of ``kind`` that can fire in a launch that starts after ``done`` of ``epochs`` epochs
    (``run_s``: the uninterrupted run's seconds); kinds with nothing left to aim at become ``finish``."""
    left = epochs - done
    evals_left = sum(1 for e in range(done + 1, epochs) if e % 2 == 0)  # run.eval_every=2, none at the end
    if kind == "random":
        return Trigger("random", delay=rng.uniform(0.0, run_s * (0.35 + 0.65 * left / epochs)))
    if kind == "checkpoint" and left:
        return Trigger("checkpoint", n=rng.randint(1, min(2, left)))
    if kind == "eval" and evals_left:
        return Trigger("eval", n=rng.randint(1, min(2, evals_left)), delay=rng.uniform(0.0, 0.3))
    return Trigger("finish", delay=rng.uniform(0.0, 1.5))


KINDS = ("random", "checkpoint", "eval", "random", "checkpoint", "finish")


def episode(model: Path, ref: Path, run: Path, epochs: int, plan: list, rng: random.Random, run_s: float,
            corrupt_at: int = 0) -> dict:
    """One run: a launch per item of ``plan`` (a Trigger, or a kind for make_trigger), each resumed from
    the last, then one launch left to finish; after kill number ``corrupt_at`` the newest checkpoint is
    corrupted. -> its kills, corruptions and differences."""
    kills, corruptions, launches = [], [], 0
    for item in [*plan, None]:
        if corrupt_at and len(kills) == corrupt_at and "corrupted_after" not in kills[-1]:
            kills[-1]["corrupted_after"] = what = corrupt_newest(run, rng)
            corruptions += [what] if what else []
        trigger = make_trigger(item, rng, newest_state(run)["epoch"], epochs, run_s) if isinstance(item, str) else item
        resume = has_checkpoint(run)
        log = run.parent / f"{run.name}.launch{launches:02d}.log"
        res = launch([*overrides(model, run, epochs), *(["--resume"] if resume else [])], run, log, trigger)
        launches += 1
        if res["killed"]:
            kills.append({**res, "resumed": resume, "rows_past_checkpoint": rows_past_checkpoint(run)})
            continue
        if res["rc"] != 0:
            return {"kills": kills, "corruptions": corruptions, "launches": launches,
                    "diffs": [f"dgpo train exited with {res['rc']} (log: {log})"]}
        break  # finished (a trigger that did not fire in time ends the episode early)
    logs = [p.read_text(errors="replace") for p in run.parent.glob(f"{run.name}.launch*.log")]
    detected = sum(t.count("does not match its SHA-256") for t in logs)
    return {"kills": kills, "corruptions": corruptions, "launches": launches, "detected": detected,
            "diffs": compare(ref, run)}


def run_harness(work: Path, n_kills: int, seed: int, epochs: int, kills_per_episode: int,
                corrupt_at: int = 0) -> dict:
    rng = random.Random(seed)
    model = tiny_toy_checkpoint(work / "tiny")
    t0 = time.monotonic()
    ref = work / "reference"
    ref_res = launch(overrides(model, ref, epochs), ref, work / "reference.log", None)
    if ref_res["rc"] != 0:
        raise RuntimeError(f"the uninterrupted run failed; see {work / 'reference.log'}")
    episodes: list[dict] = []
    kinds = [KINDS[i % len(KINDS)] for i in range(3 * n_kills)]  # a third random delays, the rest aimed
    rng.shuffle(kinds)
    while sum(len(ep["kills"]) for ep in episodes) < n_kills and kinds:
        todo = min(kills_per_episode, n_kills - sum(len(ep["kills"]) for ep in episodes))
        plan, kinds = kinds[:todo], kinds[todo:]
        run = work / f"crash{len(episodes):02d}"
        episodes.append(episode(model, ref, run, epochs, plan, rng, ref_res["seconds"], corrupt_at))
    return summarize(episodes, ref_res["seconds"], time.monotonic() - t0, epochs, seed)


def summarize(episodes: list[dict], ref_s: float, total_s: float, epochs: int, seed: int) -> dict:
    kills = [k for ep in episodes for k in ep["kills"]]
    return {
        "kill_points": len(kills), "divergences": sum(len(ep["diffs"]) for ep in episodes),
        "divergence_details": [d for ep in episodes for d in ep["diffs"]],
        "kills_by_phase": dict(Counter(k["phase"] for k in kills).most_common()),
        "kills_by_trigger": dict(Counter(k["trigger"].split("(")[0] for k in kills).most_common()),
        "kills_in_fresh_starts": sum(not k["resumed"] for k in kills),
        "kills_leaving_log_rows_to_drop": sum(k["rows_past_checkpoint"] > 0 for k in kills),
        "corrupted_checkpoints": sum(len(ep["corruptions"]) for ep in episodes),
        "resumes_that_skipped_a_corrupted_checkpoint": sum(ep.get("detected", 0) for ep in episodes),
        "episodes": len(episodes), "launches": sum(ep["launches"] for ep in episodes),
        "uninterrupted_run_s": ref_s, "harness_s": round(total_s, 1),
        "epochs": epochs, "optimizer_steps": 2 * epochs, "omp_threads": 1, "seed": seed,
        "kills": kills,
    }


def main() -> None:
    from benchmarks.common import write_result

    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=24, help="kill points to try (default 24)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=8, help="epochs of the toy run (2 optimizer steps each)")
    ap.add_argument("--per-episode", type=int, default=4, help="kills before a run may finish (default 4)")
    ap.add_argument("--corrupt-at", type=int, default=2, help="in each run, corrupt the newest checkpoint after "
                    "this kill (default 2; 0: never)")
    ap.add_argument("--out", default="bench_results/crash_resume.json")
    ap.add_argument("--work", default="", help="work folder (default: a temporary one, deleted afterwards)")
    a = ap.parse_args()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="dgpo-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run_harness(work, a.kills, a.seed, a.epochs, a.per_episode, a.corrupt_at)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    write_result(result, a.out)
    print(f"{result['kill_points']} kill points, {result['divergences']} divergences; by phase: "
          f"{result['kills_by_phase']}")


if __name__ == "__main__":
    main()
