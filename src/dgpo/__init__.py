"""dgpo: online RL post-training (DGPO, Flow-GRPO, DPO, DiffusionNFT) for text-to-image flow-matching models."""

__version__ = "0.1.0"
