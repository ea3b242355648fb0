"""Training algorithms: one file each, all driven by the same loop (``dgpo.training.trainer``)."""

from dgpo.algorithms.base import Algorithm, StepLoss
from dgpo.algorithms.dgpo import DGPO
from dgpo.algorithms.dpo import DPO
from dgpo.algorithms.flow_grpo import FlowGRPO
from dgpo.algorithms.nft import NFT

ALGORITHMS: dict[str, type[Algorithm]] = {a.name: a for a in (DGPO, FlowGRPO, DPO, NFT)}

__all__ = ["ALGORITHMS", "Algorithm", "StepLoss"]
