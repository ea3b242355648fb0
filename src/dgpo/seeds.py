"""Every random draw of a run is a fixed function of integer keys: the run seed, the epoch, a named
stream and indices. No state is carried or broadcast, so any process layout, a resume and a rerun
draw the same numbers."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """The second-level key of each kind of draw (values fixed: changing one changes every run)."""

    TIMESTEPS = 1  # DGPO/DPO training timesteps of an epoch
    SHARED_NOISE = 2  # a group's shared re-noising noise per timestep slot
    ROLLOUT = 3  # the initial noise of each sample
    TEXT_DROPOUT = 4  # which samples train on the empty prompt
    SDE_WINDOW = 5  # Flow-GRPO-Fast: a sampling batch's window start
    SDE_STEP = 6  # the SDE's per-step noise of a sample (keyed by the sample's own seed)
    ZERO_ADV_REFILL = 7  # Flow-GRPO: which zero-advantage samples are re-added
    SHUFFLE = 8  # Flow-GRPO / DiffusionNFT: the optimizer steps' shuffle across groups
    NFT_ORDER = 9  # DiffusionNFT: each sample's order of grid steps
    NFT_NOISE = 10  # DiffusionNFT: each sample's own re-noising noise
    AWM_TIMESTEPS = 11  # AWM: each sample's grid index in each stratum
    AWM_NOISE = 12  # AWM: each sample's own re-noising noise per timestep slot


def derive_seed(*key: int) -> int:
    """A 63-bit seed that is a fixed function of integer keys (run seed, epoch, stream, index...)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0] >> 1)
