import torch
from torch import nn

from codec.complexity import analysis_macs_per_pixel, count_macs
from codec.layers import SimplifiedGDN


def test_counter_matches_hand_count():
    conv = nn.Conv2d(3, 8, 5, stride=2, padding=2)
    assert count_macs(conv, torch.zeros(1, 3, 32, 32)) == 8 * 16 * 16 * 3 * 25
    up = nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1)
    assert count_macs(up, torch.zeros(1, 4, 5, 5)) == 4 * 25 * 2 * 16
    gdn = SimplifiedGDN(6)
    assert count_macs(gdn, torch.zeros(1, 6, 10, 10)) == 6 * 100 * 6


def test_drone_side_fits_the_budget(default_model):
    """At most ~100 k multiply-accumulates per pixel: a 20 MP photo every 2 s on a Jetson Orin."""
    assert analysis_macs_per_pixel(default_model.torch_model) <= 100_000
