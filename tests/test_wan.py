"""The Wan adapter (text-to-video) on tiny offline WanPipelines: Wan2.1, Wan2.2 A14B's two experts and TI2V-5B.
Rollouts equal the pipeline's own call, decoding equals its decoding, prompts are padded as it pads them;
DGPO (and Flow-GRPO, DPO, DiffusionNFT) train on it, LoRA covers both experts and exports to the files
diffusers' ``load_lora_weights`` reads; impossible sizes are config errors."""

import pytest
import torch
from tiny_diffusers import build_wan, video_brightness

from dgpo.config import ConfigError, load_config
from dgpo.models.base import cfg_velocity
from dgpo.models.loading import load_model
from dgpo.samplers.ode import sample_ode
from dgpo.samplers.rollout import initial_noise
from dgpo.training.export import LORA_FILE, export_run, load_any, load_run
from dgpo.training.trainer import Trainer

VARIANTS = ("2.1", "2.2", "ti2v")
SIZES = {"2.1": (16, 32), "2.2": (16, 32), "ti2v": (32, 64)}  # (height, width): TI2V-5B's sides are multiples of 32
FRAMES = 9  # 3 latent frames


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    return {v: build_wan(root / v, v) for v in VARIANTS}


def _overrides(variant, path, *extra):
    h, w = SIZES[variant]
    return ["model.kind=wan", f"model.path={path}", f"model.resolution={h}", f"model.width={w}",
            f"model.frames={FRAMES}", "model.max_sequence_length=16", *extra]


def _adapter(variant, path, *extra):
    return load_model(load_config(None, _overrides(variant, path, *extra)).model)


@pytest.mark.parametrize("variant,method", [("2.1", "euler"), ("2.1", "dpm"), ("2.2", "dpm"), ("2.2", "euler"),
                                            ("ti2v", "euler")])
def test_rollout_equals_the_pipeline_call(wan, variant, method):
    """dgpo's sampler equals WanPipeline.__call__ (output_type="latent") to 1e-5 on the same grid: the
    pipeline's scheduler swapped for the method's (FlowMatchEuler / the official flow DPM-Solver) with the
    model card's shift. Wan2.2: the high-noise expert with guidance_scale above the boundary, transformer_2
    with guidance_scale_2 below (the grid crosses it); TI2V-5B: per-token timesteps."""
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    from dgpo.schedules import FLOW_DPM_CONFIG

    second = ["model.guidance_scale_2=2.0"] if variant == "2.2" else []
    m = _adapter(variant, wan[variant], *second)
    h, w = SIZES[variant]
    assert m.modality == "video" and m.latent_shape() == (48 if variant == "ti2v" else 16, 3, h // 8 // (
        2 if variant == "ti2v" else 1), w // 8 // (2 if variant == "ti2v" else 1))
    prompts, steps, scale = ["a red cube", "a blue ball"], 4, 4.5
    x = initial_noise(m.latent_shape(), [1, 2])
    cond, null = m.encode_prompts(prompts), m.encode_prompts(["", ""])
    grid = m.rollout_grid(method, steps, m.default_shift())
    ours = sample_ode(lambda xx, t: cfg_velocity(m, xx, t, cond, null, scale), x.clone(), grid, method)
    m.pipe.scheduler = (DPMSolverMultistepScheduler.from_config(FLOW_DPM_CONFIG, flow_shift=m.default_shift())
                        if method == "dpm" else FlowMatchEulerDiscreteScheduler(shift=m.default_shift()))
    kw = {"guidance_scale_2": 2.0} if variant == "2.2" else {}
    ref = m.pipe(prompts, latents=x.clone(), guidance_scale=scale, num_inference_steps=steps, height=h, width=w,
                 num_frames=FRAMES, output_type="latent", max_sequence_length=16, **kw).frames
    assert torch.equal(grid.timesteps, m.pipe.scheduler.timesteps)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), (ours - ref).abs().max()
    assert (ours - x).abs().max() > 0.1  # the model moved the latents
    if variant == "2.2":  # both experts denoised: steps on both sides of the boundary
        high = grid.timesteps.float() >= 875
        assert high.any() and not high.all()
    if variant == "2.1" and method == "euler":  # decoding: the pipeline's de-normalisation and VAE, [B, F, 3, H, W]
        m.pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=m.default_shift())
        video = m.pipe(prompts, latents=x.clone(), guidance_scale=scale, num_inference_steps=steps, height=h,
                       width=w, num_frames=FRAMES, output_type="pt", max_sequence_length=16).frames
        ours_video = m.decode(ours)
        assert ours_video.shape == (2, FRAMES, 3, h, w) == video.shape
        assert torch.allclose(ours_video, video, atol=1e-4, rtol=0), (ours_video - video).abs().max()


