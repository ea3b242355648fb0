"""The reward server over real HTTP on 127.0.0.1, and the remote reward's client (retries, errors)."""

import base64
import http.client
import io
import json
import socket
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from geneval_tiny import build_clip
from PIL import Image

from dgpo.rewards import build_reward
from dgpo.rewards.remote import RemoteReward, RemoteRewardError
from dgpo.rewards.server import RewardServer, check_bind
from dgpo.rewards.wire import PROTOCOL, Limits, encode_images

TOKEN = "t0k3n-" + "x" * 26


def _images(n=3, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, h, w, generator=g) * 255).round() / 255  # 8-bit values: PNG is lossless on them


@pytest.fixture(scope="module")
def clipscore(tmp_path_factory):
    return build_reward("clipscore", clip_path=str(build_clip(tmp_path_factory.mktemp("clip") / "clip")))


@pytest.fixture(scope="module")
def server(clipscore):
    limits = Limits(max_body_bytes=200_000, max_items=8, max_pixels=64 * 64)
    with RewardServer(clipscore, "clipscore", token=TOKEN, limits=limits, batch_size=2,
                      read_timeout_s=5) as srv:
        yield srv


def _raw(srv, method, path, body=b"", headers=None, token=TOKEN):
    host, port = srv.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    h = {"Authorization": f"Bearer {token}"} if token else {}
    h.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), resp
    finally:
        conn.close()


def _recv_all(s):
    """Everything the server sends until it closes the connection (headers and body may come apart)."""
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _body(images=None, metas=None, **extra):
    images = _images(2) if images is None else images
    metas = [{"prompt": f"p{i}"} for i in range(len(images))] if metas is None else metas
    return json.dumps({"protocol": PROTOCOL, "images": encode_images(images), "metas": metas, **extra}).encode()


