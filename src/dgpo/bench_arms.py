"""``dgpo bench``'s arms: each arm's config overrides, the comparisons the report groups them in, the
default and quick suites, and the arms trained past the suite's budget. Plain data: :mod:`dgpo.bench`
(the runs) and :mod:`dgpo.bench_report` (the report) both read it."""

from __future__ import annotations

# Flow-GRPO as its official code trains (configs/toy_flow_grpo_official.yaml holds the same values):
# 2 optimizer steps per epoch over a random shuffle of the samples across groups, global advantage
# std, samples with advantage exactly 0 dropped (refilled to a multiple of 4 sampling batches).
# Group size, groups per epoch, evals, the slow EMA, the parameter set (the toy demo's full
# fine-tuning; the official LoRA r 32 / alpha 64 is in the yaml) and the learning rate stay the
# suite's own, so that every arm sees the same images per epoch and the same eval, and differs from
# the others in its algorithm only.
FLOW_GRPO_OFFICIAL = ["train.algorithm=flow_grpo", "train.steps_per_epoch=2", "train.sampling_batches=4",
                      "advantages.std=global", "grpo.zero_adv=samples", "grpo.shuffle=true"]

NFT_OFFICIAL = ["train.algorithm=nft", "advantages.std=global"]

# Advantage Weighted Matching as its official code trains (configs/toy_awm_official.yaml): 14-step SA-Solver
# rollouts from the policy (tau 0.4 on 0.3 <= t <= 0.9), the ghuber-weighted advantage-weighted matching loss
# at one grid index from each of 6 strata, distances to the reference (1e-3) and the KL-EMA model (1),
# global advantage std; evals with the suite's 10 steps
AWM_OFFICIAL = ["train.algorithm=awm", "advantages.std=global", "sampler.steps=14", "eval.steps=10"]

ARMS: dict[str, list[str]] = {
    "dgpo": [],
    "flow_grpo": FLOW_GRPO_OFFICIAL,
    # the same at a third of the suite's learning rate, where Flow-GRPO gains on the toy instead of
    # drifting below its start (docs/results/toy.md)
    "flow_grpo_lr1e-4": [*FLOW_GRPO_OFFICIAL, "train.lr=1e-4"],
    # GRPO-Guard (configs/toy_grpo_guard_official.yaml): RatioNorm and the 1 / |dt| reweight with its
    # recipe's algorithm values (clip 2e-6 on the normalised ratio, no KL, per-prompt std, the
    # unconditional branch's gradient kept); the suite's learning rate, as the flow_grpo arm
    "grpo_guard": [*FLOW_GRPO_OFFICIAL, "grpo.guard=true", "grpo.clip_range=2e-6", "grpo.kl_beta=0",
                   "advantages.std=group", "grpo.detach_uncond=false"],
    "dgpo_sde": ["sampler.sde_noise=0.7"],
    "tmin_0": ["timesteps.mode=uniform", "timesteps.t_min=0.0"],
    "tmin_0.3": ["timesteps.mode=uniform", "timesteps.t_min=0.3"],
    "tmin_0.6": ["timesteps.mode=uniform", "timesteps.t_min=0.6"],
    "tmin_anneal": ["timesteps.mode=uniform", "timesteps.t_min=0.8", "timesteps.t_min_end=0.2"],
    "tmin_adaptive": ["timesteps.mode=adaptive"],  # the online t_min from 0.6 (docs/results/adaptive-tmin.md)
    "dpo": ["train.algorithm=dpo", "dpo.beta=5000"],  # Diffusion-DPO's beta
    "dgpo_offline": ["train.offline=true"],
    "dpo_offline": ["train.algorithm=dpo", "train.offline=true", "dpo.beta=5000"],
    # DiffusionNFT as its official code trains (configs/toy_nft_official.yaml): CFG-free rollouts and evals
    # (its recipes set guidance 1), the negative-aware loss at 9 of the 10 grid timesteps per sample, global
    # advantage std; nft_cfg: the same loss with the suite's CFG 4.5 rollouts and evals
    "nft": [*NFT_OFFICIAL, "sampler.cfg_scale=1.0"],
    "nft_cfg": NFT_OFFICIAL,
    "nft_tclip": [*NFT_OFFICIAL, "sampler.cfg_scale=1.0", "nft.trunc_steps=4"],  # DGPO's high-noise candidates
    "nft_group_noise": [*NFT_OFFICIAL, "sampler.cfg_scale=1.0", "nft.group_noise=true"],  # DGPO's shared noise
    "dgpo_cfg1": ["sampler.cfg_scale=1.0"],  # DGPO from NFT's CFG-free start
    "dgpo_lora": ["train.lora_rank=32", "train.lora_alpha=64"],  # beside nft_lora: both with LoRA r 32 / alpha 64
    "nft_lora": [*NFT_OFFICIAL, "sampler.cfg_scale=1.0", "train.lora_rank=32", "train.lora_alpha=64"],  # official LoRA
    "awm": [*AWM_OFFICIAL, "sampler.cfg_scale=1.0"],  # CFG-free rollouts and evals, as its recipes (guidance 1)
    "g4": ["train.group_size=4", "train.prompts_per_epoch=16"],
    "g16": ["train.group_size=16", "train.prompts_per_epoch=4"],
    "w_rank": ["dgpo.weighting=rank"],
    "w_softmax": ["dgpo.weighting=softmax"],
    "w_sign": ["dgpo.weighting=sign"],
}

