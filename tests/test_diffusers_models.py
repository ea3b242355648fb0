"""SD3 / FLUX / Sana / Qwen-Image adapters on tiny offline pipelines: they match the pipelines, train, and export
a LoRA that diffusers loads as is (and a merged folder)."""

import json

import numpy as np
import pytest
import torch
from tiny_diffusers import BUILDERS

from dgpo.config import load_config
from dgpo.models.base import cfg_velocity
from dgpo.models.families import EDIT_KINDS, FAMILIES, PIPELINE_KINDS, VIDEO_KINDS
from dgpo.models.loading import load_model
from dgpo.samplers.ode import sample_ode
from dgpo.samplers.rollout import initial_noise
from dgpo.training.export import LORA_FILE, export_run, load_run
from dgpo.training.trainer import Trainer

# every text-to-image family, each with a tiny pipeline in tiny_diffusers.BUILDERS (the video families:
# tests/test_wan.py; the editing families: tests/test_edit_models.py)
KINDS = [k for k in FAMILIES if k not in VIDEO_KINDS and k not in EDIT_KINDS]


def test_every_family_has_a_tiny_pipeline_and_loads_by_its_pipeline_class():
    assert set(BUILDERS) == set(FAMILIES)
    assert {PIPELINE_KINDS[pipeline] for _, _, pipeline in FAMILIES.values()} == set(FAMILIES)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    return {k: BUILDERS[k](root / k) for k in KINDS}


def _model_overrides(kind, path):
    return [f"model.kind={kind}", f"model.path={path}", "model.resolution=64", "model.max_sequence_length=16",
            *(["sampler.cfg_scale=1.0"] if kind == "flux" else [])]


def _adapter(kind, path):
    return load_model(load_config(None, _model_overrides(kind, path)).model)


@pytest.mark.parametrize("kind,method", [("sd3", "euler"), ("sd3", "dpm"), ("flux", "euler"), ("sana", "dpm"),
                                         ("qwenimage", "euler")])
def test_adapter_rollout_equals_the_pipeline_call(folders, kind, method):
    """Our sampler on the family's grid equals the diffusers pipeline's own call with its default
    timesteps (SD3 with the official DGPO DPM-Solver swapped in for "dpm"): same sigmas, and the
    transformer gets the same timesteps (the DPM grid's integers)."""
    from diffusers import DPMSolverMultistepScheduler

    m = _adapter(kind, folders[kind])
    prompts, steps = ["a red cube", "a blue ball"], 4
    scale = 1.0 if kind == "flux" else 4.5
    x = initial_noise(m.latent_shape(), [1, 2])
    cond, null = m.encode_prompts(prompts), m.encode_prompts(["", ""])
    grid = m.rollout_grid(method, steps, m.default_shift())
    ours = sample_ode(lambda xx, t: cfg_velocity(m, xx, t, cond, null, scale), x.clone(), grid, method)
    kw = {"num_inference_steps": steps, "height": 64, "width": 64, "output_type": "latent", "max_sequence_length": 16}
    if kind == "sd3":
        if method == "dpm":
            m.pipe.scheduler = DPMSolverMultistepScheduler(
                num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
                final_sigmas_type="zero")
        ref = m.pipe(prompts, latents=x.clone(), guidance_scale=scale, **kw).images
    elif kind == "flux":
        packed = m.pipe._pack_latents(x.clone(), 2, 4, 8, 8)
        ref = m.pipe(prompts, latents=packed, guidance_scale=3.5, **kw).images
        ref = m.pipe._unpack_latents(ref, 64, 64, 8)
    elif kind == "qwenimage":  # true CFG with the negative prompt " " (and its norm rescale), 5D latents
        packed = m.pipe._pack_latents(x.clone(), 2, 4, 8, 8)
        ref = m.pipe(prompts, negative_prompt=[" ", " "], true_cfg_scale=scale, latents=packed, **kw).images
        ref = m.pipe._unpack_latents(ref, 64, 64, 8)[:, :, 0]
    else:
        ref = m.pipe(prompts, latents=x.clone(), guidance_scale=scale, complex_human_instruction=None,
                     use_resolution_binning=False, **kw).images
    assert torch.equal(grid.timesteps, m.pipe.scheduler.timesteps)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), (ours - ref).abs().max()


