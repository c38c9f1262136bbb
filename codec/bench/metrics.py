"""PSNR, MS-SSIM and Bjøntegaard delta rate."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0 ** 2 / max(mse, 1e-10))


def _gauss(size=11, sigma=1.5):
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _ssim_parts(x, y, win):
    c = x.shape[1]
    k1 = win.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    k2 = win.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    blur = lambda t: F.conv2d(F.conv2d(t, k1, groups=c), k2, groups=c)
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim = ((2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)) * cs
    return ssim.mean(), cs.mean()


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (Wang et al. 2003) on RGB uint8, averaged over channels; scales shrink while >= 11 px."""
    x = torch.from_numpy(a.transpose(2, 0, 1).copy()).double()[None]
    y = torch.from_numpy(b.transpose(2, 0, 1).copy()).double()[None]
    win = _gauss()
    levels = max(1, min(len(MSSSIM_WEIGHTS), int(math.log2(min(a.shape[:2]) / 11)) + 1))
    weights = torch.tensor(MSSSIM_WEIGHTS[:levels], dtype=torch.float64)
    weights = weights / weights.sum()
    vals = []
    for i in range(levels):
        ssim, cs = _ssim_parts(x, y, win)
        vals.append(ssim if i == levels - 1 else cs)
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    vals = torch.stack(vals).clamp_min(1e-8)
    return float(torch.prod(vals ** weights))


def _curve(x, y):
    """Points sorted by x with repeated x dropped (PCHIP needs strictly increasing x)."""
    order = np.argsort(x)
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    keep = np.concatenate([[True], np.diff(xs) > 1e-9])
    return xs[keep], ys[keep]


def common_range(dist_a, dist_b) -> tuple[float | None, float | None]:
    """The quality range two curves share (what BD-rate averages over); (None, None) if they do not meet."""
    lo, hi = max(min(dist_a), min(dist_b)), min(max(dist_a), max(dist_b))
    return (float(lo), float(hi)) if hi > lo else (None, None)


def _mean_gap(xa, ya, xb, yb) -> float | None:
    """Mean of (curve b - curve a) over their common x range, both PCHIP-interpolated; None if disjoint."""
    from scipy.interpolate import PchipInterpolator

    lo, hi = common_range(xa, xb)
    if lo is None or len(xa) < 2 or len(xb) < 2:
        return None
    grid = np.linspace(lo, hi, 200)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 1.x (JetPack) has only trapz
    return float(trapezoid(PchipInterpolator(xb, yb)(grid) - PchipInterpolator(xa, ya)(grid), grid) / (hi - lo))


def bd_rate(rate_a, dist_a, rate_b, dist_b) -> float | None:
    """Average bit-rate difference (%) of curve b against anchor a over their common quality range.

    Piecewise-cubic (monotone) interpolation of log-rate as a function of quality, as in JVET's
    implementation of Bjøntegaard's metric. None when the quality ranges do not overlap.
    """
    da, ra = _curve(dist_a, np.log(np.asarray(rate_a, float)))
    db, rb = _curve(dist_b, np.log(np.asarray(rate_b, float)))
    gap = _mean_gap(da, ra, db, rb)
    return None if gap is None else float((math.exp(gap) - 1) * 100)


def bd_psnr(rate_a, psnr_a, rate_b, psnr_b) -> float | None:
    """Average quality difference (dB) of curve b against a over their common log-rate range."""
    ra, da = _curve(np.log(np.asarray(rate_a, float)), psnr_a)
    rb, db = _curve(np.log(np.asarray(rate_b, float)), psnr_b)
    return _mean_gap(ra, da, rb, db)
