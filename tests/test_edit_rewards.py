"""Editing rewards: image_similarity (Flow-GRPO's CLIP image-embedding cosine with the source) on a tiny random
CLIP, the counting-edit reward as the multi-reward the recipes name, and the unifiedreward_edit judge against a
local server that answers like an OpenAI-compatible chat API."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from geneval_tiny import build_clip
from PIL import Image

from dgpo.config import load_config
from dgpo.data.edits import read_edits
from dgpo.errors import InputError
from dgpo.rewards import build_reward
from dgpo.rewards.clip import CLIP_MEAN, CLIP_STD
from dgpo.rewards.edit import EDIT_QUESTION, EditJudgeReward, ImageSimilarityReward, parse_edit_scores
from dgpo.rewards.multi import MultiReward

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return str(build_clip(tmp_path_factory.mktemp("clip") / "clip"))


def _png(path, seed, size=(32, 32)):
    rs = np.random.RandomState(seed)
    Image.fromarray((rs.rand(size[1], size[0], 3) * 255).astype("uint8")).save(path)
    return path


@pytest.fixture
def rows(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", i)
    _png(tmp_path / "big.png", 7, (48, 48))
    lines = [{"prompt": f"edit {i}", "source": f"{i}.png"} for i in range(3)] + [{"prompt": "b", "source": "big.png"}]
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return read_edits(tmp_path / "e.jsonl")


def _as_tensor(path, size=None):
    img = Image.open(path).convert("RGB")
    img = img if size is None else img.resize(size, Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


def test_image_similarity_is_the_official_clip_image_cosine(clip, rows):
    """flow_grpo/clip_scorer.py image_similarity: get_image_features of the normalised images (CLIP's own size
    here: no resize), L2-normalised, the diagonal of their products; the source read as 8-bit / 255."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(clip).eval()
    results = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    refs = torch.stack([_as_tensor(r["source_images"][0]) for r in rows[:3]])
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        a, b = (model.get_image_features(pixel_values=(x - mean) / std) for x in (results, refs))
    a, b = (getattr(f, "pooler_output", f) for f in (a, b))
    official = torch.diagonal((a / a.norm(dim=-1, keepdim=True)) @ (b / b.norm(dim=-1, keepdim=True)).T)
    reward = build_reward("image_similarity", clip_path=clip)
    assert isinstance(reward, ImageSimilarityReward)
    got = reward(results, rows[:3])
    assert torch.allclose(got, official, atol=1e-6)
    assert torch.allclose(reward(refs, rows[:3]), torch.ones(3), atol=1e-5)  # the source itself: cosine 1


def test_image_similarity_resizes_the_source_to_the_result_with_pils_bicubic(clip, rows):
    """Flow-GRPO's training resizes the source to the generated image's size before the pipeline: a 48 px
    source scores as its bicubic 32 px version."""
    reward = ImageSimilarityReward(clip)
    small = _as_tensor(rows[3]["source_images"][0], (32, 32))
    assert torch.allclose(reward(small[None], rows[3:]), torch.ones(1), atol=1e-5)
    assert reward(_as_tensor(rows[3]["source_images"][0], (32, 32))[None].flip(-1), rows[3:]).item() < 0.9999


def test_image_similarity_is_the_cosine_of_the_embeddings(clip, rows, monkeypatch):
    """Known embeddings: (1, 0) against (0.6, 0.8) is 0.6, against (0, 1) is 0."""
    reward = ImageSimilarityReward(clip)
    known = iter([torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.6, 0.8], [0.0, 1.0]])])
    monkeypatch.setattr(reward, "embed", lambda images: next(known))
    assert reward(torch.zeros(2, 3, 32, 32), rows[:2]).tolist() == pytest.approx([0.6, 0.0])


def test_rows_without_a_source_are_a_clear_error(clip):
    with pytest.raises(InputError, match="image_similarity reward: every row needs its source image"):
        ImageSimilarityReward(clip)(torch.rand(1, 3, 32, 32), [{"prompt": "a cat"}])


@pytest.mark.parametrize("recipe,weights", [("flux_kontext_counting_edit.yaml", [0.5, 0.5]),
                                            ("qwenimage_edit_counting_edit.yaml", [0.8, 0.2])])
def test_counting_edit_recipes_are_flow_grpos_weighted_geneval_and_similarity(recipe, weights):
    """Flow-GRPO config/grpo.py: counting_flux_kontext {image_similarity: 0.5, geneval: 0.5};
    counting_qwenimage_edit {image_similarity: 0.2, geneval: 0.8}."""
    cfg = load_config(str(CONFIGS / recipe), [])
    assert cfg.reward.names() == ["geneval", "image_similarity"] and list(cfg.reward.weights) == weights
    assert cfg.reward.partial == "official" and cfg.model.resolution == 512  # its reward server's partial credit