def _png_claiming(width, height):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    raw[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR width, height
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")  # IHDR's CRC, so only the size is wrong
    return base64.b64encode(bytes(raw)).decode()


def test_remote_scores_equal_in_process_scores(server, clipscore):
    remote = RemoteReward(server.url, token=TOKEN)
    assert remote.info["scorer"] == "clipscore" and remote.info["version"] == clipscore.version
    assert remote.limits.max_items == 8
    images, metas = _images(11), [{"prompt": f"a photo of {i} cats", "tag": "x"} for i in range(11)]
    # the server scores in batches of 2 (requests of at most 8 images: 8 + 3); CLIP's numbers depend on
    # the batch at float rounding, so the in-process reference is scored in the same batches
    local = torch.cat([clipscore(images[i : i + 2], metas[i : i + 2]) for i in range(0, 11, 2)])
    assert torch.equal(remote(images, metas), local)  # 11 images: split into requests of at most 8
    assert [c for c, _ in remote.eval_scores(images, metas)] == local.tolist()


@pytest.mark.parametrize("token", ["", "wrong-token-of-enough-length", "Basic " + TOKEN])
def test_missing_or_wrong_token_is_401(server, token):
    headers = {"Authorization": token} if token.startswith("Basic") else None
    status, payload, resp = _raw(server, "POST", "/score", _body(), headers=headers,
                                 token="" if headers else token)
    assert status == 401 and "token" in payload["error"]
    assert resp.getheader("WWW-Authenticate").startswith("Bearer")
    assert _raw(server, "GET", "/health", token=token if not headers else "")[0] == 401
    with pytest.raises(RemoteRewardError, match="answered 401: missing or wrong bearer token"):
        RemoteReward(server.url, token=token)


JPEG_START = base64.b64encode(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00").decode()


def _bad_requests():
    one = encode_images(_images(1))[0]
    return [
        (b"x" * 300_000, 413, "at most 200000"),
        (json.dumps({"images": [one] * 9, "metas": [{}] * 9}).encode(), 413, "limit of 8 per request"),
        (b'{"images": [', 400, "malformed JSON"),
        (b"\xff\xfe{}", 400, "not UTF-8"),
        (json.dumps({"images": ["%%%not base64%%%"], "metas": [{}]}).encode(), 400, "images[0]: bad base64"),
        (json.dumps({"images": [JPEG_START], "metas": [{}]}).encode(), 400, "images[0]: not a PNG"),
        (json.dumps({"images": [_png_claiming(100_000, 100_000)], "metas": [{}]}).encode(), 400,
         "100000x100000 = 10000000000 pixels exceeds the server's limit of 4096"),
        (json.dumps({"images": [one[:-40]], "metas": [{}]}).encode(), 400, "images[0]"),
        (b'{"images": ["' + one.encode() + b'"], "metas": [{"prompt": NaN}]}', 400, "NaN is not allowed"),
        (json.dumps({"images": [one], "metas": [{}, {}]}).encode(), 400, "'metas' must be a list of 1"),
        (json.dumps({"images": [one], "metas": [{}], "mode": "train"}).encode(), 400, "mode 'train'"),
        (json.dumps([1, 2]).encode(), 400, "must be a JSON object"),
        (json.dumps({"images": [one], "metas": [{}]}).encode(), 400, "needs a 'prompt'"),  # the scorer refuses it
    ]


BAD_IDS = ["body", "items", "json", "utf8", "base64", "jpeg", "pixels", "truncated", "nan", "metas", "mode",
           "not-object", "scorer-error"]


@pytest.mark.parametrize("body,status,message", _bad_requests(), ids=BAD_IDS)
def test_bad_requests_get_a_message_and_the_server_keeps_serving(server, body, status, message):
    got, payload, _ = _raw(server, "POST", "/score", body)
    assert got == status and message in payload["error"], payload
    ok, answer, _ = _raw(server, "POST", "/score", _body())
    assert ok == 200 and len(answer["rewards"]) == 2


def test_length_and_endpoint_errors(server):
    host, port = server.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:  # headers only: 413 before any body
        s.sendall(f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  "Content-Length: 999999999\r\n\r\n".encode())
        assert _recv_all(s).startswith(b"HTTP/1.0 413")
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        assert _recv_all(s).startswith(b"HTTP/1.0 411")
    assert _raw(server, "GET", "/nope")[0] == 404
    status, payload, _ = _raw(server, "PUT", "/score", b"{}")
    assert status == 501 and "PUT" in payload["error"]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        head, _, body = _recv_all(s).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 400") and "error" in json.loads(body)
    status, health, _ = _raw(server, "GET", "/health")
    assert status == 200 and health["scorer"] == "clipscore" and health["limits"]["max_items"] == 8


def test_non_loopback_without_token_is_refused_before_binding(monkeypatch):
    monkeypatch.delenv("DGPO_REWARD_TOKEN", raising=False)
    fn = build_reward("colorfulness")
    for host in ("0.0.0.0", "", "192.0.2.10", "::"):
        with pytest.raises(ValueError, match="refusing to listen .* without a token"):
            RewardServer(fn, "colorfulness", host=host)
    with pytest.raises(ValueError, match="use at least 16"):
        check_bind("127.0.0.1", "short")
    check_bind("127.0.0.1", "")
    check_bind("localhost", "")
    check_bind("::1", "")
    from dgpo.cli import main

    assert main(["reward", "serve", "--reward", "colorfulness", "--host", "0.0.0.0"]) == 2


class _Blocking:
    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, images, metas):
        self.started.set()
        assert self.release.wait(20)
        return torch.zeros(len(images))


def test_one_gpu_lock_busy_is_503_and_a_long_wait_504():
    for queue, timeout, expect in ((0, 30.0, 503), (1, 0.3, 504)):
        fn = _Blocking()
        with RewardServer(fn, "blocking", queue_size=queue, timeout_s=timeout) as srv:
            first = threading.Thread(target=lambda: _raw(srv, "POST", "/score", _body(), token=""))
            first.start()
            assert fn.started.wait(10)
            status, payload, resp = _raw(srv, "POST", "/score", _body(), token="")
            assert status == expect, payload
            assert ("busy" in payload["error"] and resp.getheader("Retry-After") == "1") if expect == 503 \
                else "timed out" in payload["error"]
            fn.release.set()
            first.join(10)
            assert _raw(srv, "POST", "/score", _body(), token="")[0] == 200


class _Scripted(BaseHTTPRequestHandler):
    """A fake server: /health answers as a dgpo server; /score answers the next scripted status."""

    protocol = PROTOCOL

    def log_message(self, *a):
        pass

    def do_GET(self):
        self._send(200, {"protocol": self.protocol, "scorer": "fake", "version": "1", "limits": {"max_items": 4}})

    def do_POST(self):
        n = int(self.headers["Content-Length"])
        metas = json.loads(self.rfile.read(n))["metas"]
        self.server.calls += 1
        status = self.server.script.pop(0) if self.server.script else 200
        ok = {"rewards": [1.5] * len(metas)}
        self._send(status, ok if status == 200 else {"error": f"scripted {status}"})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def scripted():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    srv.calls, srv.script = 0, []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("script,calls,error", [
    ([503, 502, 504], 4, None),  # three retryable answers, then 200
    ([503] * 10, 3, r"gave up after 3 attempts .* last error: HTTP 503: scripted 503"),
    ([500], 1, "answered 500: scripted 500"),  # not retried
    ([400], 1, "answered 400: scripted 400"),
    ([413], 1, "answered 413"),
])
def test_client_retries_only_connection_errors_and_502_503_504(scripted, script, calls, error):
    scripted.script = list(script)
    remote = RemoteReward(f"http://127.0.0.1:{scripted.server_address[1]}", retries=3 if error is None else 2,
                          backoff_s=0.01)
    metas = [{"prompt": "p"}] * 3
    if error is None:
        assert remote(_images(3), metas).tolist() == [1.5] * 3
    else:
        with pytest.raises(RemoteRewardError, match=error):
            remote(_images(3), metas)
    assert scripted.calls == calls


def test_client_connection_refused_is_retried_then_a_clear_error():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteRewardError, match=r"after 3 attempts .*cannot connect.*dgpo reward serve"):
        RemoteReward(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.01)


