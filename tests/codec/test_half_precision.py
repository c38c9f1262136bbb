"""codec/half_precision.py: the folded image analysis in emulated float16 storage."""
import copy

import pytest
import torch

from codec import half_precision
from codec.activation_equalisation import gamma_params
from codec.imageio import read_photo
from tests.conftest import blade_photos, synthetic_image


def test_float16_storage_changes_y_but_keeps_the_bundled_models_latents(default_model):
    photo = synthetic_image(160, 224, seed=4)
    result = half_precision.check(default_model.torch_model.analysis.image, [photo])
    assert result["folded"] and result["passed"], result
    assert all(0 < r["relative_error"] < 1e-2 for r in result["runs"])   # rounded, and only just


def test_the_bundled_model_keeps_its_latents_in_float16_on_drone_frames(default_model):
    """Where c126c68a as exported before the γ floor changed 15-19 % of the latents at λ 8192 (its re-export
    e888c596 0.09-0.11 %)."""
    photos = [read_photo(p).pixels[:480, :848] for p in blade_photos(2)]
    result = half_precision.check(default_model.torch_model.analysis.image, photos, lambdas=(8192.0,))
    assert result["passed"], result
    assert result["worst_agreement"] > 0.998


def test_a_gdn_gone_linear_and_left_unfloored_fails_the_check(default_model):
    """γ of the third GDN a million times smaller: still the same function in float32 (the check compares
    against this model's own float32 fold), but its Softsign inputs sink among float16's subnormals."""
    image = copy.deepcopy(default_model.torch_model.analysis.image)
    with torch.no_grad():
        gamma_params(image.gdns[2]).mul_(1e-3)   # γ is the parameter squared
    result = half_precision.check(image, [synthetic_image(160, 224, seed=4)], lambdas=(8192.0,))
    assert not result["passed"]
    assert "float16" in result["error"] and "export-model" in result["error"]


def test_a_photo_under_16_px_is_refused_in_one_line(default_model):
    with pytest.raises(ValueError, match="under 16 px"):
        half_precision.check(default_model.torch_model.analysis.image, [synthetic_image(8, 64, seed=1)])