def test_the_counting_edit_reward_is_the_weighted_sum_of_its_parts(clip, rows):
    sim = ImageSimilarityReward(clip)

    def count(images, metas):
        return torch.tensor([1.0, 0.0, 1.0])

    multi = MultiReward({"geneval": count, "image_similarity": sim}, {"geneval": 0.8, "image_similarity": 0.2})
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    parts = multi.components(images, rows[:3])
    assert torch.allclose(multi(images, rows[:3]), 0.8 * torch.tensor([1.0, 0.0, 1.0]) + 0.2 * sim(images, rows[:3]))
    assert set(parts) == {"geneval", "image_similarity"}


# -- the unifiedreward_edit judge

ANSWERS = {"edit 0": '{\n"reasoning" : "three apples, background kept",\n"score" : [20, 15],\n}',
           "edit 1": 'The edit worked.\n{"score": [25, 25], "reasoning": "perfect"}',
           "edit 2": "I cannot tell."}
# sha256 of UnifiedReward-Edit's question for the instruction "add two cats" (CodeGoat24/UnifiedReward,
# UnifiedReward-Edit/edit_pointwise_instruction_following.py, its `problem` with instruction = "add two cats")
OFFICIAL_QUESTION_SHA256 = "d20e4e46effaea452190014888604652200e0803f658e5f247919e970eb5e4cd"


class ChatServer(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.bodies, self.lock = [], threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "UnifiedReward", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.bodies.append(body)
        text = body["messages"][0]["content"][-1]["text"]
        instruction = text.rsplit("Editing instruction:", 1)[1][:-1]
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": ANSWERS[instruction]}}]})

    def _send(self, status: int, out: dict) -> None:
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def chat():
    srv = ChatServer()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def _jpeg(img: Image.Image) -> np.ndarray:
    """``img`` after a JPEG round trip at quality 95 (UnifiedReward-Edit's encoding)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=95)
    return np.asarray(Image.open(buf))


def test_edit_judge_asks_the_official_question_with_source_then_result(chat, rows):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    judge = build_reward("unifiedreward_edit", judge={"url": chat.url, "model": "UnifiedReward", "concurrency": 2})
    assert isinstance(judge, EditJudgeReward)
    got = judge(images, rows[:3])
    torch.testing.assert_close(got, torch.tensor([15 / 25, 1.0, 0.0]))  # min(success, overediting) / 25, in order
    assert judge.unparsed == 1
    by_text = {b["messages"][0]["content"][-1]["text"]: b for b in chat.bodies}
    for i, row in enumerate(rows[:3]):
        body = by_text[EDIT_QUESTION.format(instruction=row["prompt"])]
        assert body["model"] == "UnifiedReward" and body["temperature"] == 0 and body["max_tokens"] == 4096
        source, result = (_decoded(p["image_url"]["url"]) for p in body["messages"][0]["content"][:2])
        assert source.format == result.format == "JPEG" and source.size == result.size == (32, 32)
        u8 = (images[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(np.asarray(source), _jpeg(Image.open(row["source_images"][0])))  # first the source
        assert np.array_equal(np.asarray(result), _jpeg(Image.fromarray(u8)))  # then the result
    paper = build_reward("unifiedreward_edit", judge={"url": chat.url, "model": "UnifiedReward"}, paper_units=True)
    assert paper(images[:1], rows[:1]).item() == 15.0  # the judge's own 0-25 scale


def test_edit_question_is_unifiedreward_edits_and_scores_parse_as_vieScore_reads_them():
    assert hashlib.sha256(EDIT_QUESTION.format(instruction="add two cats").encode()).hexdigest() == \
        OFFICIAL_QUESTION_SHA256
    assert parse_edit_scores('"score" : [12, 7.5]') == (12.0, 7.5)
    assert parse_edit_scores("{'score': [3,4]}") == (3.0, 4.0)
    assert parse_edit_scores('"score" : [...]') is None and parse_edit_scores("score 20") is None


def test_edit_judge_needs_a_url_and_the_served_model(chat):
    with pytest.raises(InputError, match="reward.judge_url: the unifiedreward_edit judge needs"):
        build_reward("unifiedreward_edit", judge={"url": ""})
    with pytest.raises(InputError, match=r"reward.judge_model: .* serves \['UnifiedReward'\], not 'UnifiedReward-7b"):
        build_reward("unifiedreward_edit", judge={"url": chat.url, "model": "UnifiedReward-7b-v1.5"})
    from dgpo.config import load_config
    from dgpo.rewards import build_reward_from_config

    rc = load_config(None, ["reward.name=unifiedreward_edit", f"reward.judge_url={chat.url}"]).reward
    assert build_reward_from_config(rc, "cpu").model == "UnifiedReward"  # the default asks for the served name