def test_wan22_routes_each_sample_to_its_expert_and_guides_it_with_its_scale(wan):
    """A training batch may mix timesteps: each sample goes to the expert the pipeline would use at its
    timestep (t >= 875: transformer, else transformer_2), and CFG uses that expert's scale."""
    m = _adapter("2.2", wan["2.2"], "model.guidance_scale_2=2.0")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *m.latent_shape(), generator=g)
    t = torch.tensor([950.0, 300.0, 875.0])
    cond = m.encode_prompts(["a red cube", "a blue ball", "a green sign"])
    with torch.no_grad():
        v = m.velocity(x, t, cond)
        for i, expert in ((0, m.pipe.transformer), (1, m.pipe.transformer_2), (2, m.pipe.transformer)):
            alone = expert(hidden_states=x[i : i + 1], timestep=t[i : i + 1],
                           encoder_hidden_states=cond["embeds"][i : i + 1], return_dict=False)[0]
            assert torch.allclose(v[i : i + 1], alone, atol=1e-6, rtol=0), i
    assert m.cfg_scales(t, 4.5).tolist() == [4.5, 2.0, 4.5]
    plain = _adapter("2.2", wan["2.2"])  # guidance_scale_2 unset: the pipeline's default, guidance_scale for both
    assert plain.cfg_scales(t, 4.5) == 4.5


def test_wan22_an_expert_without_samples_gets_zero_gradients_not_none(wan):
    """Under grad both experts run in every forward (one without samples on a dummy token, times zero), so
    that every LoRA weight has a gradient at every backward, as DDP needs; the result is unchanged."""
    from dgpo.training.policy import Policy

    m = _adapter("2.2", wan["2.2"])
    policy = Policy(m, 4, 8)
    x = torch.randn(2, *m.latent_shape(), generator=torch.Generator().manual_seed(0))
    cond = m.encode_prompts(["a red cube", "a blue ball"])
    t = torch.tensor([990.0, 900.0])  # both high noise
    v = m.velocity(x, t, cond)
    with torch.no_grad():
        assert torch.equal(v, m.velocity(x, t, cond))  # without grad: no dummy, the same velocity
    v.pow(2).mean().backward()
    grads = {n: p.grad for n, p in zip(policy.names, policy.params)}
    low = [n for n in grads if ".transformer_2." in n]
    high = [n for n in grads if ".transformer." in n]
    assert low and high and len(low) + len(high) == len(grads)
    assert all(grads[n] is not None and not grads[n].any() for n in low)
    assert all(grads[n].abs().sum() > 0 for n in high if "lora_B" in n)  # (lora_B starts at 0: lora_A gets none yet)


def test_prompts_are_padded_as_the_pipeline_pads_them_and_cached_without_the_padding(wan):
    m = _adapter("2.1", wan["2.1"])
    prompts = ["a red cube", "", "a big ball"]
    cond = m.encode_prompts(prompts)
    ref, _ = m.pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=16)
    assert cond["embeds"].shape == (3, 16, 32) and torch.equal(cond["embeds"], ref)
    lengths = [e["embeds"].shape[1] for e in m._cache.values()]
    assert lengths == [(ref[i].ne(0).any(-1)).sum() for i in range(3)] and max(lengths) < 16
    again = m.encode_prompts(prompts[::-1])  # from the cache, padded again
    assert torch.equal(again["embeds"], ref.flip(0))


