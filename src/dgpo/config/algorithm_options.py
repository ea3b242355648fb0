"""The config sections of each algorithm's own options (``dgpo.*``, ``grpo.*``, ``dpo.*``, ``nft.*``,
``awm.*``); every default is its official code's value unless its help says otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dgpo.config.fields import opt


@dataclass
class DGPOConfig:
    beta_dpo: float = opt(100.0, 0.0, help="beta inside the group sigmoid (divided by G, official)")
    kl_beta: float = opt(0.02, 0.0, help="explicit KL weight mean||v - v_ref||^2 (official code)")
    kl_cfg: float = opt(1.0, 1.0, 50.0, help="CFG scale of the reference in the KL (1 = none)")
    clip_range: float = opt(1e-2, 0.0, 1.0, help="PPO-style clip on exp(dsm_old - dsm); 0 = off (official: 0 clips "
                            "almost every sample)")
    clip_dsm: bool = opt(True, help="detach dsm of clipped samples (official)")
    clip_kl: bool = opt(False, help="detach the KL term of clipped samples (independent of clip_dsm, as official)")
    switch_ema_ref: int = opt(500, 0, help="optimizer steps before the EMA 'old' model rolls out")
    use_ema_ref: bool = opt(False, help="the EMA 'old' model is the DGPO reference (TDM-R1 style)")
    weighting: Literal["adv", "rank", "softmax", "sign"] = opt(
        "adv", help="signed group weights: adv (paper/code), rank, softmax of reward, sign (+-1)")
    softmax_temperature: float = opt(0.1, 1e-6, help="weighting=softmax: temperature on the rewards")


@dataclass
class GRPOConfig:
    noise_level: float = opt(0.7, 0.0, 5.0, help="SDE noise level a in s_t = a sqrt(t/(1-t)) (official 0.7); "
                             "cps: the step std is sigma' sin(a pi / 2) (official Fast recipes 0.8)")
    sde_type: Literal["sde", "cps"] = opt("sde", help="rollout step: sde (Flow-GRPO's SDE, Gaussian log-probs) or cps "
                                          "(its later coefficients-preserving step, log-prob -(x - mean)^2 without "
                                          "variance, as its Fast recipes use)")
    clip_range: float = opt(1e-4, 0.0, 1.0, help="PPO clip on the per-step ratio (official 1e-4)")
    kl_beta: float = opt(0.04, 0.0, help="KL weight (official 0.04 GenEval/OCR, 0.01 PickScore)")
    kl_paper: bool = opt(False, help="KL over the step std s_t sqrt(-dt) (paper) instead of s_t (code)")
    timestep_fraction: float = opt(0.99, 0.0, 1.0, help="train the first int(steps x fraction) steps (official 0.99)")
    cfg_train: bool = opt(True, help="CFG in the training forwards (policy and KL reference; official); rollouts "
                          "use CFG either way")
    detach_uncond: bool = opt(True, help="with cfg_train: no gradient through the unconditional branch (official "
                              "train_sd3.py; the official Qwen-Image script keeps it: false; Flow-GRPO only)")
    sde_window: int = opt(0, 0, help="Flow-GRPO-Fast: SDE (and training) on this many steps only, a window drawn "
                          "per sampling batch (train.sampling_batches per process and epoch); 0 = all")
    sde_window_range: int = opt(5, 1, help="Flow-GRPO-Fast: the window starts at a random step below this")
    zero_adv: Literal["samples", "groups"] = opt(
        "samples", help="samples (official): drop every sample whose advantage is exactly 0, then re-add random ones "
        "until each process's count divides by train.sampling_batches (they carry KL gradient); groups: drop "
        "whole zero-spread groups only")
    shuffle: bool = opt(True, help="optimizer steps over a random shuffle of the kept samples across groups "
                        "(official); false: whole groups in order")
    guard: bool = opt(False, help="GRPO-Guard (official config.rationorm): RatioNorm, the ratio exp((lp - lp_old + "
                      "mean (mu - mu_old)^2 / (2 std^2)) std) with std the step's s_t sqrt(-dt), and each step's "
                      "policy loss divided by its sigma - sigma'; its recipes clip at 2e-6 (OCR, GenEval) or 4e-6 "
                      "(PickScore)")
    guard_reweight: bool = opt(True, help="with grpo.guard: the per-step gradient reweight 1 / (sigma - sigma') "
                               "(official); false: RatioNorm alone (Flow-Factory's grpo-guard trainer, the paper's "
                               "ablation)")


@dataclass
class DPOConfig:
    beta: float = opt(100.0, 0.0, help="beta on mean-over-elements denoising losses (Flow-GRPO's DPO script 100; "
                      "Diffusion-DPO's SD1.5 recipe 5000)")
    ref_update_every: int = opt(0, 0, help="Flow-GRPO's online DPO (its ref_update_step, e.g. 40): the reference is a "
                                "copy of the policy, refreshed before an epoch's rollouts when the optimizer-step "
                                "count is a positive multiple of it (official), and the rollouts come from it; 0: the "
                                "frozen base model is the reference")


@dataclass
class NFTConfig:
    beta: float = opt(1.0, 1e-6, help="DiffusionNFT's beta: v+ = beta v + (1 - beta) v_old, v- = (1 + beta) v_old - "
                      "beta v (official 1.0 GenEval/PickScore, 0.1 OCR)")
    kl_beta: float = opt(1e-4, 0.0, help="KL weight mean (v - v_ref)^2 (official train.beta 1e-4)")
    adv_mode: Literal["all", "positive_only", "negative_only", "one_only", "binary"] = opt(
        "all", help="advantages before r = A / (2 advantages.clip_max) + 1/2: all (official), positive_only / "
        "negative_only (clipped at 0), one_only (1 if A > 0 else 0), binary (sign)")
    timestep_fraction: float = opt(0.99, 0.0, 1.0, help="each sample trains at int(candidates x fraction) of the "
                                   "grid's timesteps, its own random subset (official 0.99: 9 of 10)")
    trunc_steps: int = opt(-1, -1, help="candidates: grid indices 0..trunc_steps only, the high-noise end (as "
                           "timesteps.trunc_steps; 4 of 0..4 with the fraction 0.99); -1: every step (official)")
    group_noise: bool = opt(False, help="the members of a group train at the group's timesteps with the group's "
                            "noise (DGPO's shared noise; not in the official code); false: each sample its own "
                            "(official)")
    decay_flat: int = opt(0, 0, help="'old' model: blended towards the policy after each epoch with decay 0 before "
                          "this optimizer step (official decay_type 1: 0, type 2 (OCR): 75)")
    decay_rate: float = opt(1e-3, 0.0, help="'old' model decay (step - decay_flat) x rate (type 1: 0.001, type 2: "
                                            "0.0075)")
    decay_max: float = opt(0.5, 0.0, 1.0, help="'old' model decay cap (type 1: 0.5, type 2: 0.999)")


@dataclass
class AWMConfig:
    """Advantage Weighted Matching (scxue/advantage_weighted_matching: config/dgx_awm.py geneval_sd3_no_cfg_1node,
    config/base_awm.py, scripts/train_sd3_awm.py)."""
    sa_solver: bool = opt(True, help="rollouts with SA-Solver (official train.use_sa_solver=True: predictor-corrector "
                          "orders 2/2 on SD3's Euler sigmas, the first 0.999, the last non-zero halved); false: the "
                          "ODE of sampler.method on that grid")
    noise_level: float = opt(0.4, 0.0, 5.0, help="SA-Solver's stochasticity tau where 0.3 <= t <= 0.9, 0 elsewhere "
                             "(official sample.noise_level: GenEval/OCR 0.4, PickScore 0 = deterministic)")
    train_timesteps: int = opt(6, 1, help="training timesteps per sample, one per stratum of the grid (official "
                               "train.train_timesteps 6)")
    timestep_fraction: float = opt(0.9, 0.0, 1.0, help="strata over grid indices below int(sampler.steps x fraction) "
                                   "(official train.timestep_fraction 0.9: 12 of 14)")
    time_type: Literal["discrete_wo_init", "discrete", "discrete_with_init"] = opt(
        "discrete_wo_init", help="the strata (official time_type): discrete_wo_init (GenEval, OCR) = "
        "linspace(1, K, n + 1), index 0 never trained; discrete (PickScore) = linspace(0, K, n + 1); "
        "discrete_with_init = index 0, then n - 1 strata of 1..K")
    weighting: Literal["ghuber", "uniform", "t", "t2", "huber"] = opt(
        "ghuber", help="per-timestep weighting of the flow-matching error m (official train.weighting): ghuber = "
        "t ((m + 1e-10)^p - 1e-10^p) / p, uniform = m, t = t m, t2 = t^2 m, huber = t (sqrt(m + 1e-10) - 1e-5)")
    ghuber_power: float = opt(0.25, 1e-6, 1.0, help="ghuber's p (official train.ghuber_power 0.25)")
    clip_range: float = opt(1.0, 0.0, help="PPO clip of the ratio exp(logp - logp_old) (official train.clip_range 1; "
                            "on-policy the ratio is 1, so it never clips)")
    advantage_max: float = opt(1.0, 1e-6, help="advantages clipped to +-advantages.clip_max, then rescaled to "
                               "+-advantage_max (official train.advantage_max 1, adv_clip_max 5: A / 5)")
    beta: float = opt(1e-3, 0.0, help="weight of mean (v - v_ref)^2 to the frozen reference (official train.beta: "
                      "GenEval 1e-3, OCR 3e-3, PickScore 1e-4)")
    kl_weight: Literal["uniform", "elbo"] = opt("uniform", help="reference term: uniform, or elbo = divided by "
                                                "2 s_t^2, s_t = 0.7 sqrt(t / (1 - t)) (official train.kl_weight)")
    ema_beta: float = opt(1.0, 0.0, help="weight of mean (v - v_ema)^2 to the KL-EMA model (official train.ema_beta 1)")
    ema_kl_weight: Literal["uniform", "elbo"] = opt("uniform", help="KL-EMA term: uniform or elbo (official "
                                                    "train.kl_ema_weight Uniform)")
    ema_decay: float = opt(0.3, 0.0, 1.0, help="KL-EMA model: blended towards the policy after each epoch's "
                           "training with decay min(ema_decay, 0.001 step) (official train.kl_ema_decay 0.3)")
    ema_decay_type: Literal["linear", "constant"] = opt("linear", help="KL-EMA decay: linear = min(ema_decay, 0.001 "
                                                        "step), constant = ema_decay (official kl_ema_decay_type)")
