"""The config's sections as dataclasses: each field's type, range, default and help. Every default is
the official DGPO code's value unless its help says otherwise."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import Literal

from dgpo.config.algorithm_options import AWMConfig, DGPOConfig, DPOConfig, GRPOConfig, NFTConfig
from dgpo.config.fields import opt
from dgpo.models.families import MODEL_KINDS


@dataclass
class RunConfig:
    out_dir: str = opt("runs/dgpo-toy", help="run directory (config, metrics, checkpoints, plots)")
    seed: int = opt(0, 0, 2**32 - 1, help="run seed: rollouts, noise, timesteps all derive from it")
    epochs: int = opt(40, 1, help="epochs; one epoch = rollouts for P prompts x G samples")
    sample_every: int = opt(10, 0, help="epochs between sample grids (0: only before/after)")
    save_every: int = opt(10, 0, help="epochs between checkpoints (0: only at the end)")
    keep_checkpoints: int = opt(3, 0, help="checkpoints kept: after each save all but the newest this many are "
                                "deleted (0: keep all)")
    eval_every: int = opt(0, 0, help="epochs between held-out evals (0: only before/after)")
    eval_at_ends: bool = opt(True, help="held-out eval and sample grid before and after training")
    log_with: Literal["tensorboard", "wandb", "none"] = opt(
        "tensorboard", help="tracker for metrics, evals and sample grids (accelerate's trackers): tensorboard "
        "(<out_dir>/tb), wandb (pip install 'dgpo[wandb]'; WANDB_MODE=offline needs no login) or none; "
        "metrics.jsonl and evals.jsonl are written always")
    project: str = opt("dgpo", help="W&B project of the run (log_with=wandb); the W&B run is named after out_dir")
    eval_every_s: float = opt(0.0, 0.0, help="also eval after every this many seconds of training time (0: off)")
    time_budget_s: float = opt(0.0, 0.0, help="stop after this much training time, evals excluded (0: epochs only)")


@dataclass
class ModelConfig:
    kind: Literal[MODEL_KINDS] = opt("toy", help="model family adapter")
    path: str = opt("", help="toy checkpoint folder ('' = the built-in base) or a diffusers folder / hub id")
    dtype: Literal["fp32", "bf16", "fp16"] = opt("fp32", help="diffusers models: weight dtype of the pipeline")
    resolution: int = opt(0, 0, help="diffusers models: image size in pixels (0: the transformer's native size); "
                          "video models: the frame height (0: Wan 480)")
    width: int = opt(0, 0, help="video models: the frame width in pixels (0: Wan 832 when model.resolution is 0 "
                     "too, else model.resolution); Wan sides are multiples of 16 (TI2V-5B: 32)")
    frames: int = opt(0, 0, help="video models: frames per video (0: Wan 81, the pipeline's default); Wan needs "
                      "frames - 1 to be a multiple of 4 (its VAE compresses time 4x after the first frame)")
    max_sequence_length: int = opt(0, 0, help="diffusers models: T5/Gemma/Qwen tokens (0: SD3 128 as official, Flux "
                                              "512, Sana 300, Qwen-Image 512, Wan 512)")
    guidance_scale: float = opt(3.5, 0.0, help="FLUX.1-dev: the embedded guidance (no CFG; schnell ignores it)")
    guidance_scale_2: float = opt(0.0, 0.0, help="Wan2.2 A14B: the CFG scale of the low-noise expert "
                                  "(transformer_2; sampler.cfg_scale is the high-noise one's); 0: sampler.cfg_scale, "
                                  "as WanPipeline's default (the model card: 3.0 low, 4.0 high)")
    boundary_ratio: float = opt(0.0, 0.0, 1.0, help="Wan2.2 A14B: timesteps >= boundary_ratio x 1000 go to the "
                                "high-noise expert, the rest to transformer_2 (0: the pipeline's own, 0.875)")
    gradient_checkpointing: bool = opt(False, help="diffusers models: recompute transformer activations")
    offload: bool = opt(False, help="diffusers models: text encoders and VAE on the CPU during the training "
                        "forwards (they come to the GPU for encodes and decodes, once per epoch or eval)")
    text_cache: int = opt(1024, 0, help="diffusers models: prompts whose text embeddings each process keeps in "
                          "host memory, the most recently used (SD3 1.7 MB a prompt in bf16, FLUX 4.2 MB; "
                          "0: none)")


@dataclass
class SamplerConfig:
    method: Literal["dpm", "euler"] = opt(
        "dpm", help="rollout ODE solver and its diffusers grid (official: DPM-Solver++, flow sigmas, int timesteps); "
        "SDE rollouts (Flow-GRPO, sde_noise > 0) walk the flow-matching Euler grid")
    steps: int = opt(10, 1, 1000, help="rollout steps (official: 10)")
    shift: float = opt(0.0, 0.0, 20.0, help="time shift; 0 = the model's own (toy 1, SD3 3, Flux and Qwen-Image "
                                            "dynamic, Sana and Wan their flow_shift)")
    cfg_scale: float = opt(4.5, 1.0, 50.0, help="classifier-free guidance in rollouts (official 4.5)")
    sde_noise: float = opt(0.0, 0.0, 5.0, help="DGPO/DPO rollouts: 0 = the ODE (official); > 0 = Flow-GRPO's SDE with "
                                               "this noise level")


RewardName = Literal["toy_geneval", "toy_geneval_strict", "jpeg_compressibility", "jpeg_incompressibility",
                     "colorfulness", "ocr", "pickscore", "geneval", "aesthetic", "clipscore", "hpsv2", "imagereward",
                     "unifiedreward", "remote", "video_ocr", "temporal_consistency", "toy_video",
                     "toy_video_strict", "toy_off_palette", "toy_sharpness", "image_similarity", "unifiedreward_edit",
                     "toy_edit", "toy_edit_strict"]
BUILTIN_REWARDS: tuple[str, ...] = typing.get_args(RewardName)
# a user's own reward: an importable "package.module:function" (contract: dgpo.rewards.custom)
CUSTOM_REWARD = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclass
class RewardConfig:
    name: str | list[str] = opt(
        "toy_geneval",
        help="toy_geneval: partial credit (Flow-GRPO); _strict: GenEval 0/1; jpeg_*: the official JPEG "
        "(in)compressibility (-kB / 500, +kB); "
        "colorfulness: Hasler-Suesstrunk (smooth); ocr: Flow-GRPO's edit-distance reward (RapidOCR); "
        "pickscore: PickScore / 26 (official); geneval: GenEval's rules on Mask2Former + CLIP (real images); "
        "aesthetic: LAION aesthetic v2 (MLP on CLIP ViT-L/14); clipscore: CLIP's logits / 30 (official); "
        "hpsv2: HPSv2.1 (open_clip ViT-H-14, dgpo[hps]); imagereward: ImageReward v1.0 (BLIP, as Flow-GRPO); "
        "unifiedreward: a VLM judge's 'Final Score' / 5 from an OpenAI-compatible server (reward.judge_url); remote: a "
        "`dgpo reward serve` server (reward.url); "
        "video models: video_ocr: Flow-GRPO's video OCR reward (every 4th frame, RapidOCR); temporal_consistency: "
        "CLIP cosine of consecutive frames minus a penalty for too little motion; image rewards on frames: "
        "reward.frames; editing (an edit prompt file's source images): image_similarity: CLIP image-embedding cosine "
        "of the result and its source (Flow-GRPO's); unifiedreward_edit: a VLM edit judge's min(success, "
        "overediting) / 25 (UnifiedReward-Edit's question; reward.judge_url, reward.judge_model); toy_edit: the toy "
        "editing world's edit x kept partial credit (toy_edit_strict: 0/1; toy_edit:train prompts); "
        "toy out-of-domain statistics (for eval.extra_rewards): toy_off_palette: 1 - the share of "
        "off-palette pixels, toy_sharpness: mean |Laplacian|; your own: 'package.module:function' (importable; "
        "fn(images, metas) -> scores [B]); "
        "a list: the weighted sum of several (reward.weights), each logged",
    )
    weights: list[float] = opt([], help="weights of the rewards in a reward.name list ([] = 1 each); "
                               "the trained reward is their weighted sum")
    model_path: str = opt("", help="pickscore: model folder or hub id ('' = yuvalkirstain/PickScore_v1); "
                          "geneval: Mask2Former folder or hub id ('' = facebook/mask2former-swin-small-coco-instance)")
    processor_path: str = opt("", help="pickscore: processor folder or hub id ('' = the official LAION one)")
    clipscore_divisor: float = opt(30.0, 1e-6, help="clipscore: CLIP's logits / this (official DGPO and Flow-GRPO "
                                   "30; DiffusionNFT 100, the cosine)")
    clip_path: str = opt("", help="geneval (colours), aesthetic, clipscore, image_similarity: CLIP folder or hub id "
                         "('' = openai/clip-vit-large-patch14); one copy is shared")
    partial: Literal["corrected", "official"] = opt(
        "corrected", help="geneval: partial credit; official: Flow-GRPO's reward with its quirks; corrected: bounded, "
        "honours exclude clauses, 1 exactly when the image is correct")
    aesthetic_path: str = opt("", help="aesthetic: the LAION MLP weights (sac+logos+ava1-l14-linearMSE.pth or "
                              ".safetensors)")
    hps_path: str = opt("", help="hpsv2: HPS_v2.1_compressed.pt ('' = download it from the hub repo xswu/HPSv2)")
    imagereward_path: str = opt("", help="imagereward: ImageReward.pt, or a folder with it (and a BERT tokenizer) "
                                "('' = the hub repo THUDM/ImageReward)")
    url: str = opt("", help="remote: the reward server, e.g. http://127.0.0.1:8765")
    judge_url: str = opt("", help="unifiedreward, unifiedreward_edit: the OpenAI-compatible API's base URL, e.g. "
                         "http://127.0.0.1:17140/v1")
    judge_model: str = opt("", help="unifiedreward, unifiedreward_edit: the served model's name ('': the name the "
                           "judge's own serving script gives it: UnifiedReward-7b-v1.5, and UnifiedReward for "
                           "UnifiedReward-Edit's vllm_server.sh)")
    judge_concurrency: int = opt(64, 1, 1024, help="unifiedreward: requests in flight at once")
    judge_token_env: str = opt("", help="unifiedreward: environment variable holding the server's API key "
                               "('' = none: sglang and vLLM need one only when started with --api-key)")
    token_env: str = opt("DGPO_REWARD_TOKEN", help="remote: environment variable holding the server's bearer "
                         "token (never written to config.yaml)")
    timeout_s: float = opt(600.0, 1.0, help="remote, unifiedreward: seconds to wait for one request's answer")
    retries: int = opt(4, 0, 20, help="retries of a failed reward call in training (it raised or timed out), "
                       "with exponential backoff; remote, unifiedreward: also of a request after a connection error or "
                       "a 502/503/504 (a call whose requests spent these retries is not retried again)")
    backoff_s: float = opt(0.5, 0.0, 600.0, help="wait before the first retry; doubles on each further retry")
    max_backoff_s: float = opt(30.0, 0.0, 3600.0, help="longest wait between retries")
    call_timeout_s: float = opt(
        0.0, 0.0, help="give up on a reward call after this many seconds and retry it (0: no limit). A thread "
        "cannot be killed: the timed-out call runs on in the background and its result is discarded")
    max_failures: int = opt(3, 1, help="epochs in a row with a reward call that failed after its retries (its "
                            "groups are dropped from the epoch) before the run stops with an error")
    overlap: bool = opt(True, help="score each rollout chunk in a background thread while the next one is "
                        "generated (the same rewards as scoring after the rollout)")
    frames: Literal["none", "first", "all", "every_k"] = opt(
        "none", help="video models: score each image reward of reward.name on the frames of every video, in one "
        "batch, reduced per video by reward.frames_reduce: first, all, or every_k (frames 0, k, 2k, ...: "
        "reward.frames_every); none: rewards are used as they are (video rewards always are)")
    frames_every: int = opt(0, 0, help="reward.frames=every_k: k (0: unset; every_k needs k >= 1)")
    frames_reduce: Literal["mean", "min"] = opt("mean", help="reward.frames: a video's score from its frames' scores: "
                                                "mean, or min (the worst frame); strict correctness needs every frame")
    temporal_motion_min: float = opt(0.01, 0.0, 1.0, help="temporal_consistency: m0; a video whose mean absolute "
                                     "change between consecutive frames (pixels in [0, 1]) is below it pays the "
                                     "penalty")
    temporal_motion_weight: float = opt(10.0, 0.0, help="temporal_consistency: lambda in consistency - lambda * "
                                        "max(0, m0 - motion); 10 x 0.01 puts a frozen clip at 0.9")

    def names(self) -> list[str]:
        return [self.name] if isinstance(self.name, str) else list(self.name)


@dataclass
class TimestepConfig:
    """The training timesteps of DGPO and DPO (Flow-GRPO and DiffusionNFT train at their own)."""
    mode: Literal["grid", "uniform", "adaptive", "logit_normal"] = opt(
        "grid", help="grid (official DGPO) = timesteps.count of the rollout grid's first trunc_steps + 1 timesteps, "
        "shared by all samples; uniform (paper) = sigma ~ U[t_min, 1], shared; adaptive (DGPO only) = as uniform, "
        "with t_min moved after every optimizer step by the timesteps.adaptive_* rule "
        "(docs/results/adaptive-tmin.md); logit_normal (Flow-GRPO's DPO script) = per group, SD3's logit-normal "
        "training density over the 1000-step shifted flow schedule (all noise levels)")
    trunc_steps: int = opt(4, 0, help="grid mode: candidates are rollout-grid indices 0..trunc_steps")
    count: int = opt(4, 1, help="training timesteps per epoch (official num_train_timesteps 4)")
    t_min: float = opt(0.6, 0.0, 1.0, help="uniform mode: t ~ U[t_min, 1] (paper Alg. 1); adaptive mode: the "
                       "starting t_min")
    t_min_end: float = opt(-1.0, -1.0, 1.0, help="uniform mode: anneal t_min linearly to this by the last step (-1: "
                                                 "off)")
    adaptive_lo: float = opt(0.1, 0.0, 1.0, help="adaptive mode: the lowest t_min the rule may reach (why 0.1: "
                             "docs/results/adaptive-tmin.md)")
    adaptive_hi: float = opt(0.9, 0.0, 0.99, help="adaptive mode: the highest t_min the rule may reach")
    adaptive_rate: float = opt(0.02, 0.0, 1.0, help="adaptive mode: the largest move of t_min per optimizer step")
    adaptive_ratio: float = opt(0.5, 0.0, 10.0, help="adaptive mode: t_min widens downward while the agreement "
                                "cos(A, -delta) at the range's low edge is at least this share of that above it, "
                                "and narrows otherwise")
    adaptive_decay: float = opt(0.9, 0.0, 0.999, help="adaptive mode: decay per optimizer step of the pooled "
                                "agreement sums (0.9: about the last 10 steps)")


@dataclass
class AdvantageConfig:
    """Group advantages, read by every algorithm."""
    std: Literal["group", "global"] = opt(
        "group", help="advantage std per group or global (official DGPO: GenEval group, OCR and PickScore global; "
        "Flow-GRPO global for all three)")
    clip_max: float = opt(5.0, 0.0, help="advantages clipped to +-clip_max")
    combine: Literal["weighted_sum", "per_component"] = opt(
        "weighted_sum", help="several rewards: weighted_sum = group advantages of the weighted sum (Flow-GRPO's "
        "multi_score); per_component = the weighted sum of each reward's own group advantages")


@dataclass
class TrainConfig:
    algorithm: Literal["dgpo", "flow_grpo", "dpo", "nft", "awm"] = opt(
        "dgpo", help="training algorithm: dgpo, flow_grpo, dpo (online Diffusion-DPO), nft (DiffusionNFT), awm "
        "(Advantage Weighted Matching)")
    offline: bool = opt(False, help="roll out from the frozen reference only (offline DGPO / DPO)")
    prompts_per_epoch: int = opt(8, 1, help="P: groups (prompts) per epoch")
    group_size: int = opt(16, 2, help="G: samples per prompt")
    batch_size: int = opt(32, 1, help="micro-batch of training forwards (whole groups); also of rollouts unless "
                          "train.rollout_batch_size is set")
    rollout_batch_size: int = opt(0, 0, help="samples per rollout chunk (CFG doubles the transformer's batch); "
                                  "0: train.batch_size")
    reference_batch_size: int = opt(
        0, 0, help="DGPO, DPO, DiffusionNFT: samples per forward of the frozen reference and the 'old' model, run "
        "for all timesteps and micro-batches of an optimizer step before its backward passes (whole micro-batches; "
        "bigger, faster forwards on a GPU; the same weights, so the numbers change only by the rounding of "
        "another batch size; a CFG'd reference, dgpo.kl_cfg > 1, doubles the forward's batch); 0: one forward per "
        "micro-batch and timestep (the official order)")
    text_dropout: float = opt(0.0, 0.0, 1.0, help="train on the empty prompt with this probability (paper 0.05; "
                              "code 0; DGPO, DPO, DiffusionNFT)")
    steps_per_epoch: int = opt(1, 1, help="optimizer steps per epoch (official DGPO 1, Flow-GRPO 2)")
    sampling_batches: int = opt(
        2, 1, help="the official num_batches_per_epoch, sampling batches per process and epoch (DGPO GenEval/OCR 2, "
        "PickScore 4; Flow-GRPO 4): sets the per_batch slow-EMA cadence and Flow-GRPO's zero-advantage refill")
    inner_epochs: int = opt(1, 1, help="passes over each epoch's rollouts, each with its own optimizer steps "
                                       "(official: 1)")
    lr: float = opt(3e-4, 0.0, 1.0, help="AdamW learning rate (official 3e-4)")
    weight_decay: float = opt(1e-4, 0.0, help="AdamW weight decay (official 1e-4)")
    max_grad_norm: float = opt(1.0, 0.0, help="grad-norm clip (official 1.0)")
    lora_rank: int = opt(64, 0, help="LoRA rank (official DGPO code 64, paper 32; Flow-GRPO 32); 0 = full fine-tune")
    lora_alpha: float = opt(128.0, 0.0, help="LoRA alpha (official DGPO 128; Flow-GRPO 64)")
    lora_targets: str = opt("", help="comma-separated module-name suffixes for LoRA; '' = the model's list")
    mixed_precision: Literal["no", "bf16"] = opt("no", help="autocast dtype for training forwards")
    compile: bool = opt(False, help="torch.compile the denoiser by region (its repeated transformer block; the toy "
                        "whole) for rollouts, references, training and evals; the first calls compile")
    compile_mode: Literal["default", "max-autotune", "max-autotune-no-cudagraphs"] = opt(
        "default", help="inductor's mode for train.compile: default, or max-autotune (benchmarks matmul kernels per "
        "shape while compiling: minutes more; and inductor's CUDA graphs) / max-autotune-no-cudagraphs (without them)")
    tf32: bool = opt(True, help="TF32 for fp32 matmuls/convolutions on CUDA (VAE, rewards, fp32 weights)")
    fp8: Literal["none", "tensorwise", "rowwise"] = opt(
        "none", help="FP8 matmuls for the denoiser's block linears in every forward and backward of training and "
        "its evals (torchao float8 with dynamic scaling, pip install 'dgpo[fp8]'; GPUs with compute capability 8.9+: "
        "Ada, Hopper, Blackwell; use with train.compile): rowwise scales are the more accurate; changes the numbers "
        "(FP8 rounding; speed and accuracy: docs/results/performance.md). none: off")
    fp8_cast_once: bool = opt(False, help="with train.fp8: the weights that do not train (LoRA's base layers, full "
                              "fine-tuning's frozen reference) are cast to FP8 once at start-up, not in every "
                              "forward and backward (the same numbers as train.fp8; two more bytes per frozen "
                              "weight in memory)")
    cuda_graphs: bool = opt(False, help="CUDA only: the rollouts' denoiser calls are recorded once per shape into "
                            "CUDA graphs and replayed (less host time per step; the same numbers); not with FSDP "
                            "or train.compile_mode=max-autotune. On a CPU it is noted and ignored")
    fp8_attention: bool = opt(False, help="FP8 attention (FlashAttention-3's FP8 forward, per-head scales) in the "
                              "rollouts only; the loss's forwards keep exact attention. Hopper GPU and the "
                              "flash_attn_interface module needed; changes the samples (docs/results/performance.md)")
    ema_decay: float = opt(0.9, 0.0, 1.0, help="slow EMA decay for eval/saving (official 0.9)")
    ema_every: int = opt(8, 1, help="optimizer steps between slow-EMA updates (official 8)")
    ema_cadence: Literal["per_batch", "per_step"] = opt(
        "per_batch", help="per_batch (official): the slow EMA's step runs once per sampling batch, so each update "
        "blends the same weights sampling_batches / steps_per_epoch times (decay 0.9 -> 0.81 for 2, 0.656 for 4); "
        "per_step: one blend per update")
    prompts: str = opt("toy:train", help="prompt source: toy:train, geneval:train, a GenEval .jsonl, an edit prompt "
                       "file (.jsonl rows with 'source' images: the editing families) or a .txt (one prompt per line)")
    balance_categories: bool = opt(False, help="sample prompts category-first (by metadata tag); false: uniformly "
                                   "(official)")
    travel_metrics: bool = opt(True, help="log update_norm and dist_from_start each step; keeps two float32 copies "
                               "of the trainable weights (for full fine-tuning of a large model as much memory as "
                               "Adam's moments: turn off there)")
    max_bad_steps: int = opt(5, 1, help="optimizer steps in a row skipped for a non-finite loss, gradient or "
                             "reward (nothing changes on a skipped step) before the run stops, its last good "
                             "state saved as a checkpoint")
    collective_timeout_s: float = opt(900.0, 1.0, help="multi-process runs: a collective (all-reduce, gather, "
                                      "barrier) waiting longer than this for a process fails, and the run stops "
                                      "with a message instead of hanging (the first one also waits for every "
                                      "process's model loading)")


@dataclass
class EvalConfig:
    split: str = opt("toy:test", help="held-out prompts: toy:test, geneval:test, ocr:test, pickscore:test, "
                     "drawbench:test (shipped), a GenEval-format .jsonl or a .txt (one prompt per line)")
    steps: int = opt(0, 0, 1000, help="ODE steps of evals and sample grids (0: sampler.steps)")
    method: Literal["", "dpm", "euler"] = opt("", help="ODE solver (and grid) of evals and sample grids ('': "
                                              "sampler.method; DiffusionNFT rolls out with dpm, evaluates with euler)")
    images_per_prompt: int = opt(1, 1, help="images per prompt (GenEval: 4)")
    batch_size: int = opt(64, 1, help="generation batch size")
    max_prompts: int = opt(0, 0, help="evaluate only the first N prompts (0: all)")
    per_category: int = opt(0, 0, help="evaluate N prompts of each category, evenly spread over it (0: all)")
    min_per_category: int = opt(40, 0, help="small categories get more images per prompt, up to this")
    extra_rewards: list[str] = opt([], help="out-of-domain rewards scored on every eval's images beside the "
                                   "training reward and logged (evals.jsonl 'extra', eval_extra/<name>, "
                                   "plots/eval.png); summary.json flags reward hacking: the target up while one of "
                                   "them falls beyond 2 standard errors. Reward names as reward.name (not it)")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    advantages: AdvantageConfig = field(default_factory=AdvantageConfig)
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    dgpo: DGPOConfig = field(default_factory=DGPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    nft: NFTConfig = field(default_factory=NFTConfig)
    awm: AWMConfig = field(default_factory=AWMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
