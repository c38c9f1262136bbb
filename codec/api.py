"""Compress and decompress photos: the functions the command line, the edge and the ground call."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import container, latent_coding, rate_search
from .errors import BitstreamError, CodecError, UnknownModel
from .imageio import Photo
from .lambdas import GRID_SIZE, lambda_of_index
from .rate_aware_rounding import DEFAULT_BETA, check_beta
from .runtime import CodecModel
from .tiling import TileGeometry, analyse, synthesise

DEFAULT_TILE_PX = 1024
MAX_PIXELS = container.MAX_PIXELS


@dataclass
class Encoded:
    data: bytes
    lambda_index: int
    latents: list | None = None   # the encoder's integer latents per level, when asked for
    tries: int = 1                # encodes it took (more than one when a byte budget chose λ)


def _map(fn, items, threads: int):
    if threads <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, items))


def _set_threads(threads: int):
    if threads < 1:
        raise CodecError(f"thread count must be at least 1, got {threads}")
    import torch
    torch.set_num_threads(threads)


def check_image(pixels: np.ndarray):
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise CodecError(f"expected an RGB uint8 image, got shape {pixels.shape} {pixels.dtype}")
    h, w = pixels.shape[:2]
    if h < 1 or w < 1 or h * w > MAX_PIXELS or max(h, w) > container.MAX_SIDE:
        raise CodecError(f"image size {w}x{h} is outside the limits (at most {MAX_PIXELS} pixels)")


def _assemble(model: CodecModel, geometry: TileGeometry, tiles_zq) -> list:
    full = [np.empty(shape, np.int64) for shape in model.level_shapes(geometry.h1, geometry.w1)]
    for regions, zq in zip(geometry.tiles(), tiles_zq):
        for level, (rs, cs) in enumerate(regions):
            full[level][:, rs, cs] = zq[level]
    return full


def encode_latents(model: CodecModel, ys, geometry: TileGeometry, lambda_index: int, threads: int = 1,
                   keep_latents=False, beta: float = DEFAULT_BETA):
    """Entropy-code continuous latents tile by tile, with the priors of this λ index.
    beta: z1's rate-aware rounding (rate_aware_rounding.py; 0 rounds to the nearest integer).

    Returns (payloads, integer latents per level or None).
    """
    check_beta(beta)

    def one(regions):
        tile_ys = [y[:, rs, cs] for y, (rs, cs) in zip(ys, regions)]
        payload, zq = latent_coding.encode(tile_ys, model, lambda_index, beta)
        return payload, zq if keep_latents else None

    results = _map(one, geometry.tiles(), threads)
    latents = _assemble(model, geometry, [r[1] for r in results]) if keep_latents else None
    return [r[0] for r in results], latents


def compress(model: CodecModel, photo: Photo, lambda_index: int, tile_px: int = DEFAULT_TILE_PX,
             threads: int = 1, transforms=None, keep_latents: bool = False, beta: float = DEFAULT_BETA) -> Encoded:
    """transforms: an object with image/latent methods (default: the PyTorch model at this λ).
    beta: z1's rate-aware rounding (encode_latents)."""
    geometry = _prepare(model, photo, lambda_index, tile_px, threads)
    if transforms is None:
        from .transforms import TorchTransforms
        transforms = TorchTransforms(model.torch_model, lambda_of_index(lambda_index))
    ys = analyse(transforms.image, transforms.latent, photo.pixels, geometry)
    return compress_latents(model, ys, photo, lambda_index, tile_px, threads, keep_latents, beta)


def _prepare(model: CodecModel, photo: Photo, lambda_index: int, tile_px: int, threads: int) -> TileGeometry:
    check_image(photo.pixels)
    if not 0 <= lambda_index < GRID_SIZE:
        raise CodecError(f"λ index {lambda_index} outside 0..{GRID_SIZE - 1}")
    _set_threads(threads)
    h, w = photo.pixels.shape[:2]
    try:
        container.tile_grid(w, h, tile_px, model.cfg.alignment)
    except BitstreamError as e:
        raise CodecError(str(e)) from None
    return TileGeometry(w, h, tile_px, model.cfg.levels)


