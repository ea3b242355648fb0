"""The ``remote`` reward: a ``dgpo reward serve`` server scores the images (:mod:`dgpo.rewards.wire`).

The client reads the server's limits and the kind of input its scorer takes (``modality``: images, or
videos [B, F, 3, H, W]) from ``/health`` (which also checks the token and the protocol), and splits a
batch into requests that respect the limits (whole videos: a request's item limit counts their frames). It
retries only what a retry can fix -- a failed connection and the answers 502, 503 (busy) and 504 (timed
out) -- ``retries`` times with exponential backoff (``Retry-After`` honoured, capped:
:class:`~dgpo.rewards.retry.Backoff`), then raises :class:`RemoteRewardError` naming the server, the
attempts and the last error. Any other answer (400, 401, 413, 500) fails at once with the server's
message; so does a response that does not arrive within ``timeout_s`` (the server may still be scoring
it: sending it again at once would only add load).

A sample the scorer gave a non-finite value comes back as NaN (``null`` on the wire, protocol 3): in
training only its group is dropped, in an eval only that image is left unscored, as with an in-process
reward.

In training, the trainer's guarded call (:mod:`dgpo.rewards.retry`) retries a failed call as a whole
after a backoff -- a 500 or a timeout, not an error marked ``retried`` (the retries here are spent)
nor one marked ``permanent`` (a 4xx answer or a bad setup: a configuration error stops the run).
"""

from __future__ import annotations

import http.client
import logging
import time
from urllib.parse import urlsplit

import torch

from dgpo import __version__
from dgpo.errors import InputError
from dgpo.rewards.retry import Backoff
from dgpo.rewards.wire import PROTOCOL, Limits, WireError, check_scores, dumps, encode_images, loads

log = logging.getLogger(__name__)
RETRY_STATUS = (502, 503, 504)
HINTS = {401: " (the token: the server's DGPO_REWARD_TOKEN, in the variable named by reward.token_env)",
         413: " (the server's --max-body-mb / --max-items)"}


class RemoteRewardError(ValueError):
    """The remote reward could not be computed: the server is unreachable, refused, or answered badly.

    ``permanent``: retrying cannot help (a 4xx answer, a server that is no dgpo reward server, an image
    over the server's limits); ``retried``: the client's own retries are spent."""

    def __init__(self, message: str, permanent: bool = False, retried: bool = False):
        super().__init__(message)
        self.permanent, self.retried = permanent, retried


class _Retryable(Exception):
    pass


class JsonClient:
    """JSON over HTTP(S) to one server with the retry policy above: ``who`` names it in errors, ``down``
    is the hint when it cannot be reached."""

    who, down = "remote reward", "Is `dgpo reward serve` running there?"
    hints, retry_status = HINTS, RETRY_STATUS

    def __init__(self, url: str, token: str = "", timeout_s: float = 600.0, retries: int = 4,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0, url_key: str = "reward.url"):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"{url_key}: {url!r} must look like http://HOST:PORT")
        self.url, self.scheme, self.host = url.rstrip("/"), parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base = parts.path.rstrip("/")
        self.token, self.timeout_s, self.retries = token, timeout_s, retries
        self.backoff = Backoff(retries, backoff_s, max_backoff_s)
        from dgpo.rewards.server import is_loopback

        if token and self.scheme == "http" and not is_loopback(self.host):
            log.warning("%s: the token travels unencrypted to %s; use https or an SSH tunnel", self.who, self.host)

    # ---------------------------------------------------------------- requests
    def _request(self, method: str, path: str, body: bytes | None = None) -> dict:
        t0, last = time.monotonic(), ""
        for attempt in range(self.retries + 1):
            try:
                return self._once(method, path, body)
            except _Retryable as e:
                last, wait = str(e.args[0]), e.args[1]
            if attempt < self.retries:
                delay = self.backoff.delay(attempt, wait)
                log.warning("%s %s%s: %s; retry %d/%d in %.1f s", self.who, self.url, path, last,
                            attempt + 1, self.retries, delay)
                time.sleep(delay)
        raise RemoteRewardError(f"{self.who} {self.url}{path}: gave up after {self.retries + 1} attempts "
                                f"in {time.monotonic() - t0:.1f} s; last error: {last}. {self.down}", retried=True)

    def _once(self, method: str, path: str, body: bytes | None) -> dict:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.timeout_s)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            try:
                conn.connect()
            except OSError as e:  # refused, unreachable, connect timeout, name resolution
                raise _Retryable(f"cannot connect: {e}", 0.0) from None
            try:
                conn.request(method, self.base + path, body=body, headers=headers)
            except ConnectionError as e:  # the server may have answered (401, 413) and closed: read that
                try:
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    raise _Retryable(f"connection lost while sending: {e}", 0.0) from None
            except OSError as e:  # a send timeout: the server does not read
                raise RemoteRewardError(f"{self.who} {self.url}{path}: sending failed: {e!r}") from None
            else:
                try:
                    resp = conn.getresponse()
                except TimeoutError:
                    raise RemoteRewardError(f"{self.who} {self.url}{path}: no answer within "
                                            f"{self.timeout_s:g} s (reward.timeout_s)") from None
                except (ConnectionError, http.client.HTTPException) as e:
                    raise _Retryable(f"connection lost before the answer: {e!r}", 0.0) from None
            return self._answer(path, resp)
        finally:
            conn.close()

    def _answer(self, path: str, resp: http.client.HTTPResponse) -> dict:
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise _Retryable(f"connection lost while reading the answer: {e!r}", 0.0) from None
        try:
            payload = loads(data, "answer")
        except WireError:
            payload = {"error": data[:200].decode("utf-8", "replace")}
        if resp.status in self.retry_status:
            retry_after = resp.getheader("Retry-After", "0")
            wait = float(retry_after) if retry_after.strip().isdigit() else 0.0
            raise _Retryable(f"HTTP {resp.status}: {self._message(payload)}", wait)
        if resp.status != 200:
            raise RemoteRewardError(f"{self.who} {self.url}{path} answered {resp.status}: "
                                    f"{self._message(payload)}{self.hints.get(resp.status, '')}",
                                    permanent=400 <= resp.status < 500 and resp.status not in (408, 429))
        if not isinstance(payload, dict):
            raise RemoteRewardError(f"{self.who} {self.url}{path}: the answer is not a JSON object")
        return payload

    @staticmethod
    def _message(payload) -> str:
        return str(payload.get("error", payload) if isinstance(payload, dict) else payload)[:500]


