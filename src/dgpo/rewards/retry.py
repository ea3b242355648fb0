"""Bounded retries with exponential backoff, and a reward call that survives its faults.

:class:`Backoff` is the one retry schedule of dgpo's rewards: the remote client
(:mod:`dgpo.rewards.remote`) waits by it between requests, the trainer's :class:`GuardedCall`
between whole reward calls (``reward.retries``, ``reward.backoff_s``, ``reward.max_backoff_s``).

A guarded call

* retries whatever the reward raises, ``retries`` times, except an error marked ``permanent`` (a
  configuration error such as the remote server's 401: raised at once, it stops the run) and one
  marked ``retried`` (the remote client already retried it on the same schedule: a failure at once,
  so that the two layers never multiply their attempts);
* with ``timeout_s > 0`` gives up on an attempt after ``timeout_s`` seconds and retries it. Python
  cannot stop a thread, so each attempt then runs in a daemon thread of its own, and one that timed
  out is *abandoned*: it runs on until the reward returns, its result is discarded, and the retry
  runs beside it (the reward must tolerate two concurrent calls and the memory both take). A reward
  that never returns keeps its thread until the process exits. With ``timeout_s = 0`` the reward
  runs in the caller's thread and a hang hangs the run (the remote reward has its own socket
  timeout, ``reward.timeout_s``);
* returns ``(result, report)``: ``result`` is None when every attempt failed, and ``report`` counts
  the retries and timeouts and keeps the last error. It never raises a reward's transient fault.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """``retries`` retries; before retry k (0-based) wait ``base_s * 2**k``, at most ``max_s``, at
    least what the other side asked for (``hint_s``, e.g. a ``Retry-After``)."""

    retries: int = 4
    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int, hint_s: float = 0.0) -> float:
        return min(self.max_s, max(self.base_s * 2**attempt, hint_s))


class RewardCallTimeout(TimeoutError):
    """An attempt of a guarded reward call did not return within its time limit."""


@dataclass
class CallReport:
    attempts: int = 0
    retries: int = 0
    timeouts: int = 0
    error: str = ""  # the last attempt's error; "" when the call succeeded

    @property
    def failed(self) -> bool:
        return bool(self.error)


class GuardedCall:
    def __init__(self, backoff: Backoff = Backoff(), timeout_s: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep):
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be >= 0, got {timeout_s}")
        self.backoff, self.timeout_s, self.sleep = backoff, timeout_s, sleep

    def __call__(self, fn: Callable[..., Any], *args) -> tuple[Any, CallReport]:
        report = CallReport()
        for attempt in range(self.backoff.retries + 1):
            report.attempts += 1
            try:
                out = self._attempt(fn, args, report)
                report.error = ""
                return out, report
            except Exception as e:  # noqa: BLE001 - every fault of the reward is the reward's failure
                if getattr(e, "permanent", False):
                    raise
                report.error = f"{type(e).__name__}: {e}"
                if getattr(e, "retried", False) or attempt == self.backoff.retries:
                    break
                delay = self.backoff.delay(attempt)
                log.warning("reward call failed (%s); retry %d/%d in %.1f s", report.error, attempt + 1,
                            self.backoff.retries, delay)
                report.retries += 1
                self.sleep(delay)
        log.error("reward call failed after %d attempts: %s", report.attempts, report.error)
        return None, report

    def _attempt(self, fn: Callable[..., Any], args: tuple, report: CallReport) -> Any:
        if self.timeout_s <= 0:
            return fn(*args)
        box: dict[str, Any] = {}
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        device = torch.cuda.current_device() if cuda else None  # CUDA's current device is per thread

        def run() -> None:
            if device is not None:
                torch.cuda.set_device(device)
            try:
                box["out"] = fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = e

        t = threading.Thread(target=run, name="dgpo-reward-call", daemon=True)
        t.start()
        t.join(self.timeout_s)
        if t.is_alive():
            report.timeouts += 1
            raise RewardCallTimeout(f"no result within reward.call_timeout_s={self.timeout_s:g} s "
                                    "(the call runs on in the background; its result will be discarded)")
        if "error" in box:
            raise box["error"]
        return box["out"]
