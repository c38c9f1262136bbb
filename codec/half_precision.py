"""What a half-precision engine does to the folded image analysis: float16 storage, emulated on the CPU.

TensorRT's FP16 engine, and the layers an INT8 engine leaves unquantised, keep every tensor between operators
and every weight in float16 and accumulate in float32. The fold (inference_analysis.py) can put values where
float16 loses them: it scales the rows of the Conv before a GDN channel by that channel's γ/β, so a channel
that trained linear (γ near 0) writes a Softsign input of ~1e-7, among float16's subnormals (spacing 6e-8).
The bundled model c126c68a, exported before the γ floor of activation_equalisation.py, had such channels in
its third GDN: emulated here on 3 drone frames (480x848), y moved by 5 % (relative L2), 15-19 % of the rounded
latents at λ 8192 changed, and λ 8192 coded at 0.627 bpp / 40.01 dB instead of 0.464 / 41.70 (session 34).
Re-exported under the γ floor (reach 1e-3; bundled since session 35 as e888c596) it changes 0.09-0.11 % of them
and codes λ 8192 at 0.464 / 41.71 in float16 as in float32; lineage C's exports change 0.05-0.07 %.

The emulation rounds the folded analysis's weights and each tensor an operator writes to float16 and keeps the
arithmetic in float32, as those kernels accumulate. It does not cover the latent chain (hyper analysis, priors),
whose inputs are y itself, nor what TensorRT's fusions keep in float32: there is no GPU here to measure that.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from . import export_model
from .inference_analysis import InferenceImageAnalysis, foldable

MIN_AGREEMENT = 0.99   # rounded latents the float16 analysis must leave unchanged (healthy exports: > 0.998)


def to_half(t: torch.Tensor) -> torch.Tensor:
    """t stored in float16, computed on in float32."""
    return t.half().float()


def half_precision_copy(fold: InferenceImageAnalysis) -> InferenceImageAnalysis:
    """fold with every weight and buffer (the FiLM networks' too) rounded to float16."""
    half = copy.deepcopy(fold)
    with torch.no_grad():
        for t in [*half.parameters(), *half.buffers()]:
            t.copy_(to_half(t))
    return half


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """An RGB photo as the analysis takes it, its centre cut to multiples of 16 px (the codec pads; the cut is
    simpler)."""
    if min(rgb.shape[:2]) < 16:
        raise ValueError(f"a {rgb.shape[1]}x{rgb.shape[0]} photo is under 16 px on a side")
    return export_model.image_tensor(rgb, max_side=max(rgb.shape[:2]))


@torch.no_grad()
def half_storage_runs(image, photos, lambdas) -> list:
    """Per photo (RGB arrays) and λ: the share of rounded latents y that float16 storage leaves unchanged, and
    y's relative error, for image (an ImageAnalysis whose GDNs fold)."""
    fold = InferenceImageAnalysis(image).eval()
    half = half_precision_copy(fold)
    runs = []
    for k, rgb in enumerate(photos):
        x = image_tensor(rgb)
        for lam in lambdas:
            lam_t = torch.tensor([float(lam)])
            y, y16 = fold(x, lam_t), half(x, lam_t, store=to_half)
            runs.append({"photo": k, "lambda": float(lam),
                         "agreement": float((y16.round() == y.round()).float().mean()),
                         "relative_error": float((y16 - y).norm() / y.norm().clamp_min(1e-12))})
    return runs


def check(image, photos, lambdas=(256.0, 8192.0)) -> dict:
    """build_engine's check: float16 storage moves at most 1 - MIN_AGREEMENT of the rounded latents of the
    folded analysis on every photo and λ (λ 8192 is where it showed first: its latents are the finest)."""
    if not foldable(image):
        return {"passed": True, "folded": False,
                "detail": "the analysis does not fold (GDNs not diagonal or a γ at 0): not emulated"}
    runs = half_storage_runs(image, photos, lambdas)
    worst = min(r["agreement"] for r in runs)
    result = {"passed": worst >= MIN_AGREEMENT, "folded": True, "min_agreement_required": MIN_AGREEMENT,
              "worst_agreement": worst, "runs": runs}
    if not result["passed"]:
        result["error"] = (f"in float16 storage the folded analysis changes {1 - worst:.1%} of the rounded latents "
                           f"(at most {1 - MIN_AGREEMENT:.0%}): re-export the model (python -m codec export-model) "
                           "so the γ floor lifts its linear GDN channels out of float16's subnormals")
    return result
