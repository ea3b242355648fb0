"""Runs that survive: non-finite losses, gradients and rewards skip the step (nothing changes), a failing
or hanging reward drops its groups, and a fault that lasts stops the run with its last good state."""

import copy
import json
import math
import threading

import pytest
import torch
from safetensors.torch import load_file

from dgpo.config import load_config
from dgpo.rewards import build_reward
from dgpo.training import RunHalted
from dgpo.training.trainer import Trainer

NAN = float("nan")


def _cfg(tiny, out, *extra):
    return load_config(None, [
        f"model.path={tiny}", f"run.out_dir={out}", "run.epochs=3", "run.sample_every=0", "run.save_every=1",
        "run.eval_at_ends=false", "run.log_with=none", "train.prompts_per_epoch=2", "train.group_size=4",
        "train.batch_size=4", "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=3",
        "timesteps.trunc_steps=2", "timesteps.count=2", "dgpo.switch_ema_ref=0", "dgpo.kl_beta=0.1",
        "train.ema_every=1", "reward.name=jpeg_incompressibility", "reward.backoff_s=0", *extra])


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _state(tr):
    """Everything a skipped step must leave as it was."""
    return {"params": [p.detach().clone() for p in tr.policy.params],
            "ema_old": [s.clone() for s in tr.algo.old_model.shadow],
            "ema_slow": [s.clone() for s in tr.ema_slow.shadow],
            "opt": copy.deepcopy(tr.opt.state_dict()["state"]), "step": tr.step}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _spy(tr, poison):
    """Record the state around every optimizer step; ``poison(i)`` switches on the fault of step i."""
    calls, flag = [], {"on": False}
    inner = tr._optimizer_step

    def step(*a, **k):
        before = _state(tr)
        flag["on"] = poison(len(calls))
        try:
            out = inner(*a, **k)
        finally:
            flag["on"] = False
        calls.append((before, _state(tr), dict(out), a[2]))
        return out

    tr._optimizer_step = step
    return calls, flag


class Poisoned:
    """The real reward, with NaN where ``bad(call, i)`` says (call: the reward call's number)."""

    def __init__(self, bad):
        self.fn, self.bad, self.calls, self.returned = build_reward("jpeg_incompressibility"), bad, 0, []

    def __call__(self, images, metas):
        r = self.fn(images, metas).clone()
        for i in range(len(r)):
            if self.bad(self.calls, i):
                r[i] = NAN
        self.calls += 1
        self.returned.append(r)
        return r


@pytest.mark.parametrize("cause", ["loss", "grad"])
def test_a_nan_forward_or_gradient_skips_the_step_and_changes_nothing(tiny_toy, tmp_path, cause):
    tr = Trainer(_cfg(tiny_toy, tmp_path / "run"))
    calls, flag = _spy(tr, lambda i: i == 1)
    if cause == "loss":  # NaN out of the network in every training forward of step 1
        tr.train_net.register_forward_hook(lambda m, i, o: o * NAN if flag["on"] else None)
    else:  # finite loss, NaN gradient of one adapter matrix
        tr.policy.params[0].register_hook(lambda g: g * NAN if flag["on"] else g)
    tr.fit()
    (b0, a0, _, _), (b1, a1, out1, _), (b2, a2, _, _) = calls
    assert out1["bad_cause"] == cause
    assert _same(b1, a1)  # parameters, both EMAs, AdamW moments and step counts, the step counter: bit for bit
    assert not _same(b0["params"], a0["params"]) and not _same(b2["params"], a2["params"])
    assert not _same(b2["ema_slow"], a2["ema_slow"])  # the EMAs do move on a good step (ema_every=1)
    assert tr.step == 2
    rows = _rows(tmp_path / "run")
    assert [r["bad_step"] for r in rows] == [0, 1, 0] and [r["bad_cause"] for r in rows] == ["", cause, ""]
    assert [r["step"] for r in rows] == [1, 1, 2] and rows[1]["bad_steps_in_row"] == 1
    if cause == "loss":
        assert rows[1]["loss"] is None  # NaN is written as null: metrics.jsonl stays strict JSON
    else:
        assert math.isfinite(rows[1]["loss"]) and rows[1]["grad_norm"] is None
    assert all(torch.isfinite(p).all() for p in tr.policy.params)


