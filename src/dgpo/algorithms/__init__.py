"""Training algorithms: one file each, all driven by the same loop (``dgpo.training.trainer``) through
the hooks of :class:`Algorithm` and a :class:`LoopContext`."""

from dgpo.algorithms.awm import AWM
from dgpo.algorithms.base import HOOKS, Algorithm, hook
from dgpo.algorithms.context import LoopContext, Rollouts, StepLoss
from dgpo.algorithms.dgpo import DGPO
from dgpo.algorithms.dpo import DPO
from dgpo.algorithms.flow_grpo import FlowGRPO
from dgpo.algorithms.nft import NFT

ALGORITHMS: dict[str, type[Algorithm]] = {a.name: a for a in (DGPO, FlowGRPO, DPO, NFT, AWM)}

__all__ = ["ALGORITHMS", "HOOKS", "Algorithm", "LoopContext", "Rollouts", "StepLoss", "hook"]
