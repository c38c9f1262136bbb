"""Pixel weights for the training distortion that favour flat areas over texture.

Why: inspectors look for faint cracks and pits on a blade's smooth shell, and plain MSE prices a lost
12-level, 1-px crack like the same error spread over grass. `bench-defects` showed the codec dropping such
defects first (session 24). Weighting each pixel's squared error by the inverse of the local variance of the
original (the masking that SSIM's structure term and perceptual codecs model) makes an error on a smooth
shell cost more than one in texture, so training learns to spend bits, and synthesis capacity, where faint
structure on a flat surface lives.

The weights are normalised to mean 1 in every picture, so λ keeps its meaning: a picture's bits move
between its areas, not between pictures. `strength` mixes them with plain MSE's uniform weights.

Measured (session 25, `configs/ablation/flat_weight_0.5.yaml`: 3,000 steps from the main line's step 120,600
with the same crops, against the main line itself at step 123,600): it did not help. Half-contrast bpp of the
faint defects over the plain-MSE model's (`bench-defects --against`): shell 1.10x, 4 `dtu_nordtank` photos
0.99x, 4 `drone_frames` 1.05x; BD-rate on the 13 blade validation frames +1.04 %. The model spent 7-9 % fewer
bits at every λ, taken mostly from texture, and the flat areas did not turn them into kept defects: what
loses a faint crack is z1's rounding and the transforms' reach (session 24), not how MSE prices it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WINDOW = 15               # px: wide enough that a sparse defect (a 1-px crack is 1/15 of it) raises the local
                          # variance far less than dense texture (grass) does
NOISE_FLOOR = 6 / 255     # σ at which the weight halves: a 12-level 1-px crack (σ ~3 levels over the window)
                          # keeps ~0.8 of a flat area's weight, grass (σ ~15) ~0.15
MAX_WEIGHT = 8.0          # cap per pixel (before the last normalisation), so a few flat pixels in a textured
                          # crop cannot take the whole loss


def local_variance(x: torch.Tensor, window: int = WINDOW) -> torch.Tensor:
    """Variance of the channel-mean luma over a window around each pixel: (N, 1, H, W). In float64: E[x²] - E[x]²
    in float32 leaves ~1e-6 on a flat area: σ of a quarter grey level that is not there."""
    luma = x.double().mean(dim=1, keepdim=True)
    pad = window // 2
    padded = F.pad(luma, (pad, pad, pad, pad), mode="replicate")
    mean = F.avg_pool2d(padded, window, stride=1)
    mean_sq = F.avg_pool2d(padded.square(), window, stride=1)
    return (mean_sq - mean.square()).clamp_min(0.0).to(x.dtype)


def flat_area_weights(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-pixel weights (N, 1, H, W), mean 1 in each picture: (1 - strength) + strength · masking weight."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"flat-area weighting strength must be in [0, 1], got {strength}")
    with torch.no_grad():
        masking = 1.0 / (local_variance(x) + NOISE_FLOOR ** 2)
        masking = masking / masking.mean(dim=(1, 2, 3), keepdim=True)
        masking = masking.clamp_max(MAX_WEIGHT)
        masking = masking / masking.mean(dim=(1, 2, 3), keepdim=True)
        return (1.0 - strength) + strength * masking