def test_nan_steps_in_a_row_stop_the_run_with_its_last_good_checkpoint(tiny_toy, tmp_path):
    out = tmp_path / "run"
    tr = Trainer(_cfg(tiny_toy, out, "run.epochs=10", "train.max_bad_steps=2"))
    calls, flag = _spy(tr, lambda i: i >= 1)
    tr.train_net.register_forward_hook(lambda m, i, o: o * NAN if flag["on"] else None)
    with pytest.raises(RunHalted, match=r"train.max_bad_steps=2: 2 optimizer steps in a row were skipped for a "
                                        r"non-finite loss.*step 1\) is saved in .*step_000001"):
        tr.fit()
    assert len(calls) == 3 and _same(calls[0][1], _state(tr))  # stopped after the 2nd bad step; state of step 1
    ckpt = out / "checkpoints" / "step_000001"
    policy = load_file(str(ckpt / "policy.safetensors"))
    assert all(torch.equal(policy[n], p) for n, p in zip(tr.policy.names, tr.policy.params))
    assert json.loads((ckpt / "state.json").read_text())["epoch"] == 2  # resuming retries the failed epoch
    assert [r["bad_cause"] for r in _rows(out)] == ["", "loss", "loss"]
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("where", ["in_process", "remote"])
def test_a_nan_reward_drops_its_group_only(tiny_toy, tmp_path, where):
    """In-process, or served by `dgpo reward serve` (its NaN is a null on the wire: protocol 3)."""
    from contextlib import nullcontext

    from dgpo.rewards.server import RewardServer

    out = tmp_path / "run"
    poisoned = Poisoned(lambda call, i: call == 2 and i == 1)  # epoch 1, group 0 (chunk 0), member 1
    with RewardServer(poisoned, "poisoned") if where == "remote" else nullcontext() as srv:
        remote = [f"reward.url={srv.url}", "reward.name=remote"] if srv else []
        tr = Trainer(_cfg(tiny_toy, out, "run.epochs=2", "advantages.std=global", *remote))
        if srv is None:
            tr.reward_fn = poisoned
        calls, _ = _spy(tr, lambda i: False)
        tr.fit()
    assert poisoned.calls == 4  # one call per rollout chunk: the NaN failed no call, nothing was retried
    rows = _rows(out)
    assert rows[0]["dropped_groups"] == 0 and rows[1]["dropped_groups"] == 1
    assert rows[1]["nonfinite_rewards"] == 1 and rows[1]["reward_failures"] == 0 and rows[1]["bad_step"] == 0
    kept = poisoned.returned[3]  # group 1's rewards: the logged mean is theirs alone
    assert rows[1]["reward_mean"] == pytest.approx(float(kept.mean()), abs=1e-6)
    assert rows[1]["reward_std"] == pytest.approx(float(kept.std()), abs=1e-6)
    assert calls[1][3].tolist() == [4, 5, 6, 7]  # the step trains group 1's samples only
    assert not _same(calls[1][0]["params"], calls[1][1]["params"]) and tr.step == 2


def test_an_epoch_of_nan_rewards_skips_its_step_and_counts_towards_max_bad_steps(tiny_toy, tmp_path):
    out = tmp_path / "run"
    tr = Trainer(_cfg(tiny_toy, out, "run.epochs=10", "train.max_bad_steps=2", "train.algorithm=flow_grpo",
                      "grpo.clip_range=0.2"))
    tr.reward_fn = Poisoned(lambda call, i: call >= 2 and i == 0)  # from epoch 1 on, one member of every group
    with pytest.raises(RunHalted, match="non-finite reward"):
        tr.fit()
    rows = _rows(out)
    assert [(r["bad_cause"], r["dropped_groups"]) for r in rows] == [("", 0), ("reward", 2), ("reward", 2)]
    assert rows[1]["reward_mean"] is None and rows[1]["step"] == 1 and tr.step == 1
    assert (out / "checkpoints" / "step_000001").is_dir()


