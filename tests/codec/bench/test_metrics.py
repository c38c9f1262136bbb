import numpy as np
import pytest

from codec.bench.metrics import bd_rate, ms_ssim, psnr
from tests.conftest import synthetic_image


def test_psnr_of_known_error():
    a = np.full((10, 10, 3), 100, np.uint8)
    b = a + 5
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / 25))


def test_ms_ssim_orders_distortions():
    x = synthetic_image(128, 160)
    rng = np.random.default_rng(0)
    mild = np.clip(x + rng.normal(0, 3, x.shape), 0, 255).astype(np.uint8)
    strong = np.clip(x + rng.normal(0, 25, x.shape), 0, 255).astype(np.uint8)
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-9)
    assert 1.0 > ms_ssim(x, mild) > ms_ssim(x, strong) > 0


def test_bd_rate_of_a_scaled_curve():
    rates = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    quality = 30 + 4 * np.log2(rates / 0.1)
    assert bd_rate(rates, quality, 0.8 * rates, quality) == pytest.approx(-20.0, abs=0.01)
    assert bd_rate(rates, quality, rates, quality + 1.0) < 0
    assert bd_rate(rates, quality, rates, quality + 100) is None  # no overlap


def test_bd_psnr_of_a_shifted_curve():
    from codec.bench.metrics import bd_psnr
    rates = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    quality = 30 + 4 * np.log2(rates / 0.1)
    assert bd_psnr(rates, quality, rates, quality + 0.7) == pytest.approx(0.7, abs=1e-6)
    assert bd_psnr(rates, quality, rates * 100, quality) is None
