"""The editing families (FLUX.1 Kontext, Qwen-Image-Edit, Qwen-Image-Edit-Plus) on tiny offline pipelines: edit
prompt files and their checks, rollouts equal to the pipelines' own calls, the conditions' cache and the CFG
branch, DGPO (and every other algorithm) training, the exported LoRA loading with diffusers' own loader, and
`dgpo sample` / `dgpo eval` on an edit prompt file."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dgpo.algorithms import ALGORITHMS
from dgpo.config import load_config
from dgpo.data.edits import load_source, read_edits
from dgpo.data.prompts import load_prompts
from dgpo.errors import InputError, MissingPathError
from dgpo.models.base import cfg_velocity, encode_nulls, encode_rows
from dgpo.models.families import EDIT_KINDS
from dgpo.models.loading import load_model
from dgpo.samplers.ode import sample_ode
from dgpo.samplers.rollout import initial_noise
from dgpo.testing.random_pipelines import build_flux_kontext, build_qwenimage_edit
from dgpo.training.export import LORA_FILE, export_run, load_run
from dgpo.training.trainer import Trainer

SIDE = 64  # the tiny pipelines' images: 8x8 latents


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit_pipes")
    return {"flux_kontext": build_flux_kontext(root / "kontext"), "qwenimage_edit": build_qwenimage_edit(root / "qe"),
            "qwenimage_edit_plus": build_qwenimage_edit(root / "qep", plus=True)}


def _png(path, seed, size=(SIDE, SIDE)):
    rs = np.random.RandomState(seed)
    Image.fromarray((rs.rand(size[1], size[0], 3) * 255).astype("uint8")).save(path)
    return path


def _edit_file(folder, rows, name="edits.jsonl"):
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def edits(tmp_path):
    """An edit prompt file per family: two rows, one source each (Plus: two each), in an images/ folder."""
    (tmp_path / "images").mkdir()
    for i in range(3):
        _png(tmp_path / "images" / f"{i}.png", i)
    one = [{"prompt": "make it three apples", "source": "images/0.png", "tag": "counting",
            "include": [{"class": "apple", "count": 3}]}, {"prompt": "add a red cube", "source": "images/1.png"}]
    two = [{"prompt": "add 2 to 1", "source": ["images/0.png", "images/1.png"]},
           {"prompt": "swap them", "source": ["images/2.png", "images/0.png"]}]
    return {"single": _edit_file(tmp_path, one), "plus": _edit_file(tmp_path, two, "plus.jsonl"), "root": tmp_path}


def _file_of(kind, edits):
    return edits["plus" if kind == "qwenimage_edit_plus" else "single"]


def _overrides(kind, path, *extra):
    return [f"model.kind={kind}", f"model.path={path}", f"model.resolution={SIDE}", "model.max_sequence_length=16",
            *extra]


def _adapter(kind, path, *extra):
    return load_model(load_config(None, _overrides(kind, path, *extra)).model)


def test_edit_prompt_files_resolve_sources_and_keep_the_reward_metadata(edits, tmp_path):
    rows = load_prompts(str(edits["single"]))  # load_prompts routes a .jsonl with sources here
    root = edits["root"].resolve()
    assert [r["source_images"] for r in rows] == [[str(root / "images/0.png")], [str(root / "images/1.png")]]
    assert rows[0]["include"] == [{"class": "apple", "count": 3}] and rows[0]["tag"] == "counting"
    assert rows[1]["include"] == []  # as a .txt prompt's row: no GenEval clauses
    flow_grpo = _edit_file(tmp_path, [{"prompt": "p", "image": "images/2.png", "include": []}], "fg.jsonl")
    (tmp_path / "images").mkdir(exist_ok=True)
    _png(tmp_path / "images/2.png", 2)
    assert read_edits(flow_grpo)[0]["source_images"] == [str((tmp_path / "images/2.png").resolve())]
    src = load_source(rows[0]["source_images"][0])
    pixels = np.asarray(Image.open(root / "images/0.png"), dtype=np.float32) / 255
    assert src.shape == (3, SIDE, SIDE) and torch.equal(src, torch.from_numpy(pixels).permute(2, 0, 1))
    src[:] = 0  # a new tensor each call: the cache is not changed through it
    assert load_source(rows[0]["source_images"][0]).max() > 0


@pytest.mark.parametrize("row,error,match", [
    ({"prompt": "p", "source": "nope.png"}, MissingPathError, r"edits\.jsonl:2: source image .*nope\.png: no such"),
    ({"prompt": "p", "source": "notes.txt"}, InputError, r"edits\.jsonl:2: source image .*notes\.txt: not a readable"),
    ({"prompt": "", "source": "a.png"}, InputError, r"edits\.jsonl:2: 'prompt' \(the edit instruction\)"),
    ({"prompt": "p", "source": []}, InputError, r"edits\.jsonl:2: 'source' must be an image path"),
    ({"prompt": "p", "source": "a.png", "include": [{"class": "cat"}]}, InputError, r"edits\.jsonl:2: .*count"),
])
def test_bad_edit_rows_are_one_line_errors_naming_the_line(tmp_path, row, error, match):
    _png(tmp_path / "a.png", 0)
    (tmp_path / "notes.txt").write_text("not an image")
    path = _edit_file(tmp_path, [{"prompt": "ok", "source": "a.png"}, row])
    with pytest.raises(error, match=match) as e:
        load_prompts(str(path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind,scale,sources", [("flux_kontext", 1.0, 1), ("flux_kontext", 2.5, 1),
                                                ("qwenimage_edit", 4.0, 1), ("qwenimage_edit_plus", 4.0, 2)])
def test_edit_rollout_equals_the_pipeline_call(folders, edits, monkeypatch, kind, scale, sources):
    """Our Euler sampler on the family's grid equals the pipeline's own call with the same noise: Kontext with its
    embedded guidance, and with true CFG (negative prompt "", the same source); Qwen-Image-Edit's true CFG with " "
    and its norm rescale; Plus with two source images (its pipeline takes one prompt at a time). The pipelines
    size sources at 1024 x 1024's area: patched to the training resolution's, as Flow-GRPO's edit scripts do."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit, pipeline_qwenimage_edit_plus

    m = _adapter(kind, folders[kind])
    rows = read_edits(_file_of(kind, edits))[: 1 if sources == 2 else 2]
    x = initial_noise(m.latent_shape(), list(range(1, len(rows) + 1)))
    cond, null = encode_rows(m, rows), encode_nulls(m, rows)
    grid = m.rollout_grid("euler", 3, m.default_shift())
    ours = sample_ode(lambda xx, t: cfg_velocity(m, xx, t, cond, null, scale), x.clone(), grid, "euler")
    images = [[Image.open(p).convert("RGB") for p in r["source_images"]] for r in rows]
    kw = {"num_inference_steps": 3, "height": SIDE, "width": SIDE, "output_type": "latent", "max_sequence_length": 16,
          "latents": m.pipe._pack_latents(x.clone(), len(rows), 4, 8, 8)}
    prompts = [r["prompt"] for r in rows]
    if kind == "flux_kontext":
        cfg = {"negative_prompt": [""] * len(rows), "true_cfg_scale": scale} if scale > 1 else {}
        ref = m.pipe(image=[i[0] for i in images], prompt=prompts, guidance_scale=3.5, max_area=SIDE * SIDE,
                     _auto_resize=False, **cfg, **kw).images
    elif kind == "qwenimage_edit":
        dims = pipeline_qwenimage_edit.calculate_dimensions
        monkeypatch.setattr(pipeline_qwenimage_edit, "calculate_dimensions", lambda area, r: dims(SIDE * SIDE, r))
        ref = m.pipe(image=[i[0] for i in images], prompt=prompts, negative_prompt=[" "] * len(rows),
                     true_cfg_scale=scale, **kw).images
    else:
        monkeypatch.setattr(pipeline_qwenimage_edit_plus, "VAE_IMAGE_SIZE", SIDE * SIDE)
        ref = m.pipe(image=images[0], prompt=prompts[0], negative_prompt=" ", true_cfg_scale=scale, **kw).images
    ref = m.pipe._unpack_latents(ref, SIDE, SIDE, 8)
    ref = ref if kind == "flux_kontext" else ref[:, :, 0]
    assert torch.equal(grid.timesteps, m.pipe.scheduler.timesteps)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), (ours - ref).abs().max()