class Flat:
    """The real reward, but the same number for every image on the calls ``flat(call)`` names."""

    def __init__(self, flat):
        self.fn, self.flat, self.calls = build_reward("jpeg_incompressibility"), flat, 0

    def __call__(self, images, metas):
        r = self.fn(images, metas)
        self.calls += 1
        return torch.full_like(r, 0.5) if self.flat(self.calls - 1) else r


@pytest.mark.parametrize("algo", ["flow_grpo", "dpo"])
def test_an_epoch_without_reward_spread_skips_its_step_and_changes_nothing(tiny_toy, tmp_path, algo):
    """Every group without spread: Flow-GRPO's zero-advantage filter keeps no sample (the official loop
    stops with an error on reshaping nothing) and DPO has no pair. The step is skipped, not counted
    as a bad one, and the next epoch trains."""
    out = tmp_path / "run"
    tr = Trainer(_cfg(tiny_toy, out, f"train.algorithm={algo}", "grpo.clip_range=0.2"))
    tr.reward_fn = Flat(lambda call: call in (2, 3))  # epoch 1 (2 chunks)
    calls, _ = _spy(tr, lambda i: False)
    tr.fit()
    rows = _rows(out)
    assert [(r["step"], r["bad_cause"], r["bad_steps_in_row"]) for r in rows] == [(1, "", 0), (1, "no_signal", 0),
                                                                                 (2, "", 0)]
    assert rows[1]["zero_spread_share"] == 1.0 and len(calls) == 2 and tr.step == 2  # epoch 1 took no step
    before_epoch_2 = calls[1][0]
    assert _same(calls[0][1], before_epoch_2)  # nothing changed in between: weights, EMAs, Adam, step


class Flaky:
    """The real reward; ``fail(call)``: raise ("raise") or hang past the timeout ("hang") on that call."""

    def __init__(self, fail):
        self.fn, self.fail, self.calls = build_reward("jpeg_incompressibility"), fail, 0
        self.release = threading.Event()

    def __call__(self, images, metas):
        self.calls += 1
        mode = self.fail(self.calls - 1)
        if mode == "raise":
            raise RuntimeError(f"scorer crashed on call {self.calls - 1}")
        if mode == "hang":
            self.release.wait(30)
        return self.fn(images, metas)


def _policy(out):
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    return load_file(str(ckpt / "policy.safetensors"))


def test_a_reward_that_fails_once_is_retried_and_the_run_is_unchanged(tiny_toy, tmp_path):
    Trainer(_cfg(tiny_toy, tmp_path / "clean", "run.epochs=2")).fit()
    tr = Trainer(_cfg(tiny_toy, tmp_path / "flaky", "run.epochs=2", "reward.call_timeout_s=0.5"))
    tr.reward_fn = Flaky({1: "raise", 3: "hang"}.get)  # epoch 0's chunk 1, then epoch 1's chunk 0: once each
    tr.fit()
    tr.reward_fn.release.set()
    rows = _rows(tmp_path / "flaky")
    assert [(r["reward_calls"], r["reward_retries"], r["reward_timeouts"]) for r in rows] == [(2, 1, 0), (2, 1, 1)]
    assert all(r["reward_failures"] == 0 and r["dropped_groups"] == 0 for r in rows)
    clean, flaky = _policy(tmp_path / "clean"), _policy(tmp_path / "flaky")
    assert all(torch.equal(clean[k], flaky[k]) for k in clean)


@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_a_reward_that_keeps_failing_drops_its_groups_and_the_run_goes_on(tiny_toy, tmp_path, mode):
    out = tmp_path / "run"
    tr = Trainer(_cfg(tiny_toy, out, "run.epochs=2", "reward.retries=2", "reward.call_timeout_s=0.3"))
    tr.reward_fn = Flaky(lambda call: mode if 2 <= call <= 4 else None)  # epoch 1's chunk 0: all 3 attempts
    calls, _ = _spy(tr, lambda i: False)
    tr.fit()
    tr.reward_fn.release.set()
    rows = _rows(out)
    assert rows[1]["reward_failures"] == 1 and rows[1]["reward_retries"] == 2 and rows[1]["dropped_groups"] == 1
    assert rows[1]["reward_timeouts"] == (3 if mode == "hang" else 0) and rows[1]["nonfinite_rewards"] == 0
    assert rows[1]["reward_failed_epochs"] == 1 and rows[1]["bad_step"] == 0 and tr.step == 2
    assert calls[1][3].tolist() == [4, 5, 6, 7]  # group 0 (chunk 0) dropped, group 1 trains