class RemoteReward(JsonClient):
    def __init__(self, url: str, token: str = "", timeout_s: float = 600.0, retries: int = 4,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0):
        super().__init__(url, token, timeout_s, retries, backoff_s, max_backoff_s)
        self.info = self.health()
        known = Limits().as_dict()
        self.limits = Limits(**{k: int(v) for k, v in self.info.get("limits", {}).items() if k in known})
        self.modality = "video" if self.info.get("modality") == "video" else "image"
        self.version = f"remote {self.url}: {self.info.get('scorer')} [{self.info.get('version')}]"
        log.info("remote reward: %s", self.version)

    def health(self) -> dict:
        info = self._request("GET", "/health")
        theirs = info.get("protocol") if isinstance(info, dict) else None
        if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs != PROTOCOL:
            raise RemoteRewardError(f"remote reward {self.url}: the server speaks protocol {theirs} (dgpo "
                                    f"{str(info.get('dgpo'))[:20]}), this client protocol {PROTOCOL} (dgpo "
                                    f"{__version__}); "
                                    "run the same dgpo version on both sides", permanent=True)
        if not isinstance(info, dict) or info.get("protocol") != PROTOCOL:
            raise RemoteRewardError(f"remote reward {self.url}: /health did not answer as a dgpo reward "
                                    f"server (protocol {PROTOCOL}): {str(info)[:200]}", permanent=True)
        return info

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        return torch.tensor(self._score(images, metas, "reward")["rewards"], dtype=torch.float32)

    def eval_scores(self, images: torch.Tensor, metas: list[dict]) -> list[tuple[float, float]]:
        """(strict correctness, reward) per image when the scorer has one (GenEval), else (reward, reward)."""
        out = self._score(images, metas, "eval")
        return list(zip(out["correct"], out["rewards"]))

    def _score(self, images: torch.Tensor, metas: list[dict], mode: str) -> dict:
        if len(images) != len(metas):
            raise ValueError(f"remote reward: {len(images)} images but {len(metas)} metadata rows")
        frames = images.shape[1] if images.ndim == 5 else 1  # a video's PNGs travel together
        flat = encode_images(images)
        encoded = [flat[i * frames : (i + 1) * frames] for i in range(len(images))]
        rewards: list[float] = []
        correct: list[float] = []
        for a, b in self._split(encoded, metas):
            body = dumps({"protocol": PROTOCOL, "mode": mode, "shape": [b - a, *images.shape[1:]],
                          "images": [png for item in encoded[a:b] for png in item], "metas": metas[a:b]})
            out = self._request("POST", "/score", body)
            try:
                rewards += check_scores(out.get("rewards"), b - a, "rewards")
                if mode == "eval":
                    correct += check_scores(out.get("correct"), b - a, "correct")
            except (WireError, AttributeError) as e:
                raise RemoteRewardError(f"remote reward {self.url}: a bad answer: {e}") from None
        return {"rewards": rewards, "correct": correct}

    def _split(self, encoded: list[list[str]], metas: list[dict]) -> list[tuple[int, int]]:
        """[a, b) ranges of images (or videos: each a list of its frames' PNGs) of at most max_items PNGs
        whose bodies stay under max_body_bytes."""
        spans, start, size, count, budget = [], 0, 0, 0, self.limits.max_body_bytes - 1024
        for i, (pngs, meta) in enumerate(zip(encoded, metas)):
            unit = "image" if len(pngs) == 1 else f"video ({len(pngs)} frames)"
            item = sum(len(p) + 3 for p in pngs) + len(dumps(meta)) + 8
            if item > budget or len(pngs) > self.limits.max_items:
                raise RemoteRewardError(f"remote reward {self.url}: {unit} {i} alone ({item} bytes, {len(pngs)} "
                                        f"PNGs) exceeds the server's limits of {self.limits.max_body_bytes} bytes "
                                        f"and {self.limits.max_items} images per request", permanent=True)
            if i > start and (count + len(pngs) > self.limits.max_items or size + item > budget):
                spans.append((start, i))
                start, size, count = i, 0, 0
            size += item
            count += len(pngs)
        spans.append((start, len(encoded)))
        return spans
