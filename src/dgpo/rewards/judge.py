"""``unifiedreward``: a vision-language judge behind an OpenAI-compatible chat server, as Flow-GRPO's
``unifiedreward`` training reward scores it (DrawBench tables report the same score on its 1-5 scale:
``dgpo eval --protocol`` builds it with ``divisor=1``).

The judge is UnifiedReward (CodeGoat24/UnifiedReward-7b-v1.5, a Qwen2.5-VL fine-tune), served by
sglang or vLLM, e.g. ``python -m sglang.launch_server --model-path CodeGoat24/UnifiedReward-7b-v1.5
--served-model-name UnifiedReward-7b-v1.5 --port 17140``. Per image, as the official scorer: the 8-bit
image resized to 512 x 512 (PIL's default filter), sent as a PNG data URI with the official question
and the prompt, temperature 0; the answer's ``Final Score: x`` (1 to 5) divided by 5. An answer
without one scores 0, as in the official scorer; here it is also counted (``unparsed``) and logged.
At start the server's ``/models`` must list the model (a wrong URL, name or key fails before training).

Requests run ``reward.judge_concurrency`` at a time (the official scorer sends a batch at once), each
with the JSON client's retries (:mod:`dgpo.rewards.remote`): a 429 or 5xx answer or a lost connection
is retried with backoff (the OpenAI client the official scorer uses retries these too), any other error
answer fails at once with the server's message, and the requests not yet sent are cancelled.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor, as_completed

import torch

from dgpo.errors import InputError
from dgpo.rewards.clip import prompts_of
from dgpo.rewards.remote import JsonClient, RemoteRewardError

log = logging.getLogger(__name__)

JUDGE_MODEL = "UnifiedReward-7b-v1.5"
# the official question (Flow-GRPO rewards.py, unifiedreward_score_sglang), the prompt in the brackets
QUESTION = (
    "<image>\nYou are given a text caption and a generated image based on that caption. Your task is to "
    "evaluate this image based on two key criteria:\n1. Alignment with the Caption: Assess how well this image "
    "aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and "
    "attributes as described in the caption.\n2. Overall Image Quality: Examine the visual quality of this "
    "image, including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\nBased on "
    "the above criteria, assign a score from 1 to 5 after 'Final Score:'.\nYour task is provided as "
    "follows:\nText Caption: [{prompt}]")
SCORE = re.compile(r"Final Score:\s*([1-5](?:\.\d+)?)")
SIZE = 512


def png_data_uri(image: torch.Tensor, size: int = SIZE) -> str:
    """One [3, H, W] image in [0, 1] -> 8-bit, resized to size x size, PNG, ``data:image;base64,...``."""
    from PIL import Image

    u8 = (image.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(u8).resize((size, size)).save(buf, format="PNG")
    return "data:image;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def parse_score(answer: str) -> float | None:
    """The judge's ``Final Score: x`` (1 to 5), or None when the answer has none."""
    m = SCORE.search(answer)
    return float(m.group(1)) if m else None


class JudgeReward(JsonClient):
    who, down = "unifiedreward judge", "Is the OpenAI-compatible server (sglang, vLLM) running there?"
    retry_status = (429, 500, 502, 503, 504)
    hints = {401: " (its API key: in the variable named by reward.judge_token_env, or --judge-token-env)",
             404: " (reward.judge_url is the API's base, e.g. http://127.0.0.1:17140/v1; reward.judge_model "
                  "is the served model name)"}

    def __init__(self, url: str, model: str = JUDGE_MODEL, token: str = "", timeout_s: float = 600.0,
                 retries: int = 4, backoff_s: float = 0.5, max_backoff_s: float = 30.0, concurrency: int = 64,
                 divisor: float = 5.0):
        """``divisor``: the training reward's 5 (official); 1 for the 1-5 score paper tables report."""
        super().__init__(url, token, timeout_s, retries, backoff_s, max_backoff_s, url_key="reward.judge_url")
        self.model, self.concurrency, self.divisor, self.unparsed = model, concurrency, divisor, 0
        served = self._request("GET", "/models").get("data")
        ids = [m.get("id") for m in served if isinstance(m, dict)] if isinstance(served, list) else []
        if model not in ids:
            raise InputError(f"reward.judge_model: {self.url} serves {ids or 'no model list'}, not {model!r}")
        self.version = f"unifiedreward judge {model} at {self.url}"

    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        if len(images) != len(metas):
            raise ValueError(f"unifiedreward: {len(images)} images but {len(metas)} metadata rows")
        prompts, uris = prompts_of(metas, "unifiedreward"), [png_data_uri(im) for im in images]
        if not uris:
            return torch.zeros(0)
        answers = self._ask_all(prompts, uris)
        scores = [parse_score(a) for a in answers]
        missed = [a for a, s in zip(answers, scores) if s is None]
        if missed:
            self.unparsed += len(missed)
            log.warning("unifiedreward: %d of %d answers have no 'Final Score: x' and score 0 (as the official "
                        "scorer); e.g. %r", len(missed), len(answers), missed[0][:200])
        return torch.tensor([0.0 if s is None else s / self.divisor for s in scores], dtype=torch.float32)

    def _ask_all(self, prompts: list[str], uris: list[str]) -> list[str]:
        """Every question, ``concurrency`` in flight; the first error cancels those not yet sent."""
        pool = ThreadPoolExecutor(min(self.concurrency, len(uris)))
        try:
            futures = {pool.submit(self.ask, p, u): i for i, (p, u) in enumerate(zip(prompts, uris))}
            answers: list[str] = [""] * len(uris)
            for f in as_completed(futures):
                answers[futures[f]] = f.result()
            return answers
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def ask(self, prompt: str, image_uri: str) -> str:
        """One chat completion: the image and the official question about ``prompt``; the answer's text."""
        content = [{"type": "image_url", "image_url": {"url": image_uri}},
                   {"type": "text", "text": QUESTION.format(prompt=prompt)}]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}], "temperature": 0}
        out = self._request("POST", "/chat/completions", json.dumps(body).encode())
        try:
            return str(out["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise RemoteRewardError(f"{self.who} {self.url}: not a chat completion: {str(out)[:200]}") from None