def test_a_reward_failing_for_max_failures_epochs_stops_the_run(tiny_toy, tmp_path):
    out = tmp_path / "run"
    tr = Trainer(_cfg(tiny_toy, out, "run.epochs=10", "reward.retries=1", "reward.max_failures=2"))
    tr.reward_fn = Flaky(lambda call: "raise" if call >= 2 else None)  # from epoch 1 on
    with pytest.raises(RunHalted, match=r"reward.max_failures=2: a reward call failed after its retries in 2 "
                                        r"epochs in a row; the last error here: RuntimeError: scorer crashed"):
        tr.fit()
    rows = _rows(out)  # epochs 1 and 2: a skipped step each (every group dropped), then the stop
    assert [(r["bad_cause"], r["reward_failed_epochs"]) for r in rows] == [("", 0), ("reward_failure", 1),
                                                                          ("reward_failure", 2)]
    assert rows[2]["bad_steps_in_row"] == 0  # reward failures count by reward.max_failures, not max_bad_steps
    assert tr.reward_fn.calls == 2 + 2 * 2 * 2  # epoch 0's 2 calls, then 2 epochs x 2 chunks x (1 + 1 retry)
    assert tr.step == 1 and json.loads((out / "checkpoints/step_000001/state.json").read_text())["epoch"] == 3


def test_a_resumed_run_continues_the_fault_streak(tiny_toy, tmp_path):
    out = tmp_path / "run"
    tr = Trainer(_cfg(tiny_toy, out, "run.epochs=2", "reward.retries=0", "reward.max_failures=2"))
    tr.reward_fn = Flaky(lambda call: "raise" if call >= 2 else None)  # epoch 1 fails: a streak of 1 is saved
    tr.fit()
    assert json.loads(sorted((out / "checkpoints").iterdir())[-1].joinpath("state.json").read_text())["guard"] == {
        "bad_in_row": 0, "failed_epochs": 1}
    tr = Trainer(_cfg(tiny_toy, out, "run.epochs=3", "reward.retries=0", "reward.max_failures=2"), resume=True)
    tr.reward_fn = Flaky(lambda call: "raise")
    with pytest.raises(RunHalted, match="failed after its retries in 2 epochs in a row"):  # as without the stop
        tr.fit()


def test_an_eval_reward_failure_leaves_its_batch_unscored_and_the_run_goes_on(tiny_toy, tmp_path):
    out = tmp_path / "run"
    tr = Trainer(_cfg(tiny_toy, out, "run.epochs=1", "run.eval_at_ends=true", "reward.retries=1",
                      "eval.max_prompts=4", "eval.batch_size=2", "eval.min_per_category=0"))
    tr.reward_fn = Flaky(lambda call: "raise" if call in (0, 1) else None)  # eval before: batch 0, both attempts
    tr.fit()
    before, after = [json.loads(x) for x in (out / "evals.jsonl").read_text().splitlines()]
    assert before["step"] == 0 and before["unscored_images"] == 2 and math.isfinite(before["overall"])
    assert after["step"] == 1 and "unscored_images" not in after and tr.step == 1
    assert tr.reward_fn.calls == 3 + 2 + 2  # eval before (batch 0 twice, batch 1), 2 training chunks, eval after


def _strict(text):
    """JSON as strict parsers read it: NaN or Infinity is an error."""
    def refuse(name):
        raise ValueError(f"{name} in strict JSON")

    return json.loads(text, parse_constant=refuse)