def test_sd3_encodes_128_t5_tokens_and_flow_grpo_walks_its_scheduler_grid(folders, tmp_path):
    """Official: SD3 prompts (and the empty negative prompt) with max_sequence_length=128; Flow-GRPO's
    rollouts on the pipeline's own FlowMatchEulerDiscreteScheduler after set_timesteps(10)."""
    cfg = load_config(None, ["model.kind=sd3", f"model.path={folders['sd3']}", "model.resolution=64",
                             "train.algorithm=flow_grpo", f"run.out_dir={tmp_path}", "reward.name=colorfulness"])
    assert cfg.model.max_sequence_length == 0
    tr = Trainer(cfg)
    assert tr.model.max_sequence_length == 128
    clip_tokens = tr.model.pipe.tokenizer.model_max_length
    assert tr.model.encode_prompts([""])["embeds"].shape[1] == clip_tokens + 128
    sched = tr.model.pipe.scheduler
    assert type(sched).__name__ == "FlowMatchEulerDiscreteScheduler" and sched.config.shift == 3.0
    sched.set_timesteps(10)
    assert torch.equal(tr.algo.grid.sigmas, sched.sigmas.double())
    assert torch.equal(tr.algo.grid.timesteps, sched.timesteps)


def test_text_embeddings_are_cached_per_prompt(folders):
    m = _adapter("sd3", folders["sd3"])
    a = m.encode_prompts(["a cat", "a dog", "a cat"])
    assert len(m._cache) == 2 and torch.equal(a["embeds"][0], a["embeds"][2])
    b = m.encode_prompts(["a dog"])
    assert torch.equal(b["embeds"][0], a["embeds"][1]) and len(m._cache) == 2


def test_the_text_cache_keeps_the_most_recently_used_prompts_in_host_memory(folders):
    m = load_model(load_config(None, [*_model_overrides("sd3", folders["sd3"]), "model.text_cache=2"]).model)
    first = m.encode_prompts(["a cat", "a dog"])
    m.encode_prompts(["a cat", "a fox"])  # "a dog" is now the least recently used: evicted
    assert list(m._cache) == ["a cat", "a fox"]
    assert all(v.device.type == "cpu" for e in m._cache.values() for v in e.values())
    again = m.encode_prompts(["a dog"])  # encoded anew, the same embedding
    assert torch.equal(again["embeds"][0], first["embeds"][1]) and list(m._cache) == ["a fox", "a dog"]


def test_qwenimage_caches_prompts_unpadded_and_pads_batches_to_the_sequence_length(folders):
    m = _adapter("qwenimage", folders["qwenimage"])
    cond = m.encode_prompts(["a red cube", "", "a red cube"])
    lengths = [e["mask"].shape[1] for e in m._cache.values()]
    assert lengths == [16, 14] and all(bool(e["mask"].all()) for e in m._cache.values())  # " ": 14 tokens
    assert cond["embeds"].shape[:2] == cond["mask"].shape == (3, 16)
    assert cond["mask"].sum(1).tolist() == [16, 14, 16] and not cond["embeds"][1, 14:].any()


