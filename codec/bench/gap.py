"""Where a codec's gap to the reference lies: its rate ratio at fixed qualities, and its BD-rate image by image.

bd_rate.md gives one number per codec. These two tables say whether the gap sits at the low or the high end
of the curve and which images carry it (session 16 found ours furthest behind HEIC on smooth-sky blade
frames, and its curve flattening above ~42 dB), so a training change can be aimed at the part that loses.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .metrics import _curve, bd_rate

QUALITY_STEPS = 7


def _log_rate_of_psnr(points):
    from scipy.interpolate import PchipInterpolator

    psnrs, log_rates = _curve([p["psnr"] for p in points], np.log([p["bpp"] for p in points]))
    return PchipInterpolator(psnrs, log_rates), psnrs[0], psnrs[-1]


def rate_ratios(ref_points, points, steps: int = QUALITY_STEPS) -> list[tuple[float, float]]:
    """(PSNR, bpp of points / bpp of ref_points) at `steps` evenly spaced PSNRs of their common range.

    Both curves are PCHIP-interpolated in log-rate, as BD-rate does; [] when the ranges do not overlap.
    """
    if len(ref_points) < 2 or len(points) < 2:
        return []
    ref, ref_lo, ref_hi = _log_rate_of_psnr(ref_points)
    cur, lo, hi = _log_rate_of_psnr(points)
    lo, hi = max(lo, ref_lo), min(hi, ref_hi)
    if hi <= lo:
        return []
    return [(float(q), float(np.exp(cur(q) - ref(q)))) for q in np.linspace(lo, hi, steps)]


def gap_by_quality(summary: list[dict], codec: str, reference: str) -> list[dict]:
    """Rows of dataset, PSNR and rate ratio of `codec` against `reference` (summary.csv's mean points)."""
    out = []
    for dataset in sorted({s["dataset"] for s in summary}):
        pick = lambda name: [s for s in summary if s["dataset"] == dataset and s["codec"] == name]
        for q, ratio in rate_ratios(pick(reference), pick(codec)):
            out.append({"dataset": dataset, "psnr": q, "rate_ratio": ratio})
    return out


def per_image_bd(rows: list[dict], codec: str, reference: str) -> list[dict]:
    """BD-rate (PSNR) of `codec` against `reference` on each image (per_image.csv rows), worst first."""
    curves = defaultdict(lambda: defaultdict(list))
    for r in rows:
        curves[(r["dataset"], r["image"])][r["codec"]].append(r)
    out = []
    for (dataset, image), by_codec in curves.items():
        ref, cur = by_codec.get(reference), by_codec.get(codec)
        if not ref or not cur:
            continue
        value = bd_rate([p["bpp"] for p in ref], [p["psnr"] for p in ref],
                        [p["bpp"] for p in cur], [p["psnr"] for p in cur])
        out.append({"dataset": dataset, "image": image, "bd_rate_psnr": value})
    return sorted(out, key=lambda r: np.inf if r["bd_rate_psnr"] is None else -r["bd_rate_psnr"])


def markdown(gaps: list[dict], images: list[dict], codec: str, reference: str, worst: int = 5) -> str:
    lines = [f"Rate of {codec} over {reference}'s at equal PSNR:", "",
             "| dataset | PSNR (dB) | rate ratio |", "|---|---|---|"]
    lines += [f"| {g['dataset']} | {g['psnr']:.1f} | {g['rate_ratio']:.2f}x |" for g in gaps]
    fmt = lambda v: "n/a (no overlap)" if v is None else f"{v:+.1f} %"
    for dataset in sorted({i["dataset"] for i in images}):
        rows = [i for i in images if i["dataset"] == dataset]
        shown = rows[:worst] + [None] + rows[-worst:] if len(rows) > 2 * worst else rows
        lines += ["", f"{dataset}: BD-rate of {codec} against {reference} per image, furthest behind first "
                      f"({len(rows)} images; per_image_bd.csv has all):", "", "| image | BD-rate (PSNR) |", "|---|---|"]
        lines += ["| … | |" if i is None else f"| {i['image']} | {fmt(i['bd_rate_psnr'])} |" for i in shown]
    return "\n".join(lines)