def test_the_vae_decodes_in_fp32_whatever_the_model_dtype(wan):
    bf16 = _adapter("2.2", wan["2.2"], "model.dtype=bf16")
    fp32 = _adapter("2.2", wan["2.2"])
    assert bf16.pipe.vae.dtype == torch.float32 and bf16.pipe.transformer_2.dtype == torch.bfloat16
    assert bf16.pipe.text_encoder.dtype == torch.bfloat16
    z = torch.randn(2, *fp32.latent_shape(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(bf16.decode(z), fp32.decode(z))


@pytest.mark.parametrize("override, match", [
    ("model.frames=8", r"model\.frames=8: .*multiple of 4 \(e\.g\. 5 or 9\)"),
    ("model.frames=34", r"model\.frames=34: .*\(e\.g\. 33 or 37\)"),
    ("model.resolution=20", r"model\.resolution=20: Wan frame sides are multiples of 16"),
    ("model.width=100", r"model\.width=100: Wan frame sides are multiples of 16"),
])
def test_impossible_sizes_are_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["model.kind=wan", override])


@pytest.mark.parametrize("override", ["model.frames=33", "model.width=416", "model.guidance_scale_2=3.0",
                                      "model.boundary_ratio=0.9"])
def test_video_keys_are_config_errors_for_image_models(override):
    with pytest.raises(ConfigError, match=r"only the diffusers video families \[.wan.\] read it \(model\.kind=.sd3."):
        load_config(None, ["model.kind=sd3", override])


def test_sizes_the_loaded_pipeline_cannot_make_are_config_errors(wan):
    with pytest.raises(ConfigError, match=r"model\.resolution=16: .*multiples of 32 \(the VAE's 16x"):
        _adapter("ti2v", wan["ti2v"], "model.resolution=16")  # TI2V-5B: 16x VAE and 2x2 patches
    with pytest.raises(ConfigError, match=r"model\.guidance_scale_2: only Wan2\.2's two-expert pipelines"):
        _adapter("2.1", wan["2.1"], "model.guidance_scale_2=3.0")
    m = _adapter("2.1", wan["2.1"], "model.frames=0", "model.resolution=0", "model.width=0")
    assert (m.frames, m.resolution, m.width) == (81, 480, 832)  # WanPipeline's defaults
    assert m.latent_shape() == (16, 21, 60, 104) and m.default_shift() == 3.0


def _train_overrides(variant, path, run, prompts, algo="dgpo", epochs=2):
    # uniform training times in [0.3, 1]: the samples of an epoch reach both of Wan2.2's experts
    return [*_overrides(variant, path), f"run.out_dir={run}", f"run.epochs={epochs}", "run.sample_every=0",
            "run.eval_at_ends=false", "run.log_with=none", f"train.prompts={prompts}", "train.prompts_per_epoch=2",
            "train.group_size=4", "train.batch_size=8", "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2",
            "sampler.steps=3", "timesteps.mode=uniform", "timesteps.t_min=0.3", "timesteps.count=2",
            f"train.algorithm={algo}", "reward.name=tiny_diffusers:video_brightness"]


def _velocity(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *model.latent_shape(), generator=g)
    t = torch.tensor([950.0, 400.0])  # Wan2.2: one sample for each expert
    with torch.no_grad():
        return model.velocity(x, t, model.encode_prompts(["a red cube", "two blue balls"]))


@pytest.mark.parametrize("variant", ["2.1", "2.2"])
def test_dgpo_trains_two_steps_and_the_exported_lora_loads_into_diffusers(wan, variant, tmp_path):
    """Two DGPO steps through the Trainer: exactly the LoRA tensors move, of both experts for Wan2.2. The
    export loads with WanPipeline.load_lora_weights (Wan2.2: the second file with load_into_transformer_2)
    and gives the trained velocity back, as does dgpo's own --lora path and the merged folder."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue ball on grass\na green sign\n")
    run = tmp_path / "run"
    tr = Trainer(load_config(None, _train_overrides(variant, wan[variant], run, prompts)))
    before = {n: p.detach().clone() for n, p in tr.model.denoiser.named_parameters()}
    assert tr.fit()["steps"] == 2
    trainable = set(tr.policy.names)
    assert trainable and all("lora_" in n for n in trainable)
    for n, p in tr.model.denoiser.named_parameters():
        assert (not torch.equal(before[n], p.detach())) == (n in trainable), n
    if variant == "2.2":
        experts = {n.split(".")[2] for n in trainable}  # base_model.model.<expert>.blocks...
        assert experts == {"transformer", "transformer_2"}
        assert len([n for n in trainable if ".transformer_2." in n]) == len(trainable) // 2

    trained, _, _ = load_run(run)  # the slow-EMA weights, which the export writes
    v_trained = _velocity(trained)
    lora = export_run(run, tmp_path / "lora")
    assert lora.name == LORA_FILE
    names = sorted(p.name for p in lora.parent.iterdir())
    assert names == ([LORA_FILE] if variant == "2.1" else [LORA_FILE, "pytorch_lora_weights_transformer_2.safetensors"])
    fresh = _adapter(variant, wan[variant])
    v_base = _velocity(fresh)
    fresh.pipe.load_lora_weights(str(lora.parent))  # diffusers' own loader, the files as written
    if variant == "2.2":
        fresh.pipe.load_lora_weights(str(lora.parent), weight_name="pytorch_lora_weights_transformer_2.safetensors",
                                     load_into_transformer_2=True)
    v_loaded = _velocity(fresh)
    assert (v_trained - v_base).abs().max() > 1e-4  # the adapter matters
    if variant == "2.2":  # each expert's adapter matters (sample 0: high noise, sample 1: low noise)
        assert ((v_trained - v_base).flatten(1).abs().max(1).values > 1e-4).all()
    assert (v_loaded - v_trained).abs().max() <= 1e-5

    applied = load_any(str(wan[variant]), lora=str(lora.parent), kind="wan")  # dgpo's --lora path (fused)
    applied.frames, applied.resolution, applied.width = trained.frames, trained.resolution, trained.width
    applied.max_sequence_length = 16
    assert (_velocity(applied) - v_trained).abs().max() <= 1e-5

    merged = export_run(run, tmp_path / "merged", merge=True)
    v_merged = _velocity(_adapter(variant, merged))
    assert (v_merged - v_trained).abs().max() <= 1e-5


@pytest.mark.parametrize("algo", ["flow_grpo", "dpo", "nft"])
def test_flow_grpo_dpo_and_nft_train_on_wan22(wan, algo, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue ball on grass\na green sign\n")
    extra = ["grpo.timestep_fraction=1.0"] if algo == "flow_grpo" else []
    tr = Trainer(load_config(None, [*_train_overrides("2.2", wan["2.2"], tmp_path / "run", prompts, algo, 1), *extra]))
    before = {n: p.detach().clone() for n, p in zip(tr.policy.names, tr.policy.params)}
    assert tr.fit()["steps"] == 1
    moved = {n for n, p in zip(tr.policy.names, tr.policy.params) if not torch.equal(before[n], p.detach())}
    assert any(".transformer." in n for n in moved) and any(".transformer_2." in n for n in moved)


def test_flow_grpo_on_wan22_reevaluates_its_rollout_on_policy(wan, tmp_path):
    """Flow-GRPO's training forward (guided, each expert's CFG scale per sample, v_u detached) reproduces the
    rollout's log-probs before an update, on steps of both experts."""
    from dgpo.data.prompts import epoch_prompts

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue ball on grass\n")
    cfg = load_config(None, [*_train_overrides("2.2", wan["2.2"], tmp_path / "run", prompts, "flow_grpo", 1),
                             "model.guidance_scale_2=2.0", "grpo.timestep_fraction=1.0"])
    tr = Trainer(cfg)
    assert (tr.algo.grid.timesteps >= 875).any() and (tr.algo.grid.timesteps < 875).any()
    batch = tr.algo.rollout(epoch_prompts(tr.prompts, 2, 0, 0), 0, 0)
    adv = torch.linspace(-1, 1, len(batch.x0))
    for j in tr.algo.units(batch, 0, 0):
        assert float(tr.algo.micro_loss(batch, adv, torch.arange(len(adv)), j, 0, 0).stats["ratio_dev"]) < 1e-5


