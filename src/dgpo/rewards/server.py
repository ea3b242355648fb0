"""``dgpo reward serve``: one reward as an HTTP service, for scorers whose dependencies clash with the
trainer's or that need their own GPU.

Built on the standard library's ``ThreadingHTTPServer`` (no extra dependency in the scorer's
environment), with the limits it lacks made explicit: a bearer token compared in constant time;
loopback by default and any other address refused without a token; ``Content-Length`` required and
checked before the body is read (413); item and pixel limits checked before any pixel is decoded
(413 / 400); a socket timeout and a whole-body deadline (408); at most ``max_connections`` handler
threads (503); one GPU lock with a bounded queue in front of it (503 when full, 504 when the wait
outlasts ``timeout_s``). JSON only (:mod:`dgpo.rewards.wire`); the answer to every error is a JSON
message and the server keeps serving. A video reward (``modality = "video"``) is served the same way:
its requests carry videos [B, F, 3, H, W]; a request of the other kind is a 400. For other hosts, keep it
behind a TLS proxy or an SSH tunnel.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from dgpo import __version__
from dgpo.errors import InputError, UserError, one_line
from dgpo.rewards.modality import SHAPES, modality_of
from dgpo.rewards.wire import PROTOCOL, Limits, ScoreRequest, WireError, dumps, parse_score_request, score_values

log = logging.getLogger("dgpo.reward_server")
MIN_TOKEN_CHARS = 16
LINGER_BYTES, LINGER_S = 4 << 20, 1.0  # drain an unread body this far so the error answer arrives


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_bind(host: str, token: str) -> None:
    """Refuse a weak token, and any non-loopback address without a token, before anything binds."""
    if token and len(token) < MIN_TOKEN_CHARS:
        raise InputError(f"the reward server's token has {len(token)} characters; use at least "
                         f"{MIN_TOKEN_CHARS} (python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if not token and not is_loopback(host):
        raise InputError(f"refusing to listen on {host or 'all interfaces'!r} without a token: anyone who "
                         "reaches it could use the GPU; set DGPO_REWARD_TOKEN or --token-file, "
                         "or bind 127.0.0.1")


def describe(fn) -> str:
    return str(getattr(fn, "version", None) or getattr(fn, "__qualname__", None) or type(fn).__name__)


class RewardApp:
    """The scorer behind the HTTP layer: at most ``queue_size`` requests wait for its one GPU lock."""

    def __init__(self, reward_fn, name: str, limits: Limits = Limits(), batch_size: int = 32,
                 queue_size: int = 8, timeout_s: float = 600.0, device: str = "cpu"):
        self.fn, self.name, self.limits, self.batch_size = reward_fn, name, limits, batch_size
        self.modality = modality_of(reward_fn)
        self.timeout_s, self.device, self.queue_size = timeout_s, device, queue_size
        self.gpu_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(queue_size + 1)  # the one scoring + those waiting
        self._count_lock, self.in_flight, self.served = threading.Lock(), 0, 0

    def health(self) -> dict:
        return {"status": "ok", "scorer": self.name, "version": describe(self.fn), "dgpo": __version__,
                "protocol": PROTOCOL, "modality": self.modality, "device": self.device, "batch_size": self.batch_size,
                "limits": self.limits.as_dict(), "queue_size": self.queue_size, "in_flight": self.in_flight,
                "served": self.served}

    def score(self, req: ScoreRequest) -> tuple[int, dict]:
        if req.modality != self.modality:
            return 400, {"error": f"the scorer {self.name!r} scores {SHAPES[self.modality]}; this request holds "
                                  f"{SHAPES[req.modality]} (videos need 'shape' [B, F, 3, H, W])"}
        if not self._slots.acquire(blocking=False):
            return 503, {"error": f"busy: {self.queue_size} requests already wait for the GPU; retry later"}
        self._count(+1)
        try:
            if not self.gpu_lock.acquire(timeout=self.timeout_s):
                return 504, {"error": f"timed out: the GPU stayed busy for {self.timeout_s:g} s"}
            try:
                return 200, self._run(req)
            except UserError as e:  # the request's metadata is not what the scorer reads
                return 400, {"error": f"the scorer {self.name!r} refused the request: {one_line(str(e))}"}
            except Exception as e:  # noqa: BLE001 - the scorer's failure is the client's answer, not a crash
                log.exception("scorer %s failed", self.name)
                return 500, {"error": f"the scorer {self.name!r} failed: {type(e).__name__}: {e}"}
            finally:
                self.gpu_lock.release()
        finally:
            self._count(-1)
            self._slots.release()

    def _count(self, d: int) -> None:
        with self._count_lock:
            self.in_flight += d
            self.served += d < 0

    def _run(self, req: ScoreRequest) -> dict:
        rewards: list[float] = []
        correct: list[float] = []
        strict = req.mode == "eval" and hasattr(self.fn, "eval_scores")
        for a in range(0, len(req.images), self.batch_size):
            images, metas = req.images[a : a + self.batch_size], req.metas[a : a + self.batch_size]
            if strict:
                scored = self.fn.eval_scores(images, metas)
                correct += [float(s[0]) for s in scored]
                rewards += [float(s[1]) for s in scored]
            else:
                r = torch.as_tensor(self.fn(images, metas)).float().reshape(-1).tolist()
                rewards += r
                correct += r
        if len(rewards) != len(req.images) or len(correct) != len(req.images):
            raise ValueError(f"returned {len(rewards)} values for {len(req.images)} {req.modality}s")
        # a non-finite score is that sample's null: the client drops its group, not the whole call
        out = {"protocol": PROTOCOL, "scorer": self.name, "rewards": score_values(rewards)}
        return {**out, "correct": score_values(correct)} if req.mode == "eval" else out


class _Handler(BaseHTTPRequestHandler):
    server_version = f"dgpo-reward/{__version__}"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection
    default_request_version = "HTTP/1.0"  # an unparseable request line still gets a status line

    def setup(self) -> None:
        self.timeout = self.server.read_timeout_s  # socket timeout of every read and write
        self._unread = 0
        super().setup()

    def log_message(self, fmt: str, *args) -> None:  # never the headers (the token)
        log.info("%s %s", self.address_string(), fmt % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a bad request line, an unsupported method) as JSON too."""
        self._send(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/health":
            return self._not_found()
        if self._authorised():
            self._send(200, self.server.app.health())

    def do_POST(self) -> None:
        try:
            self._unread = self._declared_length()
            if self.path.split("?")[0] != "/score":
                return self._not_found()
            if not self._authorised():
                return
            body = self._body()
            if body is None:
                return
            status, payload = self.server.app.score(parse_score_request(body, self.server.app.limits))
            self._send(status, payload)
        except WireError as e:
            self._send(e.status, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - answer, log, keep serving
            log.exception("request failed")
            self._send(500, {"error": f"internal error: {type(e).__name__}: {e}"})

    def _not_found(self) -> None:
        self._send(404, {"error": f"no such endpoint {self.path!r} (GET /health, POST /score)"})

    def _authorised(self) -> bool:
        token = self.server.token
        if not token:
            return True
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
            return True
        self._send(401, {"error": "missing or wrong bearer token (Authorization: Bearer ...)"},
                   {"WWW-Authenticate": 'Bearer realm="dgpo-reward"'})
        return False

    def _declared_length(self) -> int:
        raw = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise WireError("Transfer-Encoding is not supported; send a Content-Length", 411)
        if raw is None:
            raise WireError("a Content-Length header is required", 411)
        if not raw.strip().isdigit():
            raise WireError(f"bad Content-Length {raw!r}")
        length = int(raw)
        if length > self.server.app.limits.max_body_bytes:
            self._unread = length
            raise WireError(f"the body has {length} bytes; this server takes at most "
                            f"{self.server.app.limits.max_body_bytes}", 413)
        return length

    def _body(self) -> bytes | None:
        deadline, parts, total = time.monotonic() + self.server.read_timeout_s, [], self._unread
        try:
            while self._unread > 0:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = self.rfile.read1(min(1 << 20, self._unread))
                if not chunk:
                    raise WireError(f"the body ended after {total - self._unread} of {total} bytes")
                parts.append(chunk)
                self._unread -= len(chunk)
        except TimeoutError:
            self._send(408, {"error": f"the body did not arrive within {self.server.read_timeout_s:g} s"})
            return None
        return b"".join(parts)

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = dumps(payload)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            if status == 503:
                self.send_header("Retry-After", "1")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError as e:
            log.info("could not answer %s: %s", self.address_string(), e)
        self.close_connection = True
        if self._unread:
            self._linger()

    def _linger(self) -> None:
        """Drain some of an unread body after answering, so that closing does not reset the connection
        (which can destroy the answer in the client's buffer) -- bounded in bytes and time."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_S)
            end, left = time.monotonic() + LINGER_S, min(self._unread, LINGER_BYTES)
            while left > 0 and time.monotonic() < end:
                chunk = self.rfile.read1(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass
        self._unread = 0


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address, app: RewardApp, token: str, read_timeout_s: float, max_connections: int):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app, self.token, self.read_timeout_s = app, token, read_timeout_s
        self._connections = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        if not self._connections.acquire(blocking=False):
            body = dumps({"error": "too many connections; retry later"})
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._connections.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()


class RewardServer:
    """``RewardServer(fn, name).start()`` serves in a background thread; ``serve_forever()`` in this one."""

    def __init__(self, reward_fn, name: str, host: str = "127.0.0.1", port: int = 0, token: str = "",
                 limits: Limits = Limits(), batch_size: int = 32, queue_size: int = 8,
                 timeout_s: float = 600.0, read_timeout_s: float = 120.0, max_connections: int = 64,
                 device: str = "cpu"):
        check_bind(host, token)
        self.app = RewardApp(reward_fn, name, limits, batch_size, queue_size, timeout_s, device)
        self.httpd = _HTTPServer((host, port), self.app, token, read_timeout_s, max_connections)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> RewardServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="dgpo-reward-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever(poll_interval=0.5)
        finally:
            self.httpd.server_close()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> RewardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