def test_the_source_matters_and_cfg_keeps_it_in_the_unconditional_branch(folders, edits):
    """The velocity depends on the source image; CFG's null rows are the empty instruction with each row's
    own source latents; a row is encoded once per (instruction, sources) and cached."""
    m = _adapter("flux_kontext", folders["flux_kontext"])
    rows = read_edits(edits["single"])
    swapped = [{**rows[0], "source_images": rows[1]["source_images"]}, rows[1]]
    cond, null, other = encode_rows(m, rows), encode_nulls(m, rows), encode_rows(m, swapped)
    assert torch.equal(cond["source"], null["source"]) and not torch.equal(cond["embeds"], null["embeds"])
    assert len(m._cache) == 5  # 2 rows, their 2 nulls, the swapped row (its second row is cached)
    x, t = torch.randn(2, *m.latent_shape(), generator=torch.Generator().manual_seed(0)), torch.tensor([700.0, 300.0])
    with torch.no_grad():
        v, v_other = m.velocity(x, t, cond), m.velocity(x, t, other)
    assert (v[0] - v_other[0]).abs().max() > 1e-4 and torch.equal(v[1], v_other[1])


def test_sources_are_resized_to_the_training_resolution_with_pils_bicubic(folders, tmp_path):
    """Flow-GRPO's editing scripts resize each source to (resolution, resolution) with PIL before the pipeline:
    a 96 px source gives the condition of that source resized by PIL's bicubic."""
    big = _png(tmp_path / "big.png", 5, (96, 96))
    Image.open(big).convert("RGB").resize((SIDE, SIDE), Image.BICUBIC).save(tmp_path / "small.png")
    m = _adapter("qwenimage_edit", folders["qwenimage_edit"])
    a = encode_rows(m, read_edits(_edit_file(tmp_path, [{"prompt": "p", "source": "big.png"}], "a.jsonl")))
    b = encode_rows(m, read_edits(_edit_file(tmp_path, [{"prompt": "p", "source": "small.png"}], "b.jsonl")))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["source"].shape == (1, 1, 4, 8, 8)  # [B, sources, C, h, w]