def test_the_test_reward_scores_videos():
    videos = torch.rand(2, 5, 3, 8, 8)
    assert torch.allclose(video_brightness(videos, [{}, {}]), videos.mean(dim=(1, 2, 3, 4)))


def test_samplers_and_losses_treat_a_video_latent_as_its_elements():
    """No 4-D assumption below the adapter: on [B, C, F, H, W] latents the interpolation, the SDE step and
    its log-prob, and every loss's per-sample terms equal those of the same numbers laid out [B, C, F*H, W]."""
    from dgpo.losses.dgpo import dgpo_velocity_loss, dsm
    from dgpo.losses.flow_grpo import step_kl
    from dgpo.losses.nft import nft_loss
    from dgpo.samplers.sde import make_step, step_logprob
    from dgpo.schedules import interpolate

    g = torch.Generator().manual_seed(0)
    video = [torch.randn(4, 3, 5, 2, 6, generator=g) for _ in range(5)]  # x0, eps, v, v_ref, v_old
    flat = [t.reshape(4, 3, 10, 6) for t in video]
    sigma = torch.tensor([0.9, 0.5, 0.7, 0.3])
    adv, gids = torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.tensor([0, 0, 1, 1])
    x0, eps, v, v_ref, v_old = video
    fx0, feps, fv, fref, fold = flat
    x_t, fx_t = interpolate(x0, eps, sigma), interpolate(fx0, feps, sigma)
    assert torch.equal(x_t.reshape(4, 3, 10, 6), fx_t)
    assert torch.equal(dsm(v, eps - x0), dsm(fv, feps - fx0))
    one = dgpo_velocity_loss(v, v_ref, eps - x0, adv, gids, 100.0, 2, v_old=v_old, clip_range=0.01, kl_beta=0.1)
    two = dgpo_velocity_loss(fv, fref, feps - fx0, adv, gids, 100.0, 2, v_old=fold, clip_range=0.01, kl_beta=0.1)
    assert torch.equal(one.loss, two.loss) and torch.equal(one.weight, two.weight)
    n1 = nft_loss(v, v_old, x_t, x0, sigma, adv, 1.0, 5.0, v_ref=v_ref, kl_beta=0.1)
    n2 = nft_loss(fv, fold, fx_t, fx0, sigma, adv, 1.0, 5.0, v_ref=fref, kl_beta=0.1)
    assert torch.allclose(n1.loss, n2.loss, atol=1e-6, rtol=0)
    for kind in ("sde", "cps"):
        s1 = make_step(kind, x_t, v, sigma.double(), sigma.double() - 0.1, 0.96, 0.7)
        s2 = make_step(kind, fx_t, fv, sigma.double(), sigma.double() - 0.1, 0.96, 0.7)
        assert torch.equal(s1.mean.reshape(4, 3, 10, 6), s2.mean)
        nxt = s1.mean + 0.1 * eps
        assert torch.allclose(step_logprob(nxt, s1), step_logprob(nxt.reshape(4, 3, 10, 6), s2), atol=1e-6, rtol=0)
        assert torch.allclose(step_kl(s1.mean, x_t, s1.std), step_kl(s2.mean, fx_t, s2.std), atol=1e-6, rtol=0)


