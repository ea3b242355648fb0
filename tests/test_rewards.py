import math

import torch

from dgpo.rewards import build_reward


def test_colorfulness_by_hand_and_continuity():
    fn = build_reward("colorfulness")
    grey = torch.full((1, 3, 4, 4), 0.5)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    r = fn(torch.cat([grey, red]), [{}, {}])
    assert float(r[0]) == 0.0
    assert float(r[1]) == torch.tensor(0.3 * math.hypot(255, 127.5)).float().item()
    half = red.clone()
    half[..., :2] = 0.0  # left half black: rg in {0, 255}, yb in {0, 127.5}
    std = math.sqrt(127.5**2 + 63.75**2)
    assert abs(float(fn(half, [{}])) - (std + 0.3 * math.hypot(127.5, 63.75))) < 1e-3
    eps = torch.full_like(red, 1e-6)
    assert abs(float(fn(red - eps, [{}])) - float(r[1])) < 1e-2  # smooth: no jumps


def test_ocr_score_rules_by_hand():
    from dgpo.rewards.ocr import levenshtein, ocr_score, target_text

    assert levenshtein("kitten", "sitting") == 3
    assert target_text('A sign that says "Open 24 h"') == "Open 24 h"
    assert ocr_score("WELCOME TO OPEN24H TODAY", "open 24 h") == 1.0  # substring after removing spaces
    assert ocr_score("opem", "open") == 0.75
    assert ocr_score("", "open") == 0.0 and ocr_score("zzzzzzzzz", "open") == 0.0


def test_ocr_reward_reads_rendered_text():
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (256, 128), "white")
    ImageDraw.Draw(img).text((12, 30), "HELLO", fill="black", font=ImageFont.load_default(size=56))
    x = torch.from_numpy(__import__("numpy").array(img)).permute(2, 0, 1)[None].float() / 255
    fn = build_reward("ocr")
    r = fn(torch.cat([x, torch.ones_like(x)]), [{"prompt": 'A sign that says "hello"'}] * 2)
    assert float(r[0]) == 1.0 and float(r[1]) == 0.0


def test_pickscore_reward_is_scaled_cosine_of_clip_embeddings(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from dgpo.testing.random_pipelines import clip_tokenizer

    tok = clip_tokenizer()
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37,
                                      num_hidden_layers=1, num_attention_heads=4, eos_token_id=tok.eos_token_id,
                                      bos_token_id=tok.bos_token_id, pad_token_id=tok.eos_token_id),
                     vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                        num_attention_heads=4, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32), tokenizer=tok)
    proc.save_pretrained(tmp_path / "clip")
    fn = build_reward("pickscore", str(tmp_path / "clip"))
    images = torch.rand(2, 3, 40, 40)
    prompts = [{"prompt": "a cat"}, {"prompt": "two dogs"}]
    r = fn(images, prompts)
    model = CLIPModel.from_pretrained(tmp_path / "clip")
    inputs = proc(images=list((images.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")),
                  text=["a cat", "two dogs"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    assert torch.allclose(r, out.logits_per_image.diagonal() / 26, atol=1e-5)  # the official reward's / 26
    assert torch.allclose(fn(images, prompts), r)  # deterministic
    raw = build_reward("pickscore", str(tmp_path / "clip"), paper_units=True)(images, prompts)
    assert torch.allclose(raw, out.logits_per_image.diagonal(), atol=1e-4)  # as papers report it
