"""Round trips through the public API on real blade photos and on synthetic images of awkward sizes."""
import numpy as np
import pytest
from PIL import Image

from codec import api
from codec.errors import CodecError
from codec.imageio import Photo, read_photo
from codec.lambdas import index_of_lambda, lambda_of_index
from codec.rate_aware_rounding import PSNR_BETA
from tests.conftest import blade_photos, synthetic_image


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def test_blade_photos_round_trip(default_model):
    for path in blade_photos(3):
        photo = read_photo(path)
        enc = api.compress(default_model, photo, index_of_lambda(1024))
        out = api.decompress(default_model, enc.data)
        assert out.pixels.shape == photo.pixels.shape
        assert psnr(out.pixels, photo.pixels) > 15


@pytest.mark.parametrize("h, w", [(1, 1), (17, 33), (16, 16), (31, 1), (129, 257), (200, 48)])
def test_odd_sizes_round_trip(tiny_model, h, w):
    photo = Photo(synthetic_image(h, w, seed=h * w))
    enc = api.compress(tiny_model, photo, 100, tile_px=128)
    out = api.decompress(tiny_model, enc.data)
    assert out.pixels.shape == (h, w, 3)
    c = api.read_container(tiny_model, enc.data)
    assert (c.header.width, c.header.height) == (w, h)


def test_decoded_latents_equal_the_encoders(tiny_model):
    photo = Photo(synthetic_image(150, 260, seed=3))
    enc = api.compress(tiny_model, photo, 80, tile_px=128, keep_latents=True)
    zq, _ = api.decode_latents(tiny_model, api.read_container(tiny_model, enc.data))
    for a, b in zip(enc.latents, zq):
        np.testing.assert_array_equal(a, b)


def test_grey_and_rgba_inputs(tmp_path, tiny_model):
    from codec.imageio import read_photo
    grey = Image.fromarray(synthetic_image(40, 50)[..., 0], "L")
    grey.save(tmp_path / "g.png")
    photo = read_photo(tmp_path / "g.png")
    assert photo.pixels.shape == (40, 50, 3)
    rgba = np.dstack([synthetic_image(40, 50), np.full((40, 50), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    assert read_photo(tmp_path / "opaque.png").pixels.shape == (40, 50, 3)
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "transparent.png")
    with pytest.raises(CodecError, match="alpha"):
        read_photo(tmp_path / "transparent.png")


def test_refuses_bad_arrays(tiny_model):
    with pytest.raises(CodecError):
        api.compress(tiny_model, Photo(np.zeros((10, 10), np.uint8)), 10)
    with pytest.raises(CodecError):
        api.compress(tiny_model, Photo(np.zeros((0, 10, 3), np.uint8)), 10)
    with pytest.raises(CodecError):
        api.compress(tiny_model, Photo(np.zeros((10, 10, 3), np.uint8)), 999)


def test_wrong_model_is_refused(tiny_model, default_model):
    enc = api.compress(tiny_model, Photo(synthetic_image(20, 20)), 10, tile_px=128)
    with pytest.raises(CodecError):
        api.decompress(default_model, enc.data)


def test_file_size_matches_the_models_estimate(default_model):
    """Payload bytes within 1 % of the bits the model's entropy model estimates (its integer tables, what
    the coder codes with); with plain rounding (the default, and the float network's), within 3 % of the float
    network's estimate (their gap is the rate cost of exactness, measured at export); the rest of the file is
    the header. Rate-aware rounding makes the payload smaller."""
    import torch
    from codec import container, rans
    from codec.bench.coder import photo_symbols

    photo = read_photo(blade_photos(1)[0])
    lam_index = index_of_lambda(1024)
    enc = api.compress(default_model, photo, lam_index, tile_px=4096)
    c = api.read_container(default_model, enc.data)
    payload_bits = 8 * sum(len(t) for t in c.tiles)
    header = len(enc.data) - payload_bits // 8
    assert header == container.FIXED.size + 8 + 4 + len(container.pack_metadata(c.metadata))
    h, w = photo.pixels.shape[:2]
    x = np.pad(photo.pixels, ((0, -h % 16), (0, -w % 16), (0, 0)), mode="edge")
    x = torch.from_numpy(x.transpose(2, 0, 1).copy()).float().div(255)[None]
    with torch.no_grad():
        out = default_model.torch_model(x, torch.tensor([lambda_of_index(lam_index)]), noisy=False)
    estimate = float(sum(b.sum() for b in out["bits"]))
    values, tables, _, _ = photo_symbols(default_model, blade_photos(1), lambdas=(1024,))
    ideal = rans.ideal_bits(values, tables, *(default_model.tables[k] for k in ("cdfs", "lengths", "offsets")))
    assert abs(payload_bits - ideal) <= 0.01 * ideal
    assert abs(payload_bits - estimate) <= 0.03 * estimate
    rounded = api.compress(default_model, photo, lam_index, tile_px=4096, beta=PSNR_BETA)
    assert 8 * sum(len(t) for t in api.read_container(default_model, rounded.data).tiles) < payload_bits


@pytest.mark.parametrize("levels", [2, 4])
def test_every_supported_level_count_round_trips(tmp_path, levels):
    from tests.conftest import build_tiny_model
    model = build_tiny_model(tmp_path / f"l{levels}.npz", levels)
    photo = Photo(synthetic_image(70, 150, seed=levels))
    enc = api.compress(model, photo, 60, tile_px=16 * 2 ** (levels - 1) * 8, keep_latents=True)
    zq, _ = api.decode_latents(model, api.read_container(model, enc.data))
    assert len(zq) == levels
    for a, b in zip(enc.latents, zq):
        np.testing.assert_array_equal(a, b)
    assert api.decompress(model, enc.data).pixels.shape == (70, 150, 3)


def test_models_from_before_the_learned_top_prior_still_round_trip(tmp_path):
    """Their files have no top_prior key: zL is coded with the fixed logistic table."""
    from codec import weights
    from codec.runtime import CodecModel
    from tests.conftest import build_tiny_model

    path = tmp_path / "old.npz"
    build_tiny_model(path, top_prior="logistic")
    arrays, meta = weights.load_arrays(path)
    del meta["config"]["top_prior"]
    weights.save_arrays(path, arrays, meta)
    model = CodecModel.load(path)
    assert model.cfg.top_prior == "logistic" and set(model.top_index) == {model.cfg.num_scales}
    photo = Photo(synthetic_image(90, 130, seed=5))
    enc = api.compress(model, photo, 70, keep_latents=True)
    zq, _ = api.decode_latents(model, api.read_container(model, enc.data))
    for a, b in zip(enc.latents, zq):
        np.testing.assert_array_equal(a, b)


def test_a_top_index_outside_the_table_is_refused(tmp_path, tiny_model):
    from codec import weights
    from codec.runtime import CodecModel

    arrays, meta = weights.load_arrays(tiny_model.path)
    assert arrays["top/index"].shape == (8,)
    arrays["top/index"] = arrays["top/index"].copy()
    arrays["top/index"][0] = tiny_model.cfg.num_scales
    weights.save_arrays(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(CodecError, match="not a complete codec model .*top/index must hold 8 indices below 64"):
        CodecModel.load(tmp_path / "bad.npz")
    arrays["top/index"] = np.full(8, 3.5)   # integers only: a float would be truncated differently
    weights.save_arrays(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(CodecError, match="top/index must hold 8 indices"):
        CodecModel.load(tmp_path / "bad.npz")
