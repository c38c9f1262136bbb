"""Tiles for bounded memory on 12-45 MP photos, without seams.

Two kinds of tiles:
- coding tiles (in the container): each has its own entropy-coded stream, its own priors with zero
  padding at its border, and its own CRC, so tiles decode in parallel and damage stays local;
- transform windows: the float analysis and synthesis run window by window with a margin wider than
  their receptive field, and only each window's core is kept, so the result matches whole-image
  processing and no seam appears where windows meet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STRIDE = 16           # pixels per z1 position
WINDOW = 32           # z1 positions per transform window core (512 px)
MARGIN = 2            # z1 positions of context on each side (32 px): a z1 position's analysis sees its pixels
                      # ±30 px (four 5x5 stride-2 convs: 2·(1+2+4+8)), a pixel's synthesis sees z1 positions
                      # -1..+2 of its own; a wider margin only costs time ((32+2m)²/32² of the pixels)
WINDOW_PX = (WINDOW + 2 * MARGIN) * STRIDE   # the largest input a transform window ever has (576 px)


@dataclass(frozen=True)
class TileGeometry:
    width: int
    height: int
    tile_px: int
    levels: int

    @property
    def h1(self) -> int:
        return math.ceil(self.height / STRIDE)

    @property
    def w1(self) -> int:
        return math.ceil(self.width / STRIDE)

    @property
    def grid(self) -> tuple[int, int]:
        t1 = self.tile_px // STRIDE
        return math.ceil(self.w1 / t1), math.ceil(self.h1 / t1)

    def level_sizes(self):
        sizes, h, w = [], self.h1, self.w1
        for _ in range(self.levels):
            sizes.append((h, w))
            h, w = -(-h // 2), -(-w // 2)
        return sizes

    def tiles(self):
        """Row-major list; each tile is a list of (row slice, col slice) per level, level 1 first."""
        t1 = self.tile_px // STRIDE
        tiles_x, tiles_y = self.grid
        sizes = self.level_sizes()
        out = []
        for ty in range(tiles_y):
            for tx in range(tiles_x):
                regions = []
                for level, (h, w) in enumerate(sizes):
                    t = t1 >> level
                    regions.append((slice(ty * t, min((ty + 1) * t, h)), slice(tx * t, min((tx + 1) * t, w))))
                out.append(regions)
        return out


def pad_image(pixels: np.ndarray, h1: int, w1: int) -> np.ndarray:
    """Edge-replicate to a whole number of z1 positions (replicated pixels cost almost no bits)."""
    ph, pw = h1 * STRIDE - pixels.shape[0], w1 * STRIDE - pixels.shape[1]
    return np.pad(pixels, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else pixels


def _windows(n: int, window: int, margin: int):
    """(core start, core stop, context start, context stop) along one axis, in z1 positions."""
    for start in range(0, n, window):
        stop = min(start + window, n)
        yield start, stop, max(0, start - margin), min(n, stop + margin)


def analyse(image_fn, latent_fn, pixels: np.ndarray, geometry: TileGeometry, window=WINDOW, margin=MARGIN):
    """pixels (H,W,3) uint8 -> [y1, ..., yL] float32 (C,h,w). image_fn/latent_fn are backend calls."""
    padded = pad_image(pixels, geometry.h1, geometry.w1)
    y1 = None
    for r0, r1, a0, a1 in _windows(geometry.h1, window, margin):
        roff = r0 - a0
        for c0, c1, b0, b1 in _windows(geometry.w1, window, margin):
            coff = c0 - b0
            crop = padded[a0 * STRIDE:a1 * STRIDE, b0 * STRIDE:b1 * STRIDE]
            x = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
            y = image_fn(x)[0]
            if y1 is None:
                y1 = np.empty((y.shape[0], geometry.h1, geometry.w1), np.float32)
            y1[:, r0:r1, c0:c1] = y[:, roff:roff + r1 - r0, coff:coff + c1 - c0]
    return [y1] + [y[0] for y in latent_fn(y1[None])]


def synthesise(synth_fn, z1: np.ndarray, geometry: TileGeometry, window=WINDOW, margin=MARGIN) -> np.ndarray:
    """z1 (C,h1,w1) float32 -> (H,W,3) uint8."""
    out = np.empty((geometry.h1 * STRIDE, geometry.w1 * STRIDE, 3), np.uint8)
    for r0, r1, a0, a1 in _windows(geometry.h1, window, margin):
        roff = r0 - a0
        for c0, c1, b0, b1 in _windows(geometry.w1, window, margin):
            coff = c0 - b0
            x = synth_fn(np.ascontiguousarray(z1[None, :, a0:a1, b0:b1]))[0]
            core = x[:, roff * STRIDE:(roff + r1 - r0) * STRIDE, coff * STRIDE:(coff + c1 - c0) * STRIDE]
            out[r0 * STRIDE:r1 * STRIDE, c0 * STRIDE:c1 * STRIDE] = to_uint8(core).transpose(1, 2, 0)
    return out[: geometry.height, : geometry.width]


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x * 255.0 + 0.5), 0, 255).astype(np.uint8)