def test_what_a_family_cannot_take_is_a_one_line_error(folders, edits, tmp_path):
    _png(tmp_path / "wide.png", 1, (96, 64))
    kontext = _adapter("flux_kontext", folders["flux_kontext"])
    wide = read_edits(_edit_file(tmp_path, [{"prompt": "p", "source": "wide.png"}], "w.jsonl"))
    cases = [
        (kontext, read_edits(edits["plus"]), "has 2 source images; model.kind=flux_kontext takes at most 1"),
        (kontext, wide, r"96x64; .*crop it square"),
        (kontext, [{"prompt": "a red cube", "include": []}], "has no source image; .*give an edit prompt file"),
    ]
    mixed = [*read_edits(edits["plus"])[:1], *read_edits(edits["single"])[:1]]
    cases.append((_adapter("qwenimage_edit_plus", folders["qwenimage_edit_plus"]), mixed,
                  r"rows have \[1, 2\] source images; every row needs as many"))
    for model, rows, match in cases:
        with pytest.raises(InputError, match=match) as e:
            encode_rows(model, rows)
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="edits images"):
        kontext.encode_prompts(["a red cube"])


def test_the_trainer_checks_every_row_before_training(folders, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    cfg = load_config(None, [*_overrides("flux_kontext", folders["flux_kontext"]), f"run.out_dir={tmp_path / 'run'}",
                             f"train.prompts={prompts}", f"eval.split={prompts}", "reward.name=colorfulness"])
    with pytest.raises(InputError, match="^train.prompts: model.kind=flux_kontext: the prompt 'a red cube' has no "):
        Trainer(cfg)


def _train_overrides(kind, path, prompts, run, algo="dgpo", epochs=2):
    return [*_overrides(kind, path), f"run.out_dir={run}", f"run.epochs={epochs}", "run.sample_every=0",
            "run.eval_at_ends=false", "run.log_with=none", f"train.prompts={prompts}", f"eval.split={prompts}",
            "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=8", "train.lora_rank=4",
            "train.lora_alpha=8", "train.lr=1e-2", "sampler.steps=3", "sampler.method=euler",
            "timesteps.trunc_steps=2", "timesteps.count=2", f"train.algorithm={algo}", "reward.name=colorfulness",
            *(["sampler.cfg_scale=1.0"] if kind == "flux_kontext" else [])]


def _velocity(model, rows):
    x = torch.randn(len(rows), *model.latent_shape(), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.velocity(x, torch.tensor([900.0, 400.0][: len(rows)]), encode_rows(model, rows))


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_dgpo_trains_two_epochs_and_the_exported_lora_loads_into_diffusers(folders, edits, kind, tmp_path):
    """Two DGPO epochs with LoRA: exactly the LoRA tensors move; the export loads with the pipeline's own
    ``load_lora_weights`` and gives the trained velocity back to 1e-5, as does the merged folder."""
    prompts = _file_of(kind, edits)
    run = tmp_path / "run"
    tr = Trainer(load_config(None, _train_overrides(kind, folders[kind], prompts, run)))
    before = {n: p.detach().clone() for n, p in tr.model.denoiser.named_parameters()}
    assert tr.fit()["steps"] == 2
    trainable = set(tr.policy.names)
    assert trainable and all("lora_" in n for n in trainable)
    last = f"transformer_blocks.{len(tr.model.denoiser.transformer_blocks) - 1}."
    dead = [] if kind == "flux_kontext" else [last + "attn.add_q_proj"]  # Qwen's last text stream: no gradient
    for n, p in tr.model.denoiser.named_parameters():
        if not any(d in n for d in dead):
            assert (not torch.equal(before[n], p.detach())) == (n in trainable), n

    rows = read_edits(prompts)
    v_trained = _velocity(load_run(run)[0], rows)  # the slow-EMA weights, which the export writes
    lora = export_run(run, tmp_path / "lora")
    assert lora.name == LORA_FILE
    fresh = _adapter(kind, folders[kind])
    v_base = _velocity(fresh, rows)
    fresh.pipe.load_lora_weights(str(lora.parent))  # diffusers' own loader, the file as written
    assert (v_trained - v_base).abs().max() > 1e-4  # the adapter matters
    assert (_velocity(fresh, rows) - v_trained).abs().max() <= 1e-5
    merged = export_run(run, tmp_path / "merged", merge=True)
    assert (_velocity(_adapter(kind, merged), rows) - v_trained).abs().max() <= 1e-5


@pytest.mark.parametrize("algo", sorted(a for a in ALGORITHMS if a != "dgpo"))
def test_every_algorithm_trains_on_an_edit_family_unchanged(folders, edits, algo, tmp_path):
    extra = {"flow_grpo": ["grpo.timestep_fraction=1.0"], "awm": ["awm.train_timesteps=1"]}.get(algo, [])
    cfg = load_config(None, [*_train_overrides("flux_kontext", folders["flux_kontext"], edits["single"],
                                               tmp_path / "run", algo, 1), *extra])
    tr = Trainer(cfg)
    before = [p.detach().clone() for p in tr.policy.params]
    assert tr.fit()["steps"] == 1
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, tr.policy.params))


