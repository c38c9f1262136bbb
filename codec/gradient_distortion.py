"""A distortion term on the error's finite differences: it prices fine detail above smooth error.

Why: inspectors look for faint cracks 1-3 px wide, and plain MSE prices losing a 2-px, 8-level crack like an
error of the same energy spread smoothly over the sky. The squared error of the horizontal and vertical
differences weighs each spatial frequency of the error by sin²(ω/2) per direction: 0 for a smooth offset,
largest at the finest scale. Added to MSE (never replacing it), it raises the price of losing detail while
smooth errors cost what they did, so training should move bits towards thin structure.

Normalised so that white-noise error costs the same in both terms: E[(e(x+1) - e(x))²] = 2σ² per direction,
so the sum over the two directions is divided by 4. With weight w on the term, a smooth error costs its MSE,
white noise (1 + w)x, a lost 1-px line about (1 + w/2)x and a 2-px line (1 + w/4)x: the emphasis is on the
finest scale, grain and 1-px structure first.

Unlike flat-area weighting (session 25, flat_area_weighting.py), which moved bits between areas of a picture,
this moves them between scales.

Measured (session 38, `configs/ablation/gradient_weight_1.yaml`: lineage C branched at step 100,800 with weight 1
for 4,200 steps, against lineage C itself at step 105,000; both exported): it did not help. The branch spent 7-22 %
more bits at every λ and is +3.3 % BD-rate on the 13 blade frames (`bench-runs --recode`). At equal bits, faint
defects need as many bits or more (`bench-defects --against`: the control needs 0.95x the branch's bits on 4 drone
frames, cracks 0.99-1.01x, pits 1.09-1.12x; 0.94x on the synthetic shell). The term prices grain above 2-px lines,
so the extra bits likely went there (not measured).
"""
from __future__ import annotations

import torch


def gradient_squared_error(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per picture (N,): mean over pixels of (horizontal² + vertical² differences of the error) / 4."""
    err = x_hat - x
    dx = (err[..., :, 1:] - err[..., :, :-1]).square().mean(dim=(1, 2, 3))
    dy = (err[..., 1:, :] - err[..., :-1, :]).square().mean(dim=(1, 2, 3))
    return (dx + dy) / 4
