"""The parts of fault handling: the backoff schedule, the guarded reward call (retries, timeouts), the
screening of an epoch's rewards, and the remote reward's faults in training (a failing, a vanished, a
busy, a slow server)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from safetensors.torch import load_file

from dgpo.advantages import group_advantages
from dgpo.config import ConfigError, load_config
from dgpo.rewards import build_reward
from dgpo.rewards.remote import RemoteReward, RemoteRewardError
from dgpo.rewards.retry import Backoff, GuardedCall
from dgpo.rewards.server import RewardServer
from dgpo.rewards.wire import PROTOCOL
from dgpo.training import RunHalted
from dgpo.training.guards import masked_advantages, screen_rewards
from dgpo.training.trainer import Trainer

NAN = float("nan")


def test_backoff_doubles_up_to_its_cap_and_honours_a_longer_hint():
    b = Backoff(retries=5, base_s=0.5, max_s=3.0)
    assert [b.delay(k) for k in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.delay(0, hint_s=2.0) == 2.0 and b.delay(3, hint_s=60.0) == 3.0


def test_a_guarded_call_retries_with_backoff_then_reports_the_failure():
    waits, seen = [], []

    def fn(x):
        seen.append(x)
        if len(seen) < 3:
            raise OSError("scorer down")
        return x * 2

    out, rep = GuardedCall(Backoff(3, 0.5, 0.75), sleep=waits.append)(fn, 21)
    assert out == 42 and rep.attempts == 3 and rep.retries == 2 and not rep.failed and waits == [0.5, 0.75]
    seen.clear()
    out, rep = GuardedCall(Backoff(1, 0.5, 0.75), sleep=waits.append)(fn, 1)
    assert out is None and rep.failed and rep.attempts == 2 and rep.error == "OSError: scorer down"


@pytest.mark.parametrize("mark,attempts", [("permanent", 1), ("retried", 1), (None, 3)])
def test_permanent_errors_raise_and_already_retried_ones_are_not_retried_again(mark, attempts):
    calls = []

    def fn():
        calls.append(1)
        raise RemoteRewardError("server says no", permanent=mark == "permanent", retried=mark == "retried")

    guard = GuardedCall(Backoff(2, 0.0))
    if mark == "permanent":
        with pytest.raises(RemoteRewardError, match="server says no"):
            guard(fn)
    else:
        out, rep = guard(fn)
        assert out is None and rep.error == "RemoteRewardError: server says no"
    assert len(calls) == attempts


def test_a_call_past_its_timeout_is_abandoned_and_retried():
    release, names = threading.Event(), []

    def fn():
        names.append(threading.current_thread().name)
        if len(names) == 1:
            release.wait(10)
            return "late"
        return "fresh"

    t0 = time.monotonic()
    out, rep = GuardedCall(Backoff(1, 0.0), timeout_s=0.2)(fn)
    assert out == "fresh" and rep.timeouts == 1 and rep.retries == 1 and time.monotonic() - t0 < 5
    assert names == ["dgpo-reward-call"] * 2  # each attempt in its own thread: the first one still waits
    release.set()
    with pytest.raises(ValueError, match="timeout_s must be >= 0"):
        GuardedCall(timeout_s=-1)


def test_screening_drops_whole_groups_and_keeps_them_out_of_the_others_advantages():
    g = torch.arange(12) // 4
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, NAN, 1.0, 1.0, 5.0, 3.0, 1.0, 2.0])
    failed = torch.zeros(12, dtype=torch.bool)
    er = screen_rewards(rewards, {"a": rewards.clone()}, failed, g, 3)
    assert er.alive.tolist() == [True] * 4 + [False] * 4 + [True] * 4 and er.cause == "reward"
    assert er.counts == {"dropped_groups": 1, "nonfinite_rewards": 1} and er.live_groups.tolist() == [0, 2]
    assert torch.isfinite(er.rewards).all() and er.live_ids(g).tolist() == [0] * 4 + [1] * 4
    kept = torch.cat([rewards[:4], rewards[8:]])
    for std in ("group", "global"):  # the global std is that of the kept groups' rewards
        adv, zero = masked_advantages(er, {"a": 1.0}, g, 3, "weighted_sum", std, 5.0)
        ref, ref_zero = group_advantages(kept, torch.tensor([0] * 4 + [1] * 4), std)
        assert torch.equal(adv[er.alive], ref) and (adv[4:8] == 0).all()
        assert zero.tolist() == [ref_zero[0].item(), True, ref_zero[1].item()]
    failed[0] = True
    er = screen_rewards(rewards, {}, failed, g, 3)
    assert er.cause == "reward_failure" and er.counts == {"dropped_groups": 2, "nonfinite_rewards": 1}
    full, _ = masked_advantages(screen_rewards(rewards.nan_to_num(), {}, failed * 0, g, 3), {}, g, 3,
                                "weighted_sum", "group", 5.0)
    assert torch.equal(full, group_advantages(rewards.nan_to_num(), g)[0])  # nothing dropped: unchanged


def test_fault_options_are_validated():
    for bad in ["train.max_bad_steps=0", "reward.max_failures=0", "reward.call_timeout_s=-1", "reward.backoff_s=nan",
                "reward.max_backoff_s=4000", "reward.retries=21"]:
        with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
            load_config(None, [bad])


# ---------------------------------------------------------------- the remote reward in training

def _cfg(tiny, out, *extra):
    return load_config(None, [
        f"model.path={tiny}", f"run.out_dir={out}", "run.epochs=2", "run.sample_every=0", "run.save_every=0",
        "run.eval_at_ends=false", "run.log_with=none", "train.prompts_per_epoch=2", "train.group_size=4",
        "train.batch_size=4", "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=3",
        "timesteps.trunc_steps=2", "timesteps.count=2", "dgpo.switch_ema_ref=0",
        "reward.name=jpeg_incompressibility", "reward.backoff_s=0", *extra])


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _policy(out):
    return load_file(str(sorted((out / "checkpoints").iterdir())[-1] / "policy.safetensors"))


class _FailsFirst:
    """The real reward behind the server, raising on its first ``n`` calls (the server answers 500)."""

    def __init__(self, n):
        self.fn, self.n, self.calls = build_reward("jpeg_incompressibility"), n, 0

    def __call__(self, images, metas):
        self.calls += 1
        if self.calls <= self.n:
            raise RuntimeError("CUDA out of memory (scripted)")
        return self.fn(images, metas)


def test_a_remote_server_failing_once_is_retried_and_training_is_unchanged(tiny_toy, tmp_path):
    Trainer(_cfg(tiny_toy, tmp_path / "local")).fit()
    scorer = _FailsFirst(1)
    with RewardServer(scorer, "flaky") as srv:
        Trainer(_cfg(tiny_toy, tmp_path / "remote", "reward.name=remote", f"reward.url={srv.url}")).fit()
    rows = _rows(tmp_path / "remote")
    assert rows[0]["reward_retries"] == 1 and rows[0]["reward_failures"] == 0 and scorer.calls == 5
    local, remote = _policy(tmp_path / "local"), _policy(tmp_path / "remote")
    assert all(torch.equal(local[k], remote[k]) for k in local)


def test_a_remote_server_that_goes_away_stops_the_run_after_max_failures(tiny_toy, tmp_path):
    srv = RewardServer(build_reward("jpeg_incompressibility"), "jpeg").start()
    tr = Trainer(_cfg(tiny_toy, tmp_path / "run", "reward.name=remote", f"reward.url={srv.url}",
                      "reward.retries=1", "reward.max_failures=2"))  # the client checked /health: it was up
    srv.close()
    with pytest.raises(RunHalted, match=r"reward.max_failures=2: .*gave up after 2 attempts.*cannot connect"):
        tr.fit()
    assert [(r["bad_cause"], r["dropped_groups"], r["reward_failures"]) for r in _rows(tmp_path / "run")] == [
        ("reward_failure", 2, 2)] * 2


class _Busy(BaseHTTPRequestHandler):
    """A dgpo reward server that is always busy (503), or answers after 1 s the requests in ``slow``."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        self._send(200, {"protocol": PROTOCOL, "scorer": "busy", "version": "1"})

    def do_POST(self):
        metas = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["metas"]
        self.server.calls += 1
        if self.server.calls in self.server.slow:
            time.sleep(1.0)
        ok = bool(self.server.slow)
        self._send(200 if ok else 503, {"rewards": [1.5] * len(metas)} if ok else {"error": "busy"})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except BrokenPipeError:  # the client stopped waiting for a slow answer
            pass


