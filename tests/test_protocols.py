"""``dgpo eval --protocol``: the shipped prompt sets, GenEval's folder layout, DrawBench's reward list,
and models given as a diffusers folder plus an exported LoRA."""

import json

import numpy as np
import pytest
import torch
from geneval_tiny import build_clip, build_mask2former
from PIL import Image
from tiny_diffusers import build_sd3

from dgpo.cli import main
from dgpo.protocols import PROTOCOLS, protocol_prompts


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return build_sd3(tmp_path_factory.mktemp("pipe") / "sd3")


def test_shipped_prompt_sets_have_the_papers_sizes():
    sizes = {name: len(protocol_prompts(name)) for name in PROTOCOLS}
    assert sizes == {"geneval": 553, "ocr": 1018, "pickscore": 2048, "drawbench": 1000}
    assert len({m["prompt"] for m in protocol_prompts("drawbench")}) == 200  # 200 prompts x 5
    assert all('"' in m["prompt"] for m in protocol_prompts("ocr"))  # the text to render, in quotes
    assert PROTOCOLS["geneval"].images_per_prompt == 4
    assert protocol_prompts("geneval", 2)[1]["prompt"] == "a photo of a cow"


@pytest.mark.slow
def test_eval_geneval_protocol_writes_geneval_layout(sd3, tmp_path, capsys):
    det, clip = build_mask2former(tmp_path / "det"), build_clip(tmp_path / "clip")
    out = tmp_path / "ev"
    assert main(["eval", "--protocol", "geneval", "--model", str(sd3), "--detector", str(det), "--clip", str(clip),
                 "--max-prompts", "2", "--images-per-prompt", "2", "--steps", "2", "--resolution", "64",
                 "--batch-size", "3", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["protocol"] == "geneval" and res["n_images"] == 4 and res["n_prompts"] == 2
    assert set(res) >= {"overall", "single_object", "image_accuracy", "reward", "settings", "rows"}
    assert res["settings"]["steps"] == 2 and res["settings"]["shift"] == 3.0  # the SD3 scheduler's own
    assert "| model | overall | single_object | image_accuracy |" in (out / "eval.md").read_text()
    assert (out / "grid.png").is_file()
    official = protocol_prompts("geneval", 2)
    for i in range(2):  # what GenEval's evaluate_images.py reads: json.load of metadata.jsonl, samples/*.png
        assert json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text()) == official[i]
        files = sorted(p.name for p in (out / f"{i:05d}" / "samples").iterdir())
        assert files == ["00000.png", "00001.png"]
    png = np.asarray(Image.open(out / "00001" / "samples" / "00000.png"))
    assert png.shape == (64, 64, 3) and png.dtype == np.uint8
    row = next(r for r in res["rows"] if r["index"] == 1 and r["sample"] == 0)
    assert row["file"] == "00001/samples/00000.png" and row["tag"] == "single_object"
    assert isinstance(row["correct"], bool) and isinstance(row["reason"], str)
    assert "wrote" in capsys.readouterr().out
    # GenEval's evaluate_images.py on the same folder writes results.jsonl; one verdict differs here
    official = [{"filename": f"{out}/{r['file']}", "tag": r["tag"], "prompt": r["prompt"],
                 "correct": r["correct"] != (k == 0), "reason": "", "metadata": "{}"}
                for k, r in enumerate(res["rows"])]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(o) + "\n" for o in official))
    assert main(["eval", "--protocol", "geneval", "--out", str(out), "--official-results",
                 str(tmp_path / "results.jsonl")]) == 0
    assert "| agreement | 0.7500 | 0.7500 |" in (out / "compare.md").read_text()


def test_eval_drawbench_scores_every_available_reward(tiny_toy, tmp_path):
    out = tmp_path / "db"
    assert main(["eval", "--protocol", "drawbench", "--model", str(tiny_toy), "--max-prompts", "3", "--steps", "2",
                 "--device", "cpu", "--pickscore-model", str(tmp_path / "no-pickscore"), "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert "pickscore" in res["skipped_rewards"]  # its weights are not there: listed, not fatal
    assert {"colorfulness", "jpeg_compressibility"} <= set(res) and res["n_images"] == 3
    assert "skipped reward `pickscore`" in (out / "eval.md").read_text()
    # a reward asked for by name must load
    assert main(["eval", "--protocol", "drawbench", "--model", str(tiny_toy), "--max-prompts", "1", "--steps", "1",
                 "--rewards", "pickscore", "--pickscore-model", str(tmp_path / "no-pickscore"),
                 "--out", str(tmp_path / "db2")]) == 2


def test_load_any_applies_an_exported_lora(sd3, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from dgpo.training.export import LORA_FILE, load_any, lora_state_dict
    from dgpo.training.policy import Policy

    trained = load_any(str(sd3), resolution=64)
    policy = Policy(trained, lora_rank=4, lora_alpha=8)
    with torch.no_grad():
        for n, p in trained.denoiser.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)  # a "trained" adapter (lora_B starts at zero)
    sd, meta = lora_state_dict(policy)
    StableDiffusion3Pipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=sd,
                                               transformer_lora_adapter_metadata=meta, weight_name=LORA_FILE)
    base, merged = load_any(str(sd3), resolution=64), load_any(str(sd3), lora=str(tmp_path / "lora"), resolution=64)
    x, t = torch.randn(1, *base.latent_shape()), torch.tensor([0.7])
    cond = base.encode_prompts(["a photo of a cat"])
    with torch.no_grad():
        v_base, v_lora, v_ref = (m.velocity(x, t, cond) for m in (base, merged, trained))
    assert torch.allclose(v_lora, v_ref, atol=1e-5) and not torch.allclose(v_lora, v_base, atol=1e-3)
    with pytest.raises(FileNotFoundError, match="--lora"):
        load_any(str(sd3), lora=str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="--model"):
        load_any(str(tmp_path / "missing"))


def test_load_any_applies_a_toy_peft_lora(tiny_toy, tmp_path):
    from dgpo.training.export import load_any
    from dgpo.training.policy import Policy

    trained = load_any(str(tiny_toy))
    policy = Policy(trained, lora_rank=4, lora_alpha=8)
    with torch.no_grad():
        for n, p in trained.denoiser.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    policy.peft.save_pretrained(tmp_path / "lora")  # what `dgpo export` writes for a toy run
    base, merged = load_any(str(tiny_toy)), load_any(str(tiny_toy), lora=str(tmp_path / "lora"))
    x, t = torch.randn(1, *base.latent_shape()), torch.tensor([0.7])
    cond = base.encode_prompts(["a photo of a red circle"])
    with torch.no_grad():
        v_base, v_lora, v_ref = (m.velocity(x, t, cond) for m in (base, merged, trained))
    assert torch.allclose(v_lora, v_ref, atol=1e-5) and not torch.allclose(v_lora, v_base, atol=1e-4)


def test_eval_pickscore_protocol_reports_the_mean_reward(tiny_toy, tmp_path):
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    clip = build_clip(tmp_path / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
                  tokenizer=CLIPTokenizer.from_pretrained(clip)).save_pretrained(clip)
    out = tmp_path / "ps"
    assert main(["eval", "--protocol", "pickscore", "--model", str(tiny_toy), "--pickscore-model", str(clip),
                 "--max-prompts", "3", "--steps", "1", "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["overall"] == res["pickscore"] == pytest.approx(np.mean([r["pickscore"] for r in res["rows"]]))
    assert [r["prompt"] for r in res["rows"]] == [m["prompt"] for m in protocol_prompts("pickscore", 3)]
