"""Cross-field rules of a :class:`~dgpo.config.Config`: what no single field's type and range can say.
Each broken rule is a :class:`~dgpo.errors.ConfigError` naming the keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dgpo.config.schema import BUILTIN_REWARDS, CUSTOM_REWARD
from dgpo.errors import ConfigError, short
from dgpo.models.families import VIDEO_KINDS

if TYPE_CHECKING:
    from dgpo.config.schema import Config, ModelConfig, RewardConfig

VIDEO_REWARDS = ("video_ocr", "temporal_consistency", "toy_video", "toy_video_strict")  # modality "video"


def check(cfg: Config) -> None:
    _timesteps(cfg)
    _train(cfg)
    _flow_grpo(cfg)
    _nft(cfg)
    _awm(cfg)
    _model(cfg.model)
    _toy_worlds(cfg)
    _reward(cfg.reward)
    _extra_rewards(cfg)


TOY_PROMPTS = {"toy": "toy:", "toy_video": "toy_video:", "toy_edit": "toy_edit:"}  # each toy model's named sets


def _toy_worlds(cfg: Config) -> None:
    """A toy model reads its own world's prompt sets only (an image toy given edit instructions would
    train on them as captions)."""
    want = TOY_PROMPTS.get(cfg.model.kind)
    for key, spec in (("train.prompts", cfg.train.prompts), ("eval.split", cfg.eval.split)):
        named = next((p for p in TOY_PROMPTS.values() if spec.startswith(p)), None)
        if named is not None and want is not None and named != want:
            raise ConfigError(f"{key}={spec!r} is another toy world's prompt set; model.kind={cfg.model.kind} "
                              f"reads {want}train / {want}test")
        if cfg.model.kind == "toy_edit" and named is None:
            raise ConfigError(f"{key}={spec!r}: the toy editing model draws each row's source from its scene; "
                              "use toy_edit:train / toy_edit:test")


def _model(m: ModelConfig) -> None:
    """The Wan keys: read by the diffusers video families only, and frame counts and sizes Wan can make.
    (The adapter checks sizes again against the loaded pipeline: TI2V-5B's sides are multiples of 32.)"""
    if m.kind not in VIDEO_KINDS:
        for key in ("frames", "width", "guidance_scale_2", "boundary_ratio"):
            if getattr(m, key):
                raise ConfigError(f"model.{key}={getattr(m, key)}: only the diffusers video families "
                                  f"{list(VIDEO_KINDS)} read it (model.kind={m.kind!r}); set it to 0")
        return
    check_video_size(m.frames, m.resolution, m.width)


VIDEO_SIZE_KEYS = ("model.frames", "model.resolution", "model.width")


def check_video_size(frames: int, height: int, width: int, keys: tuple[str, str, str] = VIDEO_SIZE_KEYS,
                     temporal: int = 4, vae: int = 8, patch: tuple[int, int] = (2, 2),
                     note: str = "; TI2V-5B: 32") -> None:
    """A Wan frame count and frame size (0: the model's default), as a ConfigError naming ``keys`` (the
    config's, or `dgpo sample`'s flags); the defaults are Wan2.1's VAE and patches, the adapter passes
    the loaded pipeline's."""
    if frames and (frames - 1) % temporal:
        lo = (frames - 1) // temporal * temporal + 1
        raise ConfigError(f"{keys[0]}={frames}: Wan's VAE compresses time {temporal}x after the first frame, so "
                          f"frames - 1 must be a multiple of {temporal} (e.g. {lo} or {lo + temporal})")
    for key, size, p in zip(keys[1:], (height, width), patch):
        if size % (vae * p):
            raise ConfigError(f"{key}={size}: Wan frame sides are multiples of {vae * p} (the VAE's {vae}x times "
                              f"the transformer's {p}-token patches{note})")


def _timesteps(cfg: Config) -> None:
    """DGPO's training times (DPO reads them too; Flow-GRPO and DiffusionNFT train at their own)."""
    d, n = cfg.timesteps, cfg.sampler.steps
    if cfg.train.algorithm not in ("dgpo", "dpo"):
        return
    if d.mode == "grid" and d.trunc_steps >= n:
        raise ConfigError(f"timesteps.trunc_steps={d.trunc_steps} must be < sampler.steps={n}")
    if d.mode == "grid" and d.count > d.trunc_steps + 1:
        raise ConfigError(f"timesteps.count={d.count} exceeds the "
                          f"{d.trunc_steps + 1} grid candidates (timesteps.trunc_steps + 1)")
    if d.t_min_end >= 0 and d.mode != "uniform":
        raise ConfigError(f"timesteps.t_min_end={d.t_min_end} anneals the uniform mode's t_min; "
                          f"timesteps.mode={d.mode!r} does not read it (set it to -1)")
    if d.mode == "adaptive" and cfg.train.algorithm != "dgpo":
        raise ConfigError(f"timesteps.mode=adaptive reads DGPO's loss; train.algorithm={cfg.train.algorithm!r} "
                          "trains at fixed timesteps (use grid, uniform or logit_normal)")
    if d.mode == "adaptive" and (cfg.train.steps_per_epoch, cfg.train.inner_epochs) != (1, 1):
        raise ConfigError("timesteps.mode=adaptive moves t_min after each optimizer step but an epoch draws its "
                          "timesteps once: it needs train.steps_per_epoch=1 and train.inner_epochs=1 (got "
                          f"{cfg.train.steps_per_epoch} and {cfg.train.inner_epochs})")
    if d.mode == "adaptive" and not d.adaptive_lo <= d.t_min <= d.adaptive_hi:
        raise ConfigError(f"timesteps.t_min={d.t_min} (the adaptive rule's start) must lie in [timesteps.adaptive_lo, "
                          f"timesteps.adaptive_hi] = [{d.adaptive_lo}, {d.adaptive_hi}]")


def _train(cfg: Config) -> None:
    t = cfg.train
    if t.ema_cadence == "per_batch" and t.sampling_batches % t.steps_per_epoch:
        raise ConfigError(f"train.sampling_batches={t.sampling_batches} must be a multiple of "
                          f"train.steps_per_epoch={t.steps_per_epoch} (train.ema_cadence=per_batch)")
    if cfg.dpo.ref_update_every and t.offline and t.algorithm == "dpo":
        raise ConfigError("dpo.ref_update_every: online DPO rolls out from its refreshed reference; "
                          "train.offline=true rolls out from the frozen base (set one of them)")
    _levers(t, cfg.train.algorithm)
    if t.reference_batch_size and t.algorithm == "flow_grpo":
        raise ConfigError("train.reference_batch_size: Flow-GRPO's reference runs per SDE step with its "
                          "policy forward; set it to 0 (it applies to dgpo and dpo)")


def _levers(t, algorithm: str) -> None:
    """The GPU speed levers' dependencies (docs/results/performance.md)."""
    if t.fp8_attention and algorithm == "flow_grpo":
        raise ConfigError("train.fp8_attention changes the rollouts' velocities, and Flow-GRPO's ratio compares "
                          "them with the training forwards' exact ones (its first ratio would not be 1, its tight "
                          "clip would drop almost every sample): use it with dgpo, dpo, nft or awm")
    if t.compile_mode != "default" and not t.compile:
        raise ConfigError(f"train.compile_mode={t.compile_mode}: set train.compile=true (the mode is inductor's)")
    if t.fp8_cast_once and t.fp8 == "none":
        raise ConfigError("train.fp8_cast_once: set train.fp8 (rowwise or tensorwise: the recipe of the cast)")
    if t.cuda_graphs and t.compile_mode == "max-autotune":
        raise ConfigError("train.cuda_graphs with train.compile_mode=max-autotune: inductor's own CUDA graphs "
                          "cannot be recorded inside the rollouts' graphs; use max-autotune-no-cudagraphs")


def _nft(cfg: Config) -> None:
    n, steps = cfg.nft, cfg.sampler.steps
    if cfg.train.algorithm != "nft":
        return
    if cfg.advantages.clip_max <= 0:
        raise ConfigError("advantages.clip_max=0: DiffusionNFT maps advantages to r = A / (2 adv_clip_max) + 1/2 "
                          "(official 5)")
    if n.trunc_steps >= steps:
        raise ConfigError(f"nft.trunc_steps={n.trunc_steps} must be < sampler.steps={steps}")
    candidates = steps if n.trunc_steps < 0 else n.trunc_steps + 1
    if int(candidates * n.timestep_fraction) < 1:
        raise ConfigError(f"nft.timestep_fraction={n.timestep_fraction} trains int({candidates} candidate steps x "
                          "fraction) = 0 timesteps")



def _awm(cfg: Config) -> None:
    a, steps = cfg.awm, cfg.sampler.steps
    if cfg.train.algorithm != "awm":
        return
    if cfg.advantages.clip_max <= 0:
        raise ConfigError("advantages.clip_max=0: AWM rescales advantages to A / clip_max x awm.advantage_max "
                          "(official 5)")
    if cfg.sampler.sde_noise > 0:
        raise ConfigError(f"sampler.sde_noise={cfg.sampler.sde_noise}: AWM rolls out with SA-Solver (its noise is "
                          "awm.noise_level) or the ODE; set sampler.sde_noise=0")
    if a.noise_level > 0 and not a.sa_solver:
        raise ConfigError(f"awm.noise_level={a.noise_level} is SA-Solver's stochasticity; with awm.sa_solver=false "
                          "the rollouts are the ODE: set awm.noise_level=0 or awm.sa_solver=true")
    if a.sa_solver and steps < 2:
        raise ConfigError(f"sampler.steps={steps}: SA-Solver needs at least 2 steps (awm.sa_solver=true)")
    first = 0 if a.time_type == "discrete" else 1
    n = a.train_timesteps - (a.time_type == "discrete_with_init")
    if int(steps * a.timestep_fraction) - first < n:
        raise ConfigError(f"awm.train_timesteps={a.train_timesteps}: {n} strata of the grid indices {first}.."
                          f"int(sampler.steps={steps} x awm.timestep_fraction={a.timestep_fraction}) - 1 leave one "
                          "empty; train fewer timesteps or raise the fraction or the steps")

def _flow_grpo(cfg: Config) -> None:
    g, n, flow_grpo = cfg.grpo, cfg.sampler.steps, cfg.train.algorithm == "flow_grpo"
    if g.sde_window > n:
        raise ConfigError(f"grpo.sde_window={g.sde_window} exceeds sampler.steps={n}")
    if g.sde_type == "cps" and not 0 < g.noise_level < 2:
        raise ConfigError(f"grpo.noise_level={g.noise_level} with grpo.sde_type=cps: the step std is "
                          "sigma' sin(a pi / 2), which needs 0 < a < 2 (official Fast recipes 0.8)")
    _guard(cfg)
    if not (flow_grpo and g.kl_beta > 0):
        return
    if g.noise_level == 0:
        raise ConfigError("grpo.noise_level=0 with grpo.kl_beta > 0: the KL divides by the step std, 0 here")
    # a window covers start .. start + window - 1, start <= max(0, min(range, n) - window)
    last_trained = (max(g.sde_window, min(g.sde_window_range, n)) == n if g.sde_window
                    else int(n * g.timestep_fraction) == n)
    if g.sde_type == "cps" and last_trained:
        raise ConfigError("grpo.sde_type=cps with grpo.kl_beta > 0: the KL divides by the step std, which is 0 "
                          "on the last step (sigma' = 0); keep it untrained (grpo.timestep_fraction < 1, or "
                          f"grpo.sde_window_range < sampler.steps={n}) or set grpo.kl_beta=0 (the official Fast "
                          "recipes)")


def _guard(cfg: Config) -> None:
    """GRPO-Guard (grpo.guard): Flow-GRPO's Gaussian SDE steps only (RatioNorm divides by the step std)."""
    g = cfg.grpo
    if not g.guard:
        if not g.guard_reweight:
            raise ConfigError("grpo.guard_reweight=false: only GRPO-Guard reads it; set grpo.guard=true too")
        return
    if cfg.train.algorithm != "flow_grpo":
        raise ConfigError(f"grpo.guard=true: GRPO-Guard regulates Flow-GRPO's ratio; train.algorithm="
                          f"{cfg.train.algorithm!r} does not read it (set train.algorithm=flow_grpo)")
    if g.sde_type != "sde":
        raise ConfigError("grpo.guard=true with grpo.sde_type=cps: RatioNorm needs the Gaussian step's std and "
                          "log-probs (official: the sde step only); set grpo.sde_type=sde")
    if g.noise_level == 0:
        raise ConfigError("grpo.guard=true with grpo.noise_level=0: RatioNorm divides by the step std, 0 here")


def _reward(r: RewardConfig) -> None:
    names = r.names()
    if not names:
        raise ConfigError("reward.name: the list is empty; name at least one reward")
    for i, n in enumerate(names):
        if n not in BUILTIN_REWARDS and not CUSTOM_REWARD.fullmatch(n):
            key = "reward.name" if isinstance(r.name, str) else f"reward.name[{i}]"
            raise ConfigError(f"{key}: {short(n)} is not one of {list(BUILTIN_REWARDS)} nor your own reward "
                              "'package.module:function'")
    if len(set(names)) != len(names):
        raise ConfigError(f"reward.name: {names} names a reward twice")
    if r.weights and len(r.weights) != len(names):
        raise ConfigError(f"reward.weights: {len(r.weights)} weights for {len(names)} rewards {names}")
    if "remote" in names and not r.url:
        raise ConfigError("reward.url: the remote reward needs the server's URL (e.g. http://127.0.0.1:8765)")
    if "unifiedreward" in names and not r.judge_url:
        raise ConfigError("reward.judge_url: the unifiedreward judge needs its OpenAI-compatible server's base URL "
                          "(e.g. http://127.0.0.1:17140/v1)")
    _frames(r, names)
    if {"pickscore", "geneval"} <= set(names) and r.model_path:
        raise ConfigError("reward.model_path: pickscore and geneval would both read it; use their default "
                          "weights or train with one of them")


def _extra_rewards(cfg: Config) -> None:
    """eval.extra_rewards: known names, none twice, not the training reward, what the model makes (an image
    reward scores a video model's frames; a video reward cannot score an image model's images)."""
    trained, seen = cfg.reward.names(), set()
    video_model = cfg.model.kind in VIDEO_KINDS or cfg.model.kind == "toy_video"
    for i, n in enumerate(cfg.eval.extra_rewards):
        key = f"eval.extra_rewards[{i}]"
        if n not in BUILTIN_REWARDS and not CUSTOM_REWARD.fullmatch(n):
            raise ConfigError(f"{key}: {short(n)} is not one of {list(BUILTIN_REWARDS)} nor your own reward "
                              "'package.module:function'")
        if n in trained:
            raise ConfigError(f"{key}: {n!r} is the training reward (reward.name); an out-of-domain reward is "
                              "one the run does not train on: name another or remove it from eval.extra_rewards")
        if n in seen:
            raise ConfigError(f"{key}: {n!r} is named twice in eval.extra_rewards")
        seen.add(n)
        if n in VIDEO_REWARDS and not video_model:
            raise ConfigError(f"{key}: {n!r} scores videos but model.kind={cfg.model.kind!r} makes images; "
                              "name an image reward")
        if (n == "remote" and not cfg.reward.url) or (n == "unifiedreward" and not cfg.reward.judge_url):
            raise ConfigError(f"{key}: {n!r} needs its server's URL "
                              f"({'reward.url' if n == 'remote' else 'reward.judge_url'})")


def _frames(r: RewardConfig, names: list[str]) -> None:
    """reward.frames (image rewards on a video's frames) and the keys only it reads."""
    if r.frames == "every_k" and r.frames_every < 1:
        raise ConfigError("reward.frames=every_k scores frames 0, k, 2k, ...: set reward.frames_every=k (k >= 1)")
    if r.frames_every and r.frames != "every_k":
        raise ConfigError(f"reward.frames_every={r.frames_every} is read only with reward.frames=every_k "
                          f"(reward.frames={r.frames!r}); set it to 0 or reward.frames=every_k")
    if r.frames_reduce != "mean" and r.frames == "none":
        raise ConfigError(f"reward.frames_reduce={r.frames_reduce!r} is read only when image rewards score frames; "
                          "set reward.frames (first, all or every_k)")
    video = [n for n in names if n in VIDEO_REWARDS]
    if r.frames != "none" and len(video) == len(names):
        raise ConfigError(f"reward.frames={r.frames!r} scores image rewards on frames, but reward.name {names} "
                          "holds only video rewards; set reward.frames=none")