@pytest.mark.parametrize("kind", KINDS)
def test_the_vae_decodes_in_fp32_whatever_the_model_dtype(folders, kind):
    """Official (train_sd3_dgpo.py): text encoders and transformer in the inference dtype, the VAE in
    fp32; a bf16 pipeline decodes the same images as an fp32 one from the same latents."""
    bf16 = load_model(load_config(None, [*_model_overrides(kind, folders[kind]), "model.dtype=bf16"]).model)
    fp32 = _adapter(kind, folders[kind])
    assert bf16.pipe.vae.dtype == torch.float32 and bf16.pipe.transformer.dtype == torch.bfloat16
    assert bf16.pipe.text_encoder.dtype == torch.bfloat16
    z = torch.randn(2, *fp32.latent_shape(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(bf16.decode(z), fp32.decode(z))


def test_text_embeddings_do_not_depend_on_autocast(folders):
    """The encoders run in their dtype outside autocast (official), so a prompt first encoded inside a
    bf16 autocast region (a rollout) caches the embedding it gets outside one."""
    plain, inside = _adapter("sd3", folders["sd3"]), _adapter("sd3", folders["sd3"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = inside.encode_prompts(["a red cube"])
    b = plain.encode_prompts(["a red cube"])
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == torch.float32 for k in a)


def _velocity(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *model.latent_shape(), generator=g)
    t = torch.tensor([0.9, 0.4])
    with torch.no_grad():
        return model.velocity(x, t, model.encode_prompts(["a red cube", "two blue balls"]))


@pytest.mark.parametrize("kind", KINDS)
def test_train_two_epochs_then_export_lora_and_merged(folders, kind, tmp_path):
    run = tmp_path / "run"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue ball on grass\na green sign\n")
    cfg = load_config(None, [*_model_overrides(kind, folders[kind]), f"run.out_dir={run}", "run.epochs=2",
                             "run.sample_every=0", f"train.prompts={prompts}", f"eval.split={prompts}",
                             "eval.min_per_category=0", "train.prompts_per_epoch=2",
                             "train.group_size=4", "train.batch_size=8", "train.lora_rank=4", "train.lora_alpha=8",
                             "train.lr=1e-2", "sampler.steps=3", "timesteps.trunc_steps=2", "timesteps.count=2",
                             "reward.name=colorfulness"])
    tr = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in tr.model.denoiser.named_parameters()}
    summary = tr.fit()
    assert summary["eval_after"]["overall"] == summary["eval_after"]["reward"] > 0  # eval = the reward's mean
    assert (run / "samples" / "after.png").is_file()
    trainable = set(tr.policy.names)
    assert trainable and all("lora_" in n for n in trainable)
    # SD3's last block is context_pre_only: its text queries (add_q_proj) feed only discarded text
    # outputs, so they get exactly zero gradient (the official target list adapts them anyway; only
    # weight decay moves their lora_A); Qwen-Image's last block discards its whole text stream
    last = f"transformer_blocks.{len(tr.model.denoiser.transformer_blocks) - 1}."
    dead = {"sd3": ["attn.add_q_proj"], "qwenimage": ["attn.add_q_proj"]}.get(kind, [])
    if kind == "qwenimage":  # its last block's text-stream output projection and MLP: never adapted
        assert not [n for n in trainable if last + "attn.to_add_out" in n or last + "txt_mlp" in n]
        assert [n for n in trainable if ".attn.to_add_out" in n or ".txt_mlp" in n]  # the first block's are
    for n, p in tr.model.denoiser.named_parameters():
        if not any(last + d in n for d in dead):
            assert (not torch.equal(before[n], p.detach())) == (n in trainable), n

    trained, _, _ = load_run(run)  # the slow-EMA weights, which the export writes
    v_trained = _velocity(trained)
    lora = export_run(run, tmp_path / "lora")
    assert lora.name == LORA_FILE
    fresh = _adapter(kind, folders[kind])
    v_base = _velocity(fresh)
    fresh.pipe.load_lora_weights(str(lora.parent))  # diffusers' own loader, file as written
    v_loaded = _velocity(fresh)
    assert (v_trained - v_base).abs().max() > 1e-4  # the adapter matters
    assert (v_loaded - v_trained).abs().max() <= 1e-5

    merged = export_run(run, tmp_path / "merged", merge=True)
    assert json.loads((merged / "model_index.json").read_text())["_class_name"].endswith("Pipeline")
    v_merged = _velocity(_adapter(kind, merged))
    assert (v_merged - v_trained).abs().max() <= 1e-5

    # `dgpo sample` on the base pipeline folder, with and without the exported LoRA, in batches of 1
    from PIL import Image

    from dgpo.cli import main

    grids = {}
    for name, extra in (("base", []), ("lora", ["--lora", str(lora.parent)])):
        out = tmp_path / f"{name}.png"
        assert main(["sample", "a red cube", "--model", str(folders[kind]), "--resolution", "64", "--n", "2",
                     "--batch-size", "1", "--steps", "2", "--out", str(out), *extra]) == 0
        grids[name] = np.asarray(Image.open(out))
    assert grids["base"].shape == grids["lora"].shape and not np.array_equal(grids["base"], grids["lora"])


def test_missing_or_malformed_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        _adapter("sd3", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no model_index.json"):
        _adapter("flux", tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", '
                                          '"SD3Transformer2DModel"]}')
    with pytest.raises(ValueError, match="cannot load it as StableDiffusion3Pipeline"):
        _adapter("sd3", bad)
    with pytest.raises(ValueError, match="model.path is required"):
        load_model(load_config(None, ["model.kind=sana"]).model)


def test_qwenimage_guidance_rescales_each_packed_token_to_the_conditional_norm(folders):
    """QwenImagePipeline's true CFG: comb = v_u + s (v_c - v_u), then comb * |v_c| / |comb| with the
    norms over each packed 2x2 token's channels (its last dim); the adapter works on unpacked latents."""
    m = _adapter("qwenimage", folders["qwenimage"])
    g = torch.Generator().manual_seed(3)
    v_c, v_u = torch.randn(2, 2, *m.latent_shape(), generator=g)
    packed = [m.pipe._pack_latents(v, 2, *m.latent_shape()) for v in (v_c, v_u)]
    comb = packed[1] + 4.0 * (packed[0] - packed[1])
    ref = comb * (torch.norm(packed[0], dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
    ours = m.pipe._pack_latents(m.guide(v_c, v_u, 4.0), 2, *m.latent_shape())
    assert torch.equal(ours, ref)
    assert not torch.allclose(ours, comb, atol=1e-3)  # the rescale matters


def test_flow_grpo_on_qwenimage_reevaluates_its_rollout_on_policy(folders, tmp_path):
    """The training forward (guided, v_u detached) reproduces the rollout's log-probs before an update."""
    from dgpo.data.prompts import epoch_prompts

    cfg = load_config(None, [*_model_overrides("qwenimage", folders["qwenimage"]), f"run.out_dir={tmp_path}",
                             "train.algorithm=flow_grpo", "sampler.steps=3", "timesteps.trunc_steps=2",
                             "timesteps.count=2", "train.prompts_per_epoch=2",
                             "train.group_size=2", "train.batch_size=4", "reward.name=colorfulness"])
    tr = Trainer(cfg)
    batch = tr.algo.rollout(epoch_prompts(tr.prompts, 2, 0, 0), 0, 0)
    adv = torch.linspace(-1, 1, len(batch.x0))
    for j in tr.algo.units(batch, 0, 0):
        assert float(tr.algo.micro_loss(batch, adv, torch.arange(len(adv)), j, 0, 0).stats["ratio_dev"]) < 1e-5


def test_qwenimage_on_a_diffusers_without_the_text_mask_is_a_clear_error(folders, monkeypatch):
    from diffusers.models.transformers import transformer_qwenimage

    from dgpo.errors import InputError

    monkeypatch.delattr(transformer_qwenimage, "compute_text_seq_len_from_mask")  # as diffusers < 0.37
    with pytest.raises(InputError, match="0.37 or later"):
        _adapter("qwenimage", folders["qwenimage"])


def test_offload_moves_each_part_once_until_released(folders, monkeypatch):
    """model.offload: an encode or decode brings the part it needs to the device, where it stays until
    ``release_aux`` (the trainer's, before training forwards): an eval's batches move it once."""
    m = load_model(load_config(None, [*_model_overrides("sd3", folders["sd3"]), "model.offload=true"]).model)
    moves = []
    for name in ("text_encoder", "vae"):
        module = getattr(m.pipe, name)
        monkeypatch.setattr(module, "to", lambda *a, name=name, to=module.to, **k: moves.append(name) or to(*a, **k))
    for batch in (["a cat"], ["a dog"], ["a fox"]):
        m.decode(torch.zeros(1, *m.latent_shape()) + len(m.encode_prompts(batch)["embeds"]))
    assert moves == ["text_encoder", "vae"]
    assert m._resident == {"text_encoder", "text_encoder_2", "text_encoder_3", "vae"}
    m.release_aux()
    assert moves == ["text_encoder", "vae", "text_encoder", "vae"] and not m._resident
    m.encode_prompts(["a cat"])  # cached: nothing moves
    assert len(moves) == 4 and not m._resident
