import math

import torch

from dgpo.rewards import build_reward


def test_colorfulness_by_hand_and_continuity():
    fn = build_reward("colorfulness")
    grey = torch.full((1, 3, 4, 4), 0.5)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    r = fn(torch.cat([grey, red]), [{}, {}])
    assert float(r[0]) == 0.0
    assert float(r[1]) == torch.tensor(0.3 * math.hypot(255, 127.5)).float().item()
    half = red.clone()
    half[..., :2] = 0.0  # left half black: rg in {0, 255}, yb in {0, 127.5}
    std = math.sqrt(127.5**2 + 63.75**2)
    assert abs(float(fn(half, [{}])) - (std + 0.3 * math.hypot(127.5, 63.75))) < 1e-3
    eps = torch.full_like(red, 1e-6)
    assert abs(float(fn(red - eps, [{}])) - float(r[1])) < 1e-2  # smooth: no jumps