def test_slow_body_is_408_and_a_wrong_count_is_500():
    short_reward = lambda images, metas: torch.zeros(len(images) - 1)  # noqa: E731
    with RewardServer(short_reward, "short", read_timeout_s=0.5) as srv:
        host, port = srv.httpd.server_address[:2]
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # then stalls
            assert _recv_all(s).startswith(b"HTTP/1.0 408")
        status, payload, _ = _raw(srv, "POST", "/score", _body(), token="")
        assert status == 500 and "returned 1 values for 2 images" in payload["error"]
        with pytest.raises(RemoteRewardError, match="answered 500: the scorer 'short' failed"):
            RemoteReward(srv.url, retries=3, backoff_s=0.01)(_images(2), [{}, {}])


class _NonFinite:
    """The colourfulness reward with NaN for the sample whose prompt is "nan" and inf for "inf"."""

    def __init__(self):
        self.fn = build_reward("colorfulness")

    def __call__(self, images, metas):
        r = self.fn(images, metas).clone()
        for i, m in enumerate(metas):
            r[i] = {"nan": float("nan"), "inf": float("inf")}.get(m["prompt"], r[i])
        return r


def test_a_non_finite_score_is_null_on_the_wire_and_nan_for_its_sample_only():
    metas = [{"prompt": "a"}, {"prompt": "nan"}, {"prompt": "b"}, {"prompt": "inf"}]
    images = _images(4)
    with RewardServer(_NonFinite(), "nonfinite") as srv:
        for mode in ("reward", "eval"):
            host, port = srv.httpd.server_address[:2]
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("POST", "/score", body=_body(images, metas, mode=mode))
            resp = conn.getresponse()
            raw = resp.read()
            conn.close()
            assert resp.status == 200 and b"NaN" not in raw and b"Infinity" not in raw  # strict JSON
            payload = json.loads(raw)
            assert payload["protocol"] == PROTOCOL == 3
            for key in ("rewards", "correct") if mode == "eval" else ("rewards",):
                assert [v is None for v in payload[key]] == [False, True, False, True], key
        remote = RemoteReward(srv.url, retries=0)
        got, want = remote(images, metas), build_reward("colorfulness")(images, metas)
        assert torch.isnan(got[1]) and torch.isnan(got[3])  # inf comes back as NaN: a non-finite score either way
        assert torch.allclose(got[[0, 2]], want[[0, 2]])
        scores = remote.eval_scores(images, metas)
        assert [c != c for c, _ in scores] == [False, True, False, True]  # NaN != NaN