def test_an_eval_whose_reward_fails_throughout_is_missing_and_the_run_goes_on(tiny_toy, tmp_path):
    out = tmp_path / "run"
    tr = Trainer(_cfg(tiny_toy, out, "run.epochs=1", "run.eval_at_ends=true", "reward.retries=1",
                      "reward.call_timeout_s=0.3", "eval.max_prompts=4", "eval.batch_size=2",
                      "eval.min_per_category=0"))
    # the eval before: its 2 batches hang past the timeout (2 attempts each); training: 2 good chunks; the eval
    # after: its 2 batches raise (2 attempts each)
    tr.reward_fn = Flaky(lambda call: "hang" if call < 4 else None if call < 6 else "raise")
    summary = tr.fit()
    tr.reward_fn.release.set()
    assert tr.step == 1 and tr.reward_fn.calls == 4 + 2 + 4  # trained between two missing evals
    before, after = [_strict(x) for x in (out / "evals.jsonl").read_text().splitlines()]
    for row, step, error in ((before, 0, "RewardCallTimeout"), (after, 1, "RuntimeError: scorer crashed")):
        assert row["step"] == step and row["overall"] is None and row["reward"] is None  # not a score of 0
        assert row["unscored_images"] == 4 and "no image scored" in row["missing"] and error in row["missing"]
    saved = _strict((out / "summary.json").read_text())
    assert saved["missing_evals"] == [0, 1] == summary["missing_evals"]
    assert saved["eval_before"]["missing"] and saved["eval_after"]["missing"]
    assert (out / "plots" / "eval.png").is_file() and (out / "plots" / "reward.png").is_file()
    from dgpo.evaluation import markdown_table

    assert "| after | missing |" in markdown_table({"after": saved["eval_after"]})


def test_a_nan_eval_score_leaves_that_image_unscored():
    from dgpo.evaluation import evaluate

    metas = [{"prompt": f"p{i}", "tag": "reward"} for i in range(4)]
    images = lambda ms, seeds: torch.zeros(len(ms), 3, 8, 8)  # noqa: E731
    score = lambda imgs, ms: [(NAN, NAN) if m["prompt"] == "p1" else (0.5, 0.5) for m in ms]  # noqa: E731
    res = evaluate(images, metas, batch_size=2, score_fn=score)
    assert res["unscored_images"] == 1 and res["n_images"] == 3 and res["overall"] == res["reward"] == 0.5


def _nan_forwards(tr, bad, stop=None):
    """NaN out of the network in every training forward of the steps ``bad(i)`` names; ``stop(i)``: a
    kill (an exception the run does not catch) at the start of step i."""
    calls, flag = _spy(tr, bad)
    inner = tr._optimizer_step

    def step(*a, **k):
        if stop is not None and stop(len(calls)):
            raise KeyboardInterrupt(f"killed before step {len(calls)}")
        return inner(*a, **k)

    tr._optimizer_step = step
    tr.train_net.register_forward_hook(lambda m, i, o: o * NAN if flag["on"] else None)
    return calls


def _same_rows(a, b):
    drop = lambda r: {k: v for k, v in r.items() if k != "wall_time" and not k.startswith("time_")}  # noqa: E731
    return [drop(r) for r in _rows(a)] == [drop(r) for r in _rows(b)]


def test_a_halted_run_resumed_with_a_higher_limit_stops_where_an_uninterrupted_run_stops(tiny_toy, tmp_path):
    """max_bad_steps=2 stops in epoch 2 (its step is retried by --resume); resumed with max_bad_steps=3, the
    streak goes on from where epoch 2 began: the stop comes in epoch 3, as in a run with 3 from the start."""
    ref = Trainer(_cfg(tiny_toy, tmp_path / "ref", "run.epochs=10", "train.max_bad_steps=3"))
    _nan_forwards(ref, lambda i: i >= 1)
    with pytest.raises(RunHalted, match="3 optimizer steps in a row"):
        ref.fit()
    out = tmp_path / "run"
    tr = Trainer(_cfg(tiny_toy, out, "run.epochs=10", "train.max_bad_steps=2"))
    _nan_forwards(tr, lambda i: i >= 1)
    with pytest.raises(RunHalted, match="2 optimizer steps in a row"):
        tr.fit()
    state = json.loads((out / "checkpoints/step_000001/state.json").read_text())
    assert state["epoch"] == 2 and state["guard"] == {"bad_in_row": 1, "failed_epochs": 0}  # as epoch 2 began
    tr = Trainer(_cfg(tiny_toy, out, "run.epochs=10", "train.max_bad_steps=3"), resume=True)
    calls = _nan_forwards(tr, lambda i: True)
    with pytest.raises(RunHalted, match="3 optimizer steps in a row"):
        tr.fit()
    assert len(calls) == 2  # epochs 2 and 3
    assert [(r["epoch"], r["bad_steps_in_row"]) for r in _rows(out)] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert _same_rows(ref.run_dir, out)