# arms that train longer than the suite's budget, so that the time-to-target ratio can be measured
# where they are slow (Flow-GRPO barely moves within the suite's budget: docs/results/toy.md); every
# other statistic (late score, final, conclusions) is read at the suite's budget, the same for every arm
BUDGET_SCALE: dict[str, float] = {"flow_grpo": 3.0, "flow_grpo_lr1e-4": 3.0}
SLOW_ARMS = list(BUDGET_SCALE)  # the headline ratio times DGPO against each of them

COMPARISONS: dict[str, list[str]] = {
    "DGPO vs Flow-GRPO": ["dgpo", "flow_grpo", "flow_grpo_lr1e-4", "grpo_guard"],
    "ODE vs SDE rollouts (DGPO)": ["dgpo", "dgpo_sde"],
    "Timestep clipping (t_min; grid = the official default)": ["dgpo", "tmin_0", "tmin_0.3", "tmin_0.6", "tmin_anneal",
                                                               "tmin_adaptive"],
    "Group preferences vs pairs, online vs offline": ["dgpo", "dpo", "dgpo_offline", "dpo_offline"],
    "DGPO vs DiffusionNFT (nft: CFG-free, evaluated without CFG)": ["dgpo", "nft", "nft_cfg", "nft_tclip",
                                                                   "nft_group_noise", "nft_lora", "dgpo_lora",
                                                                   "dgpo_cfg1"],
    "The likelihood-free family (DGPO, DiffusionNFT, AWM)": ["dgpo", "nft", "awm"],
    "Group size (same images per epoch)": ["g4", "dgpo", "g16"],
    "Group weightings": ["dgpo", "w_rank", "w_softmax", "w_sign"],
}
QUICK_ARMS = ["dgpo", "flow_grpo", "dpo"]
# the default suite: the paper's comparisons and two variants per ablation at most, 3 seeds each (run
# time: docs/results/toy.md);
# the other arms (a mid t_min, the annealed t_min, offline DPO, softmax weights) run with --arms and are
# reported when present
SUITE_ARMS = ["dgpo", "flow_grpo", "flow_grpo_lr1e-4", "dgpo_sde", "dpo", "tmin_0", "tmin_0.6", "dgpo_offline",
              "g4", "g16", "w_rank", "w_sign"]
LABEL = {"dgpo": "dgpo (default: grid t, ODE, weights A, G 8)"}