def test_flow_grpo_on_qwenimage_edit_reevaluates_its_rollout_on_policy(folders, edits, tmp_path):
    """The training forward (guided with the sources in both branches, v_u detached) reproduces the rollout's
    log-probs before an update."""
    from dgpo.data.prompts import epoch_prompts

    cfg = load_config(None, [*_train_overrides("qwenimage_edit", folders["qwenimage_edit"], edits["single"],
                                               tmp_path / "run", "flow_grpo", 1), "train.group_size=2",
                             "train.batch_size=4"])
    tr = Trainer(cfg)
    batch = tr.algo.rollout(epoch_prompts(tr.prompts, 2, 0, 0), 0, 0)
    adv = torch.linspace(-1, 1, len(batch.x0))
    for j in tr.algo.units(batch, 0, 0):
        assert float(tr.algo.micro_loss(batch, adv, torch.arange(len(adv)), j, 0, 0).stats["ratio_dev"]) < 1e-5


def test_dgpo_sample_and_eval_take_an_edit_prompt_file(folders, edits, tmp_path, capsys):
    """`dgpo sample --prompt-file`: each row's source, then its results; `dgpo eval` on an edit file scores
    with --reward (and refuses the toy scorer without it)."""
    from dgpo.cli import main

    out = tmp_path / "grid.png"
    assert main(["sample", "--prompt-file", str(edits["single"]), "--model", str(folders["flux_kontext"]),
                 "--resolution", str(SIDE), "--n", "2", "--steps", "2", "--cfg-scale", "1", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and Image.open(out).size[0] > 0
    base = ["eval", "--split", str(edits["single"]), "--model", str(folders["flux_kontext"]), "--resolution",
            str(SIDE), "--steps", "2", "--cfg-scale", "1", "--min-per-category", "0", "--out", str(tmp_path / "ev")]
    assert main(base) == 2
    assert "give --reward" in capsys.readouterr().err
    assert main([*base, "--reward", "colorfulness,jpeg_compressibility", "--reward-weights", "1,0"]) == 0
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert result["n_images"] == 2 and result["reward"] > 0