@pytest.mark.parametrize("answer,error", [
    ([1.0, "x"], r"'x' is not a finite number or null"),
    ([1.0, True], r"True is not a finite number or null"),
    ([1.0], r"expected a list of 2 numbers"),
])
def test_a_malformed_score_in_an_answer_is_still_an_error(answer, error):
    from dgpo.rewards.wire import WireError, check_scores

    assert check_scores([1.0, None], 2, "rewards")[1] != check_scores([1.0, None], 2, "rewards")[1]  # NaN
    with pytest.raises(WireError, match=error):
        check_scores(answer, 2, "rewards")


def test_cli_serves_a_reward_on_loopback(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "token").write_text(TOKEN + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "dgpo.cli", "reward", "serve", "--reward", "colorfulness",
                             "--port", "0", "--token-file", str(tmp_path / "token"), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()  # "serving reward 'colorfulness' on http://127.0.0.1:PORT (...)"
        url = line.split(" on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and "token required" in line
        images = _images(2)
        got = RemoteReward(url, token=TOKEN, retries=2, backoff_s=0.1)(images, [{}, {}])
        assert torch.allclose(got, build_reward("colorfulness")(images, [{}, {}]))
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# ---------------------------------------------------------------------------------------------- videos
def _videos(n=3, frames=3, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, frames, 3, h, w, generator=g) * 255).round() / 255


def _video_body(videos=None, metas=None, shape=None, images=None, **extra):
    videos = _videos(2) if videos is None else videos
    metas = [{"prompt": f"p{i}"} for i in range(len(videos))] if metas is None else metas
    return json.dumps({"protocol": PROTOCOL, "shape": list(videos.shape) if shape is None else shape,
                       "images": encode_images(videos) if images is None else images, "metas": metas,
                       **extra}).encode()


@pytest.fixture(scope="module")
def video_server():
    from dgpo.rewards.video import FrameReward

    fn = FrameReward(build_reward("toy_geneval"), "every_k", every=2, reduce="min")
    limits = Limits(max_body_bytes=200_000, max_items=8, max_pixels=64 * 64)
    with RewardServer(fn, "toy_geneval on frames", token=TOKEN, limits=limits, batch_size=2, read_timeout_s=5) as srv:
        yield srv, fn


def test_remote_video_scores_equal_in_process_scores(video_server):
    from dgpo.data.prompts import load_prompts

    srv, fn = video_server
    remote = RemoteReward(srv.url, token=TOKEN)
    assert remote.modality == "video" and remote.info["modality"] == "video" and remote.info["protocol"] == 3
    videos, metas = _videos(5, frames=3), load_prompts("toy:test")[:5]
    # max_items 8 counts frames: requests of 2 videos (6 PNGs), 2 and 1
    assert torch.equal(remote(videos, metas), fn(videos, metas))
    assert [c for c, _ in remote.eval_scores(videos, metas)] == [c for c, _ in fn.eval_scores(videos, metas)]
    with pytest.raises(RemoteRewardError, match=r"video \(9 frames\) 0 alone .* 8 images per request"):
        remote(_videos(1, frames=9), metas[:1])


def _bad_video_requests():
    v = _videos(2, frames=3)
    pngs = encode_images(v)
    return [
        (_video_body(v, images=pngs[:-1]), 400, "declares 2 videos of 3 frames (6 PNGs) but 'images' holds 5"),
        (_video_body(v, shape=[2, 4, 3, 16, 16]), 400, "declares 2 videos of 4 frames (8 PNGs) but 'images' holds 6"),
        (_video_body(v, shape=[2, 3, 4, 16, 16]), 400, "'shape' must be [B, 3, H, W] (images) or [B, F, 3, H, W]"),
        (_video_body(v, shape=[2, 3, 16]), 400, "'shape' must be"),
        (_video_body(v, shape=[2, 3, 3, 16]), 400, "declares 2 images (2 PNGs) but 'images' holds 6"),
        (_video_body(v, shape=[2, True, 3, 16, 16]), 400, "'shape' must be"),
        (_video_body(v, shape="2x3"), 400, "'shape' must be"),
        (_video_body(v, shape=[2, 3, 3, 16, 17]), 400, "images[0] (video 0, frame 0) is 16x16 but the declared "
                                                         "shape's size is 17x16"),
        (_video_body(v, shape=[1, 10**30, 3, 16, 16]), 413, "exceeds the server's limit of 8 images"),
        (_video_body(v, shape=[2, 3, 3, 1000, 1000]), 400, "1000x1000 pixels per image exceeds the server's limit of "
                                                           "4096"),
        (_video_body(v, images=pngs[:4] + [pngs[4][:-40], pngs[5]]), 400, "images[4] (video 1, frame 1): corrupt PNG"),
        (_video_body(v, metas=[{"prompt": "x"}] * 6), 400, "'metas' must be a list of 2 JSON objects, one per video"),
        (_video_body(v)[: len(_video_body(v)) // 2], 400, "malformed JSON"),  # a truncated body
        (_video_body(v, protocol=1), 400, "protocol 1 is not supported: this server speaks protocol 3"),
        (_body(_images(2, 16, 16)), 400, "scores videos [B, F, 3, H, W]; this request holds images"),
    ]


VIDEO_BAD_IDS = ["fewer-frames", "more-declared", "not-rgb", "short-shape", "image-shape", "bool", "string", "size",
                 "huge", "pixels", "corrupt-frame", "metas-per-frame", "truncated-body", "old-protocol",
                 "images-to-video"]


@pytest.mark.parametrize("body,status,message", _bad_video_requests(), ids=VIDEO_BAD_IDS)
def test_bad_video_requests_are_4xx_and_the_server_keeps_serving(video_server, body, status, message):
    srv, _ = video_server
    got, payload, _ = _raw(srv, "POST", "/score", body)
    assert got == status and message in payload["error"], payload
    from dgpo.data.prompts import load_prompts

    ok, answer, _ = _raw(srv, "POST", "/score", _video_body(metas=load_prompts("toy:test")[:2]))
    assert ok == 200 and len(answer["rewards"]) == 2


@pytest.mark.parametrize("old", [1, 2])
def test_videos_to_an_image_scorer_and_old_clients_and_servers_are_clear_errors(server, scripted, old):
    got, payload, _ = _raw(server, "POST", "/score", _video_body())
    assert got == 400 and "scores images [B, 3, H, W]; this request holds videos" in payload["error"]
    got, payload, _ = _raw(server, "POST", "/score", json.dumps(
        {"protocol": old, "images": encode_images(_images(1)), "metas": [{}]}).encode())  # an older client
    assert got == 400 and f"protocol {old} is not supported: this server speaks protocol 3" in payload["error"]
    assert "protocol 3 non-finite scores as null" in payload["error"]
    with pytest.raises(RemoteRewardError, match=f"the server speaks protocol {old} .* this client protocol 3"):
        _Scripted.protocol = old  # an older server
        try:
            RemoteReward(f"http://127.0.0.1:{scripted.server_address[1]}", retries=0)
        finally:
            _Scripted.protocol = PROTOCOL
    remote = RemoteReward(server.url, token=TOKEN)
    assert remote.modality == "image"
    with pytest.raises(RemoteRewardError, match="answered 400: .*this request holds videos"):
        remote(_videos(2), [{"prompt": "a"}, {"prompt": "b"}])
