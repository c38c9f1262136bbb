import pytest
import torch

from codec.flat_area_weighting import MAX_WEIGHT, flat_area_weights, local_variance


def shell_and_grass(size=64, seed=0):
    """A flat grey shell (left half) beside strong texture (right half), with a faint 1-px crack on the shell."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((1, 3, size, size), 0.6)
    x[..., size // 2:] = torch.rand(1, 1, size, size // 2, generator=g).expand(1, 3, -1, -1)
    x[..., 4:size - 4, size // 4] -= 12 / 255
    return x


def test_local_variance_is_zero_on_flat_and_matches_torch_var_inside():
    x = shell_and_grass()
    v = local_variance(x)
    assert v.shape == (1, 1, 64, 64)
    assert v[0, 0, 2, 2] == pytest.approx(0.0, abs=1e-7)           # flat shell, the crack 14 px away
    window = x.mean(dim=1)[0, 20:35, 40:55]
    assert v[0, 0, 27, 47].item() == pytest.approx(window.var(unbiased=False).item(), rel=1e-4)


def test_weights_favour_the_shell_and_its_crack_over_texture_and_keep_mean_one():
    x = shell_and_grass()
    w = flat_area_weights(x, 1.0)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)
    shell, crack, grass = w[0, 0, 2:62, 1:4].mean(), w[0, 0, 8:56, 16].mean(), w[0, 0, :, 40:].mean()
    assert shell > crack > 10 * grass
    assert w.max().item() <= MAX_WEIGHT * 1.5


def test_strength_mixes_with_plain_mse_and_is_checked():
    x = shell_and_grass()
    assert torch.equal(flat_area_weights(x, 0.0), torch.ones(1, 1, 64, 64))
    half = flat_area_weights(x, 0.5)
    assert torch.allclose(half, 0.5 + 0.5 * flat_area_weights(x, 1.0))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        flat_area_weights(x, 1.5)


def test_a_uniform_picture_weighs_every_pixel_alike():
    assert torch.allclose(flat_area_weights(torch.full((2, 3, 16, 16), 0.3), 1.0), torch.ones(2, 1, 16, 16))