@pytest.fixture
def busy():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    srv.calls, srv.slow = 0, set()
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_client_and_trainer_retries_do_not_multiply(tiny_toy, tmp_path, busy):
    url = f"http://127.0.0.1:{busy.server_address[1]}"
    tr = Trainer(_cfg(tiny_toy, tmp_path / "run", "reward.name=remote", f"reward.url={url}", "reward.retries=2",
                      "reward.max_failures=1"))
    with pytest.raises(RunHalted, match="HTTP 503: busy"):
        tr.fit()
    assert busy.calls == 2 * 3  # 2 chunks x (1 + 2 retries) requests, not x 3 again


def test_a_remote_timeout_is_retried_by_the_guard(busy):
    busy.slow = {1, 2}
    remote = RemoteReward(f"http://127.0.0.1:{busy.server_address[1]}", timeout_s=0.3, retries=3, backoff_s=0)
    images, metas = torch.rand(2, 3, 8, 8), [{"prompt": "p"}] * 2
    with pytest.raises(RemoteRewardError, match=r"no answer within 0.3 s") as e:
        remote(images, metas)  # the client itself does not resend an unanswered request
    assert not e.value.permanent and not e.value.retried and busy.calls == 1
    out, rep = GuardedCall(Backoff(1, 0.0))(remote, images, metas)  # request 2 times out, 3 is answered
    assert out.tolist() == [1.5, 1.5] and rep.retries == 1 and busy.calls == 3


def test_the_cli_reports_a_halted_run_as_an_error(monkeypatch, capsys):
    from dgpo import cli

    def halted(a):
        raise RunHalted("train.max_bad_steps=5: 5 optimizer steps in a row were skipped")

    monkeypatch.setattr(cli, "cmd_train", halted)
    assert cli.main(["train"]) == 2
    assert "dgpo train: error: train.max_bad_steps=5: 5 optimizer steps" in capsys.readouterr().err