def test_the_wan_benchmark_is_wan21_1_3b_at_flow_grpos_size_with_its_wan_noise():
    """benchmarks/gpu/wan_gpu.py: the transformer config has Wan2.1-T2V-1.3B's 1.419 B parameters (built on the
    meta device), 240 x 416 x 33 frames are latents [16, 9, 30, 52] = 3,510 tokens; Flow-GRPO's Wan SDE step
    has std_dev = s_min + (s_max - s_min) s (no noise_level) and reduces to the Euler step without noise."""
    from diffusers import WanTransformer3DModel

    from benchmarks.gpu import wan_gpu

    with torch.device("meta"):
        tr = WanTransformer3DModel(**wan_gpu.WAN21_1_3B)
    assert sum(p.numel() for p in tr.parameters()) == 1_418_996_800
    assert wan_gpu.FULL is wan_gpu.S and wan_gpu.latent_shape() == (16, 9, 30, 52)
    f, h, w = wan_gpu.latent_shape()[1:]
    assert f * (h // 2) * (w // 2) == 3510
    x, v = torch.tensor([1.0]), torch.tensor([2.0])
    mean, std = wan_gpu.fg_wan_step(x, v, 0.5, 0.25, 0.98, 0.0)  # std_dev 0.49, dt -0.25
    assert std == pytest.approx(0.49 * 0.5)
    assert float(mean) == pytest.approx(1 - 0.49**2 / 1.0 * 0.25 + 2 * (1 + 0.49**2 * 0.5 / 1.0) * -0.25)
    mean, std = wan_gpu.fg_wan_step(x, v, 0.5, 0.25, 0.0, 0.0)
    assert std == 0 and float(mean) == pytest.approx(1 + 2 * -0.25)


def test_the_trainer_refuses_an_image_reward_on_wan_and_a_video_reward_on_an_image_model(wan, tiny_toy, tmp_path):
    """The modality check is wired into the Trainer, both ways, before anything trains: colorfulness (an image
    reward, no reward.frames) on Wan's videos; Flow-GRPO's video OCR on the toy image model."""
    from dgpo.errors import InputError

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    wan_run = _train_overrides("2.1", wan["2.1"], tmp_path / "a", prompts)
    image_on_video = [*(o for o in wan_run if not o.startswith("reward.")), "reward.name=colorfulness"]
    with pytest.raises(InputError, match=r"reward\.name: the reward colorfulness scores images .* video model "
                                         r".*reward\.frames"):
        Trainer(load_config(None, image_on_video))
    video_on_image = ["model.kind=toy", f"model.path={tiny_toy}", "reward.name=video_ocr", f"run.out_dir={tmp_path}/b",
                      "run.log_with=none"]
    with pytest.raises(InputError, match=r"reward\.name: the reward video_ocr scores videos .* image model"):
        Trainer(load_config(None, video_on_image))


@pytest.mark.slow  # two training runs: about 10 s
def test_wan22_memory_options_leave_the_update_unchanged(wan, tmp_path):
    """The Wan recipes' memory options are exact: gradient checkpointing (both experts), training micro-batches of
    one group (train.batch_size 4 of 8: two backwards into one optimizer step) and rollout chunks of 2 videos
    give the LoRA weights of the plain run (one epoch) to 1e-5, an update that moves them by more than 1e-3."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue ball on grass\na green sign\n")
    weights = {}
    for name, extra in (("plain", []), ("memory", ["model.gradient_checkpointing=true", "train.batch_size=4",
                                                   "train.rollout_batch_size=2"])):
        tr = Trainer(load_config(None, [*_train_overrides("2.2", wan["2.2"], tmp_path / name, prompts, epochs=1),
                                        *extra]))
        start = [p.detach().clone() for p in tr.policy.params]
        assert tr.fit()["steps"] == 1
        weights[name] = [p.detach().clone() for p in tr.policy.params]
        if name == "memory":
            assert tr.model.experts.transformer_2.gradient_checkpointing
    moved = max((w - s).abs().max() for w, s in zip(weights["plain"], start))
    assert moved > 1e-3
    assert max((a - b).abs().max() for a, b in zip(weights["plain"], weights["memory"])) <= 1e-5
