"""The unifiedreward judge against a local HTTP server that answers like an OpenAI-compatible chat API
(sglang, vLLM): the requests the official scorer sends, its score parsing, order under concurrency,
retries and clear errors."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from dgpo.config import load_config
from dgpo.errors import ConfigError, InputError
from dgpo.rewards import build_reward, build_reward_from_config
from dgpo.rewards.judge import QUESTION, JudgeReward, parse_score
from dgpo.rewards.remote import RemoteRewardError

ANSWERS = {"a red cube": "The cube is red.\nFinal Score: 4.5", "two dogs": "Final Score:3",
           "a blue ball": "I would rather not say.", "a tree": "Final Score: 5 (excellent)"}


class ChatServer(ThreadingHTTPServer):
    """Lists one model at /v1/models and answers /v1/chat/completions from ANSWERS (keyed by the prompt in
    the question); ``fail`` lists statuses to answer completions with first; every completion body is kept."""

    def __init__(self, fail=(), key=""):
        super().__init__(("127.0.0.1", 0), Handler)
        self.bodies, self.fail, self.key, self.lock = [], list(fail), key, threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        ok = self.path == "/v1/models" and self._authorised()
        self._send(200 if ok else 401 if self.path == "/v1/models" else 404,
                   {"object": "list", "data": [{"id": "UnifiedReward-7b-v1.5", "object": "model"}]})

    def do_POST(self):
        srv: ChatServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            status = srv.fail.pop(0) if srv.fail else 200
            srv.bodies.append(body)
        if not self._authorised():
            status = 401
        if self.path != "/v1/chat/completions":
            status = 404
        if status == 200:
            text = body["messages"][0]["content"][1]["text"]
            prompt = text.rsplit("Text Caption: [", 1)[1][:-1]
            out = {"choices": [{"message": {"role": "assistant", "content": ANSWERS[prompt]}}]}
        else:
            out = {"error": {"message": f"status {status}"}}
        self._send(status, out)

    def _authorised(self) -> bool:
        return not self.server.key or self.headers.get("Authorization") == f"Bearer {self.server.key}"

    def _send(self, status: int, out: dict) -> None:
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def chat():
    servers = []

    def start(**kw) -> ChatServer:
        srv = ChatServer(**kw)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_requests_and_scores_are_the_official_scorers(chat):
    srv = chat()
    images = torch.rand(4, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    prompts = list(ANSWERS)
    judge = JudgeReward(srv.url, concurrency=3)
    got = judge(images, [{"prompt": p} for p in prompts])
    torch.testing.assert_close(got, torch.tensor([0.9, 0.6, 0.0, 1.0]))  # in order; no score -> 0
    assert judge.unparsed == 1
    by_prompt = {b["messages"][0]["content"][1]["text"]: b for b in srv.bodies}
    for img, p in zip(images, prompts):
        body = by_prompt[QUESTION.format(prompt=p)]
        assert body["model"] == "UnifiedReward-7b-v1.5" and body["temperature"] == 0
        part = body["messages"][0]["content"][0]
        assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image;base64,")
        sent = Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1])))
        u8 = (img * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        assert sent.format == "PNG" and sent.size == (512, 512)
        assert np.array_equal(np.asarray(sent), np.asarray(Image.fromarray(u8).resize((512, 512))))
    assert QUESTION.format(prompt="x").endswith("assign a score from 1 to 5 after 'Final Score:'.\nYour task is "
                                                "provided as follows:\nText Caption: [x]")


def test_score_parsing():
    assert parse_score("Final Score: 2.75") == 2.75
    assert parse_score("final score: 4") is None  # the official pattern is case-sensitive
    assert parse_score("Final Score: 7") is None and parse_score("Final Score: 0") is None  # 1 to 5 only


def test_busy_server_is_retried_and_errors_are_clear(chat):
    srv = chat()
    judge = JudgeReward(srv.url, retries=2, backoff_s=0.01, concurrency=1)
    srv.fail = [503, 429]  # retried, as the OpenAI client the official scorer uses retries them
    assert judge(torch.rand(1, 3, 8, 8), [{"prompt": "two dogs"}]).tolist() == [pytest.approx(0.6)]
    assert len(srv.bodies) == 3
    srv.fail = [400]  # fails at once, and the questions not yet sent are not sent
    with pytest.raises(RemoteRewardError, match="answered 400") as e:
        judge(torch.rand(4, 3, 8, 8), [{"prompt": p} for p in ANSWERS])
    assert e.value.permanent and len(srv.bodies) <= 3 + 2
    locked = chat(key="sekret")
    with pytest.raises(RemoteRewardError, match="answered 401.*judge_token_env"):  # checked at start
        JudgeReward(locked.url, token="wrong")
    assert JudgeReward(locked.url, token="sekret")(torch.rand(1, 3, 8, 8), [{"prompt": "a tree"}]).item() == 1.0
    with pytest.raises(RemoteRewardError, match="answered 404.*base"):
        JudgeReward(srv.url.removesuffix("/v1"))
    with pytest.raises(InputError, match=r"reward.judge_model: .* serves \['UnifiedReward-7b-v1.5'\], not 'other'"):
        JudgeReward(srv.url, model="other")


def test_built_from_the_config_and_in_paper_units(chat, monkeypatch):
    with pytest.raises(ConfigError, match="reward.judge_url"):
        load_config(None, ["reward.name=unifiedreward"])
    srv = chat(key="k")
    monkeypatch.setenv("JUDGE_KEY", "k")
    rc = load_config(None, ["reward.name=[unifiedreward,colorfulness]", f"reward.judge_url={srv.url}",
                            "reward.judge_token_env=JUDGE_KEY", "reward.judge_concurrency=2"]).reward
    fn = build_reward_from_config(rc)
    out = fn(torch.rand(2, 3, 8, 8), [{"prompt": "a red cube"}, {"prompt": "a tree"}])
    assert out.shape == (2,) and len(srv.bodies) == 2
    paper = build_reward("unifiedreward", judge={"url": srv.url, "token": "k"}, paper_units=True)
    assert paper(torch.rand(2, 3, 8, 8), [{"prompt": "a red cube"}, {"prompt": "a tree"}]).tolist() == [4.5, 5.0]
