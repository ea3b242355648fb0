import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def tiny_toy(tmp_path):
    """A randomly initialised, small toy checkpoint folder (fast; not the shipped base)."""
    from dgpo.testing.toy import tiny_toy_checkpoint

    return tiny_toy_checkpoint(tmp_path / "tiny")
