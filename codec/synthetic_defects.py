"""Faint synthetic marks drawn on training crops: hairline strokes and small blobs a few grey levels off the
surface under them.

Inspectors look for thin, low-contrast cracks and pits, which photos of intact surfaces (most of the training
set) rarely hold; to a codec trained for MSE on such photos a faint hairline looks like sensor noise, the first
thing to drop. Drawing some into the crops was meant to make the transforms learn to carry them. The marks are
of another family than bench-defects' (vertical wandering cracks and square pits, always dark): strokes at any
angle with bends, anti-aliased and slightly blurred as optics blur them, dark or light, and round or oval blobs,
so the benchmark measures whether the codec keeps faint defects in general rather than the shapes it saw.

Session 39 measured it on lineage C (configs/ablation/synthetic_defects_5.yaml, 5 marks per crop for 2,200
steps; 1.25 for 2,000 before): lineage C at the same step needs 1.00x its bits to keep faint defects at
half contrast on 4 drone frames (0.96x on the shell), and the transforms keep the same share of them
(bench-defect-reach, within 0.02), at −0.2 % BD-rate. No effect at that length; off by default.

Session 40 weighed the marks' pixels 11x in the distortion as well (marks_weight 10, mark_weights below) and
trained lineage C's analysis alone on them (configs/ablation/marks_weight_10.yaml, 3,800 steps): faint defects
then need as many bits as with the bundled model (1.00x on 4 drone frames, 0.99x on the shell; lineage C
0.92x / 0.94x), for 1.8 points of BD-rate (−3.81 % against the bundled model where lineage C has −5.57 %).
"""
from __future__ import annotations

import math

import numpy as np

DEPTH_LEVELS = (3.0, 24.0)     # grey levels off the surface, uniform; bench-defects draws 5 to 20
STROKE_SEGMENTS = (2, 6)
SEGMENT_PX = (8, 48)
STROKE_WIDTH_PX = (1.0, 2.0)
BLOB_AXES_PX = (1, 4)
BLUR_SIGMA = 0.8               # the largest; each mark draws its own in [0, BLUR_SIGMA]
MAX_MARKS = 50                 # per crop on average: more would be a texture, not defects


def add_marks(batch: np.ndarray, rng: np.random.Generator, mean_marks: float) -> np.ndarray:
    """batch: (N, 3, H, W) float in [0, 1], changed in place; each picture gets a Poisson number of marks with
    this mean. Returns where they lie: (N, 1, H, W) coverage in [0, 1]."""
    where = np.zeros((batch.shape[0], 1) + batch.shape[2:], np.float32)
    for picture, covered in zip(batch, where):
        count = rng.poisson(mean_marks)
        if count:
            field, covered[0] = marks_field(picture.shape[1:], rng, count)
            np.clip(picture + field, 0.0, 1.0, out=picture)
    return where


def marks_field(shape: tuple[int, int], rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float32 each: the signed change in [0, 1] units that count marks make to a picture of this shape,
    and the share of each pixel they cover (clipped to 1 where marks cross)."""
    field = np.zeros(shape, np.float32)
    covered = np.zeros(shape, np.float32)
    for _ in range(count):
        coverage = stroke(shape, rng) if rng.random() < 0.7 else blob(shape, rng)
        sigma = rng.uniform(0.0, BLUR_SIGMA)
        if sigma > 0.3:   # below that the kernel is ~a delta
            coverage = blur(coverage, sigma)
        depth = rng.uniform(*DEPTH_LEVELS) / 255.0
        field += (depth if rng.random() < 0.25 else -depth) * coverage   # defects are mostly darker
        covered += coverage
    return field, np.minimum(covered, 1.0)


def mark_weights(coverage: np.ndarray, weight: float) -> np.ndarray:
    """Per-pixel distortion weights: 1 + weight on a mark, 1 elsewhere. Under plain MSE a faint hairline costs
    less than the bits that keep it, so the codec learns to drop it; weighting its pixels prices it as an
    inspector does, as if coded at a λ (1 + weight) times higher."""
    return 1.0 + weight * coverage


def stroke(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Coverage in [0, 1] of a bent hairline 1 to 2 px wide, anti-aliased (each pixel covered as far as its
    centre lies inside the line's half width, plus half a pixel)."""
    h, w = shape
    points = [np.array([rng.uniform(0, h), rng.uniform(0, w)])]
    angle = rng.uniform(0, 2 * math.pi)
    for _ in range(rng.integers(STROKE_SEGMENTS[0], STROKE_SEGMENTS[1] + 1)):
        angle += rng.normal(0, 0.4)
        points.append(points[-1] + rng.uniform(*SEGMENT_PX) * np.array([math.sin(angle), math.cos(angle)]))
    half_width = rng.uniform(*STROKE_WIDTH_PX) / 2
    corners = np.array(points)   # the box it can cover; never empty: it starts inside the picture
    top, left = np.maximum(np.floor(corners.min(0)).astype(int) - 2, 0)
    bottom, right = np.minimum(np.ceil(corners.max(0)).astype(int) + 3, (h, w))
    yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
    distance = np.full(yy.shape, np.inf, np.float32)
    for a, b in zip(points, points[1:]):
        distance = np.minimum(distance, _segment_distance(yy, xx, a, b))
    coverage = np.zeros(shape, np.float32)
    coverage[top:bottom, left:right] = np.clip(half_width + 0.5 - distance, 0.0, 1.0)
    return coverage


def _segment_distance(yy: np.ndarray, xx: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = b - a
    t = np.clip(((yy - a[0]) * d[0] + (xx - a[1]) * d[1]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    return np.hypot(yy - a[0] - t * d[0], xx - a[1] - t * d[1])


def blob(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Coverage in [0, 1] of a small filled oval at any angle, anti-aliased."""
    h, w = shape
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    a, b = rng.uniform(*BLOB_AXES_PX, size=2)
    turn = rng.uniform(0, math.pi)
    reach = int(max(a, b)) + 2
    top, left = max(int(cy) - reach, 0), max(int(cx) - reach, 0)
    coverage = np.zeros(shape, np.float32)
    yy, xx = np.mgrid[top:min(int(cy) + reach + 1, h), left:min(int(cx) + reach + 1, w)].astype(np.float32)
    u = (xx - cx) * math.cos(turn) + (yy - cy) * math.sin(turn)
    v = (yy - cy) * math.cos(turn) - (xx - cx) * math.sin(turn)
    inside = 1.0 - np.hypot(u / a, v / b)          # 1 at the centre, 0 on the rim
    coverage[top:top + yy.shape[0], left:left + yy.shape[1]] = np.clip(inside * min(a, b) + 0.5, 0.0, 1.0)
    return coverage


def blur(field: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with a kernel of radius 2 (sigma <= 0.8 keeps 99 % of its weight in it);
    edges replicated."""
    taps = np.exp(-0.5 * (np.arange(-2, 3) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        padded = np.pad(field, [(2, 2) if ax == axis else (0, 0) for ax in (0, 1)], mode="edge")
        n = field.shape[axis]
        field = sum(t * np.take(padded, range(k, k + n), axis=axis) for k, t in enumerate(taps))
    return field.astype(np.float32)
