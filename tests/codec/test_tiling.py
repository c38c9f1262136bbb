"""Tiles and transform windows: no seams, the same picture as whole-image coding, bounded geometry."""
import numpy as np
import pytest
from PIL import Image

from codec import api
from codec.imageio import Photo
from codec.lambdas import index_of_lambda, lambda_of_index
from codec.tiling import TileGeometry, analyse, synthesise
from codec.transforms import TorchTransforms
from tests.conftest import DATA, need_data, synthetic_image

WHOLE = 10 ** 6  # a window larger than any test image: whole-image processing


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


def two_megapixel_photo() -> np.ndarray:
    path = need_data(DATA / "train" / "wikipedia_photos") / "018.png"
    im = Image.open(path).convert("RGB")
    return np.asarray(im.resize((1754, 1168), Image.LANCZOS))


def whole_image_reconstruction(model, pixels, lam_index):
    h, w = pixels.shape[:2]
    g = TileGeometry(w, h, 4096, model.cfg.levels)
    t = TorchTransforms(model.torch_model, lambda_of_index(lam_index))
    ys = analyse(t.image, t.latent, pixels, g, window=WHOLE)
    payloads, zq = api.encode_latents(model, ys, g, lam_index, keep_latents=True)
    return synthesise(t.synth, (zq[0] / model.cfg.mean_grid).astype(np.float32), g, window=WHOLE), payloads


def test_tiled_matches_whole_image_coding(default_model):
    pixels = two_megapixel_photo()
    lam_index = index_of_lambda(1024)
    whole, payloads = whole_image_reconstruction(default_model, pixels, lam_index)
    assert len(payloads) == 1
    enc = api.compress(default_model, Photo(pixels), lam_index, tile_px=512, threads=2)
    c = api.read_container(default_model, enc.data)
    assert c.header.tiles_x * c.header.tiles_y == 12
    tiled = api.decompress(default_model, enc.data, threads=2).pixels
    assert abs(psnr(tiled, pixels) - psnr(whole, pixels)) < 0.1
    # No seam: along every tile border the tiled picture is as close to the photo as whole-image coding is.
    # (Pixels there may differ from the whole-image ones: a tile's prior sees zero padding at its border,
    # so means, and with them the quantisation points, shift; the error does not grow.)
    for axis, positions in ((1, (512, 1024, 1536)), (0, (512, 1024))):
        for pos in positions:
            band = [slice(None), slice(None)]
            band[axis] = slice(pos - 8, pos + 8)
            err = lambda im: np.abs(im[tuple(band)].astype(float) - pixels[tuple(band)]).mean()
            assert err(tiled) <= 1.1 * err(whole) + 0.25, (axis, pos, err(tiled), err(whole))


def test_window_size_does_not_change_the_picture(tiny_model):
    pixels = synthetic_image(300, 420, seed=2)
    g = TileGeometry(420, 300, 128, tiny_model.cfg.levels)
    t = TorchTransforms(tiny_model.torch_model, 700.0)
    small = analyse(t.image, t.latent, pixels, g, window=4)
    whole = analyse(t.image, t.latent, pixels, g, window=WHOLE)
    for a, b in zip(small, whole):
        np.testing.assert_allclose(a, b, atol=1e-4)
    z1 = np.round(whole[0])
    diff = synthesise(t.synth, z1, g, window=4).astype(int) - synthesise(t.synth, z1, g, window=WHOLE)
    assert np.abs(diff).max() <= 1  # float summation order only


@pytest.mark.parametrize("w, h, tile", [(1, 1, 128), (4000, 3000, 1024), (5472, 3648, 2048), (129, 4097, 256)])
def test_tiles_cover_every_level_exactly_once(w, h, tile):
    g = TileGeometry(w, h, tile, 4)
    for level, (lh, lw) in enumerate(g.level_sizes()):
        cover = np.zeros((lh, lw), np.int32)
        for regions in g.tiles():
            rs, cs = regions[level]
            cover[rs, cs] += 1
        assert cover.min() == 1 and cover.max() == 1


def test_the_margin_is_as_narrow_as_exactness_allows(tiny_model):
    """MARGIN is the smallest context that keeps windowed analysis equal to whole-image analysis: one
    position less changes the latents at window borders."""
    from codec.tiling import MARGIN
    pixels = synthetic_image(300, 420, seed=3)
    g = TileGeometry(420, 300, 128, tiny_model.cfg.levels)
    t = TorchTransforms(tiny_model.torch_model, 700.0)
    whole = analyse(t.image, t.latent, pixels, g, window=WHOLE)[0]
    exact = analyse(t.image, t.latent, pixels, g, window=4, margin=MARGIN)[0]
    short = analyse(t.image, t.latent, pixels, g, window=4, margin=MARGIN - 1)[0]
    assert np.abs(exact - whole).max() < 1e-4 < np.abs(short - whole).max()