def test_a_run_killed_between_two_bad_steps_stops_where_an_uninterrupted_run_stops(tiny_toy, tmp_path):
    ref = Trainer(_cfg(tiny_toy, tmp_path / "ref", "run.epochs=10", "train.max_bad_steps=3"))
    _nan_forwards(ref, lambda i: i >= 1)
    with pytest.raises(RunHalted, match="3 optimizer steps in a row"):
        ref.fit()
    out = tmp_path / "run"
    tr = Trainer(_cfg(tiny_toy, out, "run.epochs=10", "train.max_bad_steps=3"))
    _nan_forwards(tr, lambda i: i >= 1)
    save = tr._save
    tr._save = lambda done, **k: (_ for _ in ()).throw(KeyboardInterrupt) if done == 3 else save(done, **k)
    with pytest.raises(KeyboardInterrupt):  # killed after epoch 2's bad step, before its checkpoint
        tr.fit()
    assert [r["bad_cause"] for r in _rows(out)] == ["", "loss", "loss"]
    assert json.loads((out / "checkpoints/step_000001/state.json").read_text())["guard"]["bad_in_row"] == 1
    tr = Trainer(_cfg(tiny_toy, out, "run.epochs=10", "train.max_bad_steps=3"), resume=True)
    calls = _nan_forwards(tr, lambda i: True)
    with pytest.raises(RunHalted, match="3 optimizer steps in a row"):
        tr.fit()
    assert len(calls) == 2  # epochs 2 (again) and 3: the streak of 1 saved after epoch 1 went on
    assert _same_rows(ref.run_dir, out)  # epoch 2's row of the killed process is not kept twice


@pytest.mark.slow
def test_a_fault_on_one_process_makes_every_process_skip_alike(tiny_toy, tmp_path):
    """Rank 1 alone sees a NaN forward (step 1) and a crashing reward (epoch 2): both processes skip the
    same steps and drop the same groups, and end where one process with those faults ends."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from ddp_faults import inject

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def overrides(out):
        return [f"model.path={tiny_toy}", f"run.out_dir={out}", "run.epochs=4", "run.sample_every=0",
                "run.save_every=0", "run.eval_at_ends=false", "run.log_with=none", "train.prompts_per_epoch=2",
                "train.group_size=4", "train.batch_size=8", "train.lora_rank=4", "train.lora_alpha=8",
                "train.lr=1e-2", "sampler.steps=3", "timesteps.trunc_steps=2", "timesteps.count=2",
                "dgpo.switch_ema_ref=0", "dgpo.kl_beta=0.1", "reward.name=colorfulness", "reward.retries=1",
                "reward.backoff_s=0"]

    one = Trainer(load_config(None, overrides(tmp_path / "one")))
    inject(one, 0)
    one.fit()
    script = Path(__file__).parent / "ddp_faults.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(port), str(script), "1", *overrides(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for out in ("one", "two"):
        rows = _rows(tmp_path / out)
        assert [r["bad_cause"] for r in rows] == ["", "loss", "reward_failure", ""], out
        assert [r["step"] for r in rows] == [1, 1, 1, 2] and rows[2]["dropped_groups"] == 2
    a = load_file(str(tmp_path / "one/checkpoints/step_000002/policy.safetensors"))
    b = load_file(str(tmp_path / "two/checkpoints/step_000002/policy.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)
