import math

import pytest
import torch

from codec.gradient_distortion import gradient_squared_error


def cost_per_mse(err: torch.Tensor) -> float:
    """The gradient term of an error picture over its MSE."""
    return (gradient_squared_error(err, torch.zeros_like(err)) / err.square().mean(dim=(1, 2, 3))).item()


def test_white_noise_error_costs_its_mse():
    err = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    assert cost_per_mse(err) == pytest.approx(1.0, rel=0.02)


def test_a_smooth_error_costs_nearly_nothing_and_the_finest_twice_its_mse():
    ramp = torch.linspace(0, 0.1, 64).expand(1, 3, 64, 64)   # an offset sloping 0.1 across the picture
    assert cost_per_mse(ramp) < 1e-3
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 2.0 - 1.0
    assert cost_per_mse(checker.expand(1, 3, 64, 64)) == pytest.approx(2.0, rel=1e-6)


def test_a_lost_2px_crack_costs_a_quarter_of_its_mse_a_smooth_error_of_the_same_energy_far_less():
    crack = torch.zeros(1, 1, 64, 64)
    crack[..., 8:56, 30:32] = 8 / 255                        # a vertical 2-px crack, 8 levels deep
    blob = torch.exp(-((torch.arange(64) - 32.0) ** 2)[:, None] / 200 - ((torch.arange(64) - 32.0) ** 2) / 200)
    blob = blob[None, None] * math.sqrt(crack.square().sum() / blob.square().sum())   # same squared error
    assert crack.square().sum() == pytest.approx(blob.square().sum().item(), rel=1e-5)
    # the crack's two edges per row over its two pixels, and its ends: (2·48 + 4) / (96 · 4) · 64 / 63
    assert cost_per_mse(crack) == pytest.approx(100 / 384 * 64 / 63, rel=1e-4)
    assert cost_per_mse(blob) < cost_per_mse(crack) / 20


def test_one_value_per_picture():
    x = torch.rand(3, 3, 16, 16)
    err = torch.rand(3, 3, 16, 16)
    per_picture = gradient_squared_error(x + err, x)
    assert per_picture.shape == (3,)
    assert per_picture[1].item() == pytest.approx(gradient_squared_error(err[1:2], torch.zeros(1, 3, 16, 16)).item(),
                                                  rel=1e-5)