def compress_latents(model: CodecModel, ys, photo: Photo, lambda_index: int, tile_px: int = DEFAULT_TILE_PX,
                     threads: int = 1, keep_latents: bool = False, beta: float = DEFAULT_BETA) -> Encoded:
    """Entropy-code continuous latents (from any analysis, or refined ones) into a container.
    beta: as in encode_latents; refined latents take 0 (SGA+ has already put each one on its side of the bin)."""
    geometry = _prepare(model, photo, lambda_index, tile_px, threads)
    expected = model.level_shapes(geometry.h1, geometry.w1)
    if [tuple(y.shape) for y in ys] != expected:
        raise CodecError(f"latent shapes {[tuple(y.shape) for y in ys]} do not match the image ({expected})")
    payloads, latents = encode_latents(model, ys, geometry, lambda_index, threads, keep_latents, beta)
    header = container.Header(model.cfg.levels, lambda_index, model.model_id, geometry.width, geometry.height,
                              tile_px, *geometry.grid)
    meta = {container.META_EXIF: photo.exif, container.META_XMP: photo.xmp}
    data = container.write(container.Container(header, payloads, meta))
    return Encoded(data, lambda_index, latents)


def read_container(model: CodecModel, data: bytes) -> container.Container:
    c = container.read(data, model.alignment_of)
    if c.header.model_id != model.model_id:
        raise UnknownModel(f"bitstream was made by model {c.header.model_id.hex()}, "
                           f"this decoder has model {model.model_id.hex()}")
    return c


def decode_latents(model: CodecModel, c: container.Container, threads: int = 1):
    """Entropy-decode every tile. Returns zq (int64, z * mean_grid) per level at full size."""
    h = c.header
    geometry = TileGeometry(h.width, h.height, h.tile_px, h.levels)

    def one(args):
        index, regions = args
        shapes = [(model.cfg.level_channels(level), rs.stop - rs.start, cs.stop - cs.start)
                  for level, (rs, cs) in enumerate(regions)]
        try:
            return latent_coding.decode(c.tiles[index], shapes, model, h.lambda_index)
        except BitstreamError as e:
            raise BitstreamError(f"tile {index}: {e}") from None

    tiles_zq = _map(one, list(enumerate(geometry.tiles())), threads)
    return _assemble(model, geometry, tiles_zq), geometry


def decompress(model: CodecModel, data: bytes, threads: int = 1) -> Photo:
    _set_threads(threads)
    c = read_container(model, data)
    zq, geometry = decode_latents(model, c, threads)
    from .transforms import TorchTransforms
    transforms = TorchTransforms(model.torch_model, lambda_of_index(c.header.lambda_index))
    z1 = (zq[0] / model.cfg.mean_grid).astype(np.float32)
    pixels = synthesise(transforms.synth, z1, geometry)
    return Photo(pixels, c.metadata.get(container.META_EXIF, b""), c.metadata.get(container.META_XMP, b""))


def compress_to_budget(model: CodecModel, photo: Photo, max_bytes: int, transforms_for=None,
                       start_index: int | None = None, **kwargs) -> Encoded:
    """The highest λ whose file fits in max_bytes (codec/rate_search.py: size grows with λ).

    transforms_for(λ) gives the analysis backend at each λ tried (default: the PyTorch model).
    start_index: the first λ index to try, e.g. the previous photo's (default: the middle of the grid).
    Encoded.tries says how many encodes the search took.
    """
    def at(index: int):
        transforms = transforms_for(lambda_of_index(index)) if transforms_for else None
        enc = compress(model, photo, index, transforms=transforms, **kwargs)
        return len(enc.data), enc

    if max_bytes < 1:
        raise CodecError(f"byte budget must be positive, got {max_bytes}")
    index, tried = rate_search.largest_fitting(at, max_bytes, GRID_SIZE, start_index)
    if index is None:   # index 0 was tried and was too large
        raise CodecError(f"budget of {max_bytes} bytes is below the smallest file this model makes "
                         f"for this photo ({len(tried[0].data)} bytes at λ={lambda_of_index(0):g})")
    tried[index].tries = len(tried)
    return tried[index]


def bytes_for_bpp(bpp: float, width: int, height: int) -> int:
    if not 0 < bpp < 1e6:   # also refuses inf and nan
        raise CodecError(f"bits per pixel must be a positive number, got {bpp}")
    return int(math.floor(bpp * width * height / 8))
