"""The edge's rate policy through a real backend: a fixed λ, or the largest file within a byte budget."""
import pytest

from codec import api
from codec.errors import CodecError
from codec.imageio import Photo
from codec.rate_aware_rounding import PSNR_BETA
from edge.backends import select_backend
from edge.config import Rate
from edge.rate_policy import RatePolicy
from tests.conftest import synthetic_image


@pytest.fixture(scope="module")
def backend(default_model):
    return select_backend(default_model, order=("torch",))


def test_fixed_lambda(default_model, backend):
    photo = Photo(synthetic_image(128, 192, seed=3))
    enc = RatePolicy(default_model, backend, Rate(mode="fixed", lambda_index=77, tile_px=1024)).encode(photo)
    assert enc.lambda_index == 77
    assert api.read_container(default_model, enc.data).header.lambda_index == 77


def test_byte_budget_is_met_with_backend_transforms(default_model, backend):
    photo = Photo(synthetic_image(128, 192, seed=3))
    small = len(api.compress(default_model, photo, 0).data)
    large = len(api.compress(default_model, photo, 255).data)
    budget = (small + large) // 2
    enc = RatePolicy(default_model, backend, Rate(mode="budget", max_bytes=budget)).encode(photo)
    assert 0.97 * budget <= len(enc.data) <= budget
    with pytest.raises(CodecError, match="budget"):
        RatePolicy(default_model, backend, Rate(mode="budget", max_bytes=max(64, small // 2))).encode(photo)


def test_budget_search_starts_at_the_previous_photos_index(default_model, backend):
    """A run of similar photos: after the first, the previous answer fits and its successor does not."""
    policy = RatePolicy(default_model, backend, Rate(mode="budget", max_bytes=2500))
    first = policy.encode(Photo(synthetic_image(128, 192, seed=3)))
    assert first.tries > 2 and policy.last_index == first.lambda_index
    again = policy.encode(Photo(synthetic_image(128, 192, seed=3)))
    assert (again.lambda_index, again.data, again.tries) == (first.lambda_index, first.data, 2)
    fixed = policy.encode(Photo(synthetic_image(128, 192, seed=4)), Rate(mode="fixed", lambda_index=9))
    assert fixed.lambda_index == 9 and policy.last_index == first.lambda_index


def test_rounding_beta_reaches_the_encoder(default_model, backend):
    """rate.rounding_beta: plain rounding by default (faint defects keep their bits); PSNR_BETA makes the same
    photo's file at the same λ smaller, and it still decodes."""
    photo = Photo(synthetic_image(128, 192, seed=3))
    plain = RatePolicy(default_model, backend, Rate(mode="fixed", lambda_index=150)).encode(photo)
    assert plain.data == api.compress(default_model, photo, 150, beta=0.0).data
    rounded = RatePolicy(default_model, backend, Rate(mode="fixed", lambda_index=150, rounding_beta=PSNR_BETA)
                         ).encode(photo)
    assert len(rounded.data) < len(plain.data)
    assert api.decompress(default_model, rounded.data).pixels.shape == photo.pixels.shape
