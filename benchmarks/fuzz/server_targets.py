"""Fuzz targets for the reward server: request bodies parsed and scored in-process (``server_requests``),
and whole HTTP requests over a socket to a running server (``server_http``). Bodies hold images or videos
(since protocol 2: ``shape`` [B, F, 3, H, W] and B * F frame PNGs), valid, with a shape the PNGs do not fill,
damaged, or of the wrong kind for the scorer (two image scorers, two video scorers: image rewards on
frames). The answer must be a 200
with finite rewards, or a 4xx (501 for an unknown method) with a JSON ``error`` message; a 500, a
dropped connection or no answer is a crash, an answer slower than the case limit a hang."""

from __future__ import annotations

import base64
import io
import json
import socket
import zlib
from pathlib import Path
from types import SimpleNamespace

from hypothesis import strategies as st

from benchmarks.fuzz.strategies import deep, json_mutation, json_text, json_values, mutate_json

TOKEN = "fuzz-token-" + "k" * 24
LIMITS = dict(max_body_bytes=1 << 20, max_items=6, max_pixels=48 * 48)


def _png(size: tuple[int, int], mode: str = "RGB", **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, **kw).save(buf, format="PNG")
    return buf.getvalue()


def _claiming(width: int, height: int) -> bytes:
    raw = bytearray(_png((4, 4)))
    raw[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")
    return bytes(raw)


def _image_pool() -> list[str]:
    """Base64 strings: valid PNGs of several sizes and modes, and broken or hostile ones."""
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    ok = [_png((16, 16), color=(200, 30, 30)), _png((32, 32)), _png((16, 16), "L"), _png((16, 16), "RGBA"),
          _png((16, 16), "P"), _png((16, 16), "I;16"), _png((16, 16), "1"), _png((1, 1)), _png((48, 48))]
    bad = [_claiming(100_000, 100_000), _claiming(0, 0), _claiming(2**31, 1), ok[0][:40], ok[0][:-12],
           b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"", b"\x00" * 64]
    return [*map(b64, ok), *map(b64, bad), b64(ok[0])[:-3], " " + b64(ok[0]), b64(ok[0]) + "\n", "%%%",
            "data:image/png;base64," + b64(ok[0]), b64(ok[0]).replace("A", "-")]


def _setup(folder: Path):
    from dgpo.data.prompts import load_prompts
    from dgpo.rewards import build_reward
    from dgpo.rewards.server import RewardApp
    from dgpo.rewards.wire import Limits

    folder.mkdir(parents=True, exist_ok=True)
    limits = Limits(**LIMITS)
    from dgpo.rewards.video import FrameReward

    apps = [RewardApp(build_reward(n), n, limits, batch_size=2) for n in ("toy_geneval", "colorfulness")]
    apps += [RewardApp(FrameReward(build_reward("toy_geneval"), "every_k", 2, "min"), "toy_geneval on frames", limits,
                       batch_size=2),
             RewardApp(FrameReward(build_reward("colorfulness")), "colorfulness on frames", limits, batch_size=2)]
    return SimpleNamespace(apps=apps, limits=limits, rows=load_prompts("toy:test")[::40], pool=_image_pool(),
                           frames=_frame_pool())


def _frame_pool() -> list[str]:
    """Base64 16x16 frames: 4 colours (videos that differ), then a 32x32 one and a truncated one."""
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    good = [_png((16, 16), color=c) for c in ((200, 30, 30), (30, 200, 30), (20, 20, 20), (240, 240, 240))]
    return [*map(b64, good), b64(_png((32, 32))), b64(good[0][: len(good[0]) // 2])]


def _body_strategy(state):
    from dgpo.rewards.wire import PROTOCOL

    image = st.one_of(st.sampled_from(state.pool[:1]), st.sampled_from(state.pool), scalar_json())
    meta = st.one_of(st.sampled_from(state.rows), st.tuples(st.sampled_from(state.rows), json_mutation).map(
        lambda rm: _loads_or(mutate_json(rm[0], rm[1]), rm[0])), json_values, st.just({}))
    request = st.fixed_dictionaries(
        {}, optional={"protocol": st.one_of(st.sampled_from([PROTOCOL, PROTOCOL, PROTOCOL - 1, 1]), json_values),
                      "mode": st.one_of(st.sampled_from(["reward", "eval"]), json_values),
                      "images": st.one_of(st.lists(image, max_size=7), json_values),
                      "metas": st.one_of(st.lists(meta, max_size=7), json_values), "extra": json_values})
    rendered = st.tuples(request, st.booleans()).map(_encode)
    paired = st.tuples(st.lists(st.tuples(st.sampled_from(state.pool[:3]), st.sampled_from(state.rows)), min_size=1,
                                max_size=4), st.sampled_from(["reward", "eval"])).map(
        lambda p: json.dumps({"images": [i for i, _ in p[0]], "metas": [m for _, m in p[0]], "mode": p[1]}).encode())
    raw = st.one_of(st.binary(max_size=300), st.sampled_from([
        deep(100_000).encode(), b'{"images": [' + b"[" * 50_000, b'{"images": 1' + b"0" * 5000 + b"}", b"NaN",
        b'{"images": ["x"], "metas": [{"prompt": Infinity}]}', b"{\"a\": \"\\ud800\"}", b"\xff\xfe{}",
        json.dumps({"images": ["A" * 900_000], "metas": [{}]}).encode()]))
    mutated = st.tuples(paired, st.sampled_from(["cut", "flip", "utf16"]), st.floats(0, 1)).map(_damage)
    videos = _video_strategy(state)
    damaged = st.tuples(videos, st.sampled_from(["cut", "flip"]), st.floats(0, 1)).map(_damage)
    return st.one_of(paired, paired, rendered, rendered, raw, mutated, videos, videos, damaged)


DAMAGE = ["bad_frame", "fewer", "big_frame", "huge", "giant", "more", "frames+1", "as_images", "size", "absent", "rgba",
          "zero", "bool", "float", "string", "nested", "short"]


def _video_strategy(state):
    """Video requests: B videos of F frames sent as B * F PNGs with a declared ``shape``, the shape or the
    frames sometimes damaged (fewer or more frames than declared, a wrong axis, a junk value)."""
    from dgpo.rewards.wire import PROTOCOL

    @st.composite
    def body(draw):
        b, f = draw(st.integers(1, 2)), draw(st.integers(1, 3))  # at most 6 PNGs: the limit
        images = [draw(st.sampled_from(state.frames[:4])) for _ in range(b * f)]
        shape: object = [b, f, 3, 16, 16]
        how = draw(st.one_of(st.just("exact"), st.sampled_from(DAMAGE)))
        if how == "fewer":
            images = images[: draw(st.integers(0, max(0, len(images) - 1)))]
        elif how == "more":
            images = images + images[:1]
        elif how in ("big_frame", "bad_frame"):  # one frame of another size, or a truncated PNG
            images[draw(st.integers(0, len(images) - 1))] = state.frames[4 if how == "big_frame" else 5]
        else:
            shape = {"exact": shape, "frames+1": [b, f + 1, 3, 16, 16], "absent": None, "as_images": [b * f, 3, 16, 16],
                     "size": [b, f, 3, 16, 17], "rgba": [b, f, 4, 16, 16], "zero": [b, 0, 3, 16, 16],
                     "bool": [b, True, 3, 16, 16], "huge": [b, 10**40, 3, 16, 16],
                     "giant": [b, f, 3, 10**4000, 10**4000], "float": [b, f + 0.0, 3, 16, 16],
                     "string": f"{b}x{f}", "nested": [[b], f, 3, 16, 16], "short": [f, 3, 16]}[how]
        rows = [draw(st.sampled_from(state.rows)) for _ in range(b)]
        if draw(st.integers(0, 9)) == 0:
            rows = rows * f  # one row per frame instead of one per video
        req = {"protocol": draw(st.sampled_from([PROTOCOL] * 5 + [PROTOCOL - 1, 1])),
               "mode": draw(st.sampled_from(["reward", "eval"])), "images": images, "metas": rows}
        if shape is not None:
            req["shape"] = shape
        return json.dumps(req).encode()

    return body()


def scalar_json():
    from benchmarks.fuzz.strategies import scalars

    return scalars


def _loads_or(text: str, default):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return default


def _encode(req_and_nan) -> bytes:
    req, _ = req_and_nan
    return json_text(req).encode("utf-8", "surrogatepass")


def _damage(case) -> bytes:
    body, how, where = case
    if how == "cut":
        return body[: int(len(body) * where)]
    if how == "flip":
        b = bytearray(body)
        b[min(int(where * len(b)), len(b) - 1)] ^= 0x5A
        return bytes(b)
    return body.decode().encode("utf-16")


def _check_answer(status: int, payload, n_images: int | None = None):
    if status == 200:
        assert isinstance(payload, dict) and isinstance(payload.get("rewards"), list), payload
        assert all(isinstance(v, float) for v in payload["rewards"]), payload
        return "ok"
    assert 400 <= status < 500 or status in (501, 505), f"answered {status}: {payload}"  # 501/505: bad method/version
    assert isinstance(payload, dict) and isinstance(payload.get("error"), str) and payload["error"], payload
    return "error", f"{status}: {payload['error'][:70]}"


def _run_requests(state, body: bytes):
    from dgpo.rewards.wire import WireError, parse_score_request

    app = state.apps[len(body) % len(state.apps)]  # images and videos reach image and video scorers
    try:
        status, payload = app.score(parse_score_request(body, state.limits))
    except WireError as e:
        status, payload = e.status, {"error": str(e)}
    return _check_answer(status, payload)


# ---------------------------------------------------------------------------- over HTTP
def _setup_http(folder: Path):
    from dgpo.rewards.server import RewardServer

    state = _setup(folder)
    state.server = RewardServer(state.apps[0].fn, "toy_geneval", token=TOKEN, limits=state.limits, batch_size=2,
                                read_timeout_s=0.3).start()
    return state


def _teardown_http(state) -> None:
    state.server.close()


def _http_strategy(state):
    text = st.text(max_size=20)
    method = st.one_of(st.sampled_from(["POST"] * 4 + ["GET", "PUT", "HEAD", "DELETE", "OPTIONS", "BREW"]), text)
    path = st.one_of(st.sampled_from(["/score"] * 4 + ["/health", "/", "/score?x=1", "//score", "/x" * 3000, "*"]),
                     text)
    version = st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9", "", "FOO"])
    auth = st.sampled_from([f"Bearer {TOKEN}"] * 4 + ["", "Bearer", "Bearer wrong", f"bearer  {TOKEN} ", "Basic Zm9v",
                                                      f"Bearer {TOKEN}\u00e9"])
    length = st.sampled_from(["exact"] * 6 + ["short", "long", "none", "-1", "9" * 30, "abc", " 12", "0", "dup"])
    extra = st.lists(st.tuples(st.one_of(st.sampled_from(["Transfer-Encoding", "Content-Type", "Expect", "Connection",
                                                          "Host", "X"]), text), st.one_of(text, st.sampled_from(
        ["chunked", "100-continue", "keep-alive", "x" * 70_000]))), max_size=3)
    many = st.sampled_from([0] * 9 + [150])
    hostile = st.tuples(method, path, version, auth, length, extra, many, _body_strategy(state))
    framed = st.tuples(st.just("POST"), st.just("/score"), st.just("HTTP/1.1"), st.just(f"Bearer {TOKEN}"),
                       st.just("exact"), st.just([]), st.just(0), _body_strategy(state))  # bodies reach the scorer
    return st.one_of(framed, hostile)


def _request_bytes(case) -> bytes:
    method, path, version, auth, length, extra, many, body = case
    lines = [f"{method} {path} {version}".rstrip(), "Host: fuzz"]
    if auth:
        lines.append(f"Authorization: {auth}")
    declared = {"exact": len(body), "short": max(0, len(body) - 5), "long": len(body) + 5}.get(length, length)
    if length != "none":
        lines.append(f"Content-Length: {declared}")
    if length == "dup":
        lines[-1] = f"Content-Length: {len(body)}"
        lines.append(f"Content-Length: {len(body) + 1}")
    lines += [f"{k}: {v}" for k, v in extra] + [f"X-{i}: {i}" for i in range(many)]
    head = "\r\n".join(lines).encode("utf-8", "surrogatepass") + b"\r\n\r\n"
    return head + body


def _run_http(state, case):
    host, port = state.server.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=4) as s:
        try:
            s.sendall(_request_bytes(case))
            s.shutdown(socket.SHUT_WR) if case[4] != "long" else None
        except OSError:
            pass  # the server answered and closed before reading everything: its answer is still to be read
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    if not data:
        raise AssertionError("the connection closed without an answer")
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if case[0] == "HEAD" and status != 500:
        return "error", f"{status}: HEAD"
    answer = json.loads(payload)
    if status == 200 and case[0] == "GET" and isinstance(answer, dict) and answer.get("status") == "ok":
        return "ok"  # GET /health with the token: the server's description, not scores
    return _check_answer(status, answer)


TARGETS_SERVER = {
    "server_requests": SimpleNamespace(name="server_requests", setup=_setup, strategy=_body_strategy,
                                       run=_run_requests),
    "server_http": SimpleNamespace(name="server_http", setup=_setup_http, strategy=_http_strategy, run=_run_http,
                                   teardown=_teardown_http),
}
