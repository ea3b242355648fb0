import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def tiny_toy(tmp_path):
    """A randomly initialised, small toy checkpoint folder (fast; not the shipped base)."""
    from dgpo.toy.model import ToyModelConfig, ToyUNet
    from dgpo.toy.weights import save_toy

    torch.manual_seed(0)
    net = ToyUNet(ToyModelConfig(channels=(8, 16, 16), text_dim=16, heads=2))
    for p in net.out.parameters():  # the real init zeroes the output; make velocities non-trivial
        torch.nn.init.normal_(p, std=0.02)
    save_toy(net, tmp_path / "tiny")
    return tmp_path / "tiny"
