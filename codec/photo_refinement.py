"""Refining one photo into a standard bitstream: the unrefined encode, SGA+ refinement (latent_refinement.py)
of the whole photo or of one coding tile at a time, and the better of the two on the objective R + λ·MSE.

Photos up to WHOLE_PHOTO_PIXELS are refined in one piece (back-propagation through the whole synthesis).
Larger ones go tile by tile: each coding tile's latents, every level, against the tile's own rate (its prior
chain, zero-padded at the tile border exactly as the coder pads it) plus the distortion of the tile's pixels
and a ring of its neighbours' pixels, with the neighbours' latents held at their current rounded values. Peak
memory is then that of one tile, whatever the photo size.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from .latent_refinement import RefineConfig, freeze, optimise, refine
from .model import LOG2, rounding_quantiser
from .tiling import MARGIN, STRIDE, TileGeometry, analyse, pad_image

WHOLE_PHOTO_PIXELS = 4_000_000
RING = 2    # z1 positions around a tile whose pixels the tile's latents still change (synthesis reach)


@dataclass
class Point:
    bytes: int
    bpp: float
    psnr: float
    loss: float       # bpp + λ·MSE (pixels in [0, 1]), measured on the real bitstream


@dataclass
class Refined:
    data: bytes
    before: Point
    after: Point
    steps: int        # optimisation steps run, summed over tiles
    kept_refined: bool
    seconds: float
    tiles: int = 1    # 1: the whole photo in one piece


def passes(model, height: int, width: int, whole_photo_pixels: int = WHOLE_PHOTO_PIXELS) -> int:
    """How many optimisations refine_photo runs for a photo (1, or one per coding tile)."""
    if height * width <= whole_photo_pixels:
        return 1
    from .api import DEFAULT_TILE_PX
    gx, gy = TileGeometry(width, height, DEFAULT_TILE_PX, model.cfg.levels).grid
    return gx * gy


def measure(model, data: bytes, pixels, lam: float) -> Point:
    from . import api

    out = api.decompress(model, data).pixels
    mse = float(np.mean((out.astype(np.float64) - pixels) ** 2)) / 255.0 ** 2
    bpp = 8 * len(data) / (pixels.shape[0] * pixels.shape[1])
    return Point(len(data), bpp, 10 * math.log10(1 / max(mse, 1e-12)), bpp + lam * mse)


def refine_photo(model, photo, lambda_index: int, cfg: RefineConfig, on_step=None, target=None,
                 whole_photo_pixels: int = WHOLE_PHOTO_PIXELS) -> Refined:
    """Refine a photo's latents; never returns something worse than plain encoding on the objective.

    target: the pixels to aim for (default: the photo itself). When only a received reconstruction is
    available it is both the start and the target. Photos above whole_photo_pixels go tile by tile.
    """
    from . import api
    from .lambdas import lambda_of_index
    from .transforms import TorchTransforms

    t0 = time.monotonic()
    pixels = photo.pixels if target is None else target
    lam = lambda_of_index(lambda_index)
    net = model.torch_model
    h, w = pixels.shape[:2]
    g = TileGeometry(w, h, api.DEFAULT_TILE_PX, model.cfg.levels)
    t = TorchTransforms(net, lam)
    ys = [torch.from_numpy(y)[None] for y in analyse(t.image, t.latent, pixels, g)]
    base = api.compress_latents(model, [y[0].numpy() for y in ys], photo, lambda_index)
    before = measure(model, base.data, pixels, lam)
    reserve = 1.5 * (time.monotonic() - t0)  # final encode + decode take about as long as this did
    if cfg.time_budget:
        cfg = replace(cfg, time_budget=max(0.0, cfg.time_budget - reserve))
    padded = pad_image(pixels, g.h1, g.w1)
    x = torch.from_numpy(padded.transpose(2, 0, 1).copy()).float().div(255)[None]
    tiles = passes(model, h, w, whole_photo_pixels)
    if tiles == 1:
        refined, steps = refine(net, x, lam, cfg, ys, on_step)
    else:
        refined, steps = refine_by_tiles(net, x, lam, cfg, ys, g, on_step)
    enc = api.compress_latents(model, [y[0].numpy() for y in refined], photo, lambda_index, beta=0.0)
    after = measure(model, enc.data, pixels, lam)
    keep = after.loss < before.loss
    return Refined(enc.data if keep else base.data, before, after if keep else before, steps, keep,
                   time.monotonic() - t0, tiles)


def refine_by_tiles(net, x, lam: float, cfg: RefineConfig, ys, g: TileGeometry, on_step=None):
    """Coding tile by coding tile, in coding order; the time budget is shared out by tile area."""
    freeze(net)
    lam_t = torch.tensor([float(lam)])
    ys = [y.clone() for y in ys]
    tiles = g.tiles()
    with torch.no_grad():   # every tile's decoded z1 as the coder will see it: the neighbours' context
        z1 = torch.zeros_like(ys[0])
        for regions in tiles:
            _put(z1, regions[0], _decoded_z1(net, ys, regions, lam_t))
    start, total = time.monotonic(), 0
    area_left = float(g.h1 * g.w1)
    for regions in tiles:
        rs, cs = regions[0]
        area = float((rs.stop - rs.start) * (cs.stop - cs.start))
        tile_cfg = cfg
        if cfg.time_budget:
            left = max(0.0, cfg.time_budget - (time.monotonic() - start))
            tile_cfg = replace(cfg, time_budget=max(1e-3, left * area / area_left))
        area_left -= area
        params = [y[:, :, r, c].clone().requires_grad_(True) for y, (r, c) in zip(ys, regions)]
        loss_of = _tile_objective(net, params, x, lam_t, z1, regions[0], g)
        total += optimise(params, loss_of, tile_cfg,
                          None if on_step is None else lambda i, *a, **k: on_step(total + i, *a, **k))
        with torch.no_grad():
            for y, p, (r, c) in zip(ys, params, regions):
                y[:, :, r, c] = p
            _put(z1, regions[0], _decoded_z1(net, ys, regions, lam_t))
    return ys, total


def _decoded_z1(net, ys, regions, lam_t):
    tile_ys = [y[:, :, r, c] for y, (r, c) in zip(ys, regions)]
    return net.top_down(tile_ys, quantiser=rounding_quantiser, lam=lam_t)[0][0]


def _put(z1, region, value):
    r, c = region
    z1[:, :, r, c] = value


def _tile_objective(net, params, x, lam_t, z1, region, g: TileGeometry):
    """loss_of(quantiser) for one tile: its bits plus λ·SSE over the tile and a RING of neighbour pixels,
    both per tile pixel, so the figures read like the whole-photo objective."""
    (rs, cs) = region
    # Loss region (tile + ring) and synthesis window (loss region + MARGIN of context), in z1 positions.
    l_r0, l_r1 = max(0, rs.start - RING), min(g.h1, rs.stop + RING)
    l_c0, l_c1 = max(0, cs.start - RING), min(g.w1, cs.stop + RING)
    w_r0, w_r1 = max(0, l_r0 - MARGIN), min(g.h1, l_r1 + MARGIN)
    w_c0, w_c1 = max(0, l_c0 - MARGIN), min(g.w1, l_c1 + MARGIN)
    target = x[:, :, l_r0 * STRIDE:l_r1 * STRIDE, l_c0 * STRIDE:l_c1 * STRIDE]
    tile_pixels = (rs.stop - rs.start) * (cs.stop - cs.start) * STRIDE * STRIDE
    tile_in_window = (slice(rs.start - w_r0, rs.stop - w_r0), slice(cs.start - w_c0, cs.stop - w_c0))
    crop = (slice((l_r0 - w_r0) * STRIDE, (l_r1 - w_r0) * STRIDE), slice((l_c0 - w_c0) * STRIDE, (l_c1 - w_c0) * STRIDE))

    def loss_of(quantiser):
        z_hat, likelihoods = net.top_down(params, quantiser=quantiser, lam=lam_t)
        window = z1[:, :, w_r0:w_r1, w_c0:w_c1].clone()
        window[:, :, tile_in_window[0], tile_in_window[1]] = z_hat[0]
        x_hat = net.synthesis(window, lam_t)[:, :, crop[0], crop[1]]
        bpp = sum(-(lk.log().sum()) / LOG2 for lk in likelihoods) / tile_pixels
        mse = (x_hat - target).square().sum() / (3 * tile_pixels)
        return bpp + lam_t[0] * mse, bpp, mse
    return loss_of
