"""Give a trained model more z1 channels without losing what it has learned.

z1 is all the synthesis sees, so its channel count caps the quality at high rates: C1 values per 16x16x3
pixels. With C1 = 128 the unquantised latents of the session-7 model reconstructed Kodak at 33.1 dB and
blade frames at 43.5 dB at λ 8192, about what keeping 128 principal components of each 16x16 patch gives
(33.9 and 43.9 dB; 192 components: 38.1 and 48.0).

The widened model starts as the same function, bits included: the analysis writes the new channels with
zero weights, so they are 0, and their prior starts at the smallest scale of the table, where a 0 costs
almost nothing; the latent chain (z1 -> z2) and the checkerboard context read them with zero weights. The
synthesis reads them with small random weights (a tenth of the trained ones' spread), which changes nothing
while they are 0 but gives them a gradient: through the straight-through rounding a channel's gradient is
the synthesis weights times the image error, so with zero weights on both sides nothing would ever move.
A channel is meant to grow where the distortion it saves is worth its bits.

Measured in session 8 (widening 128 -> 192 at step 32,000, configs/ablation/z1_192.yaml, training log on
the same crops and λ as the narrow twin): neither start has paid off within 2,000 steps.
- New analysis weights as large as the trained ones (the first try): +0.9 bpp at the start, still +0.06
  bpp and +4 % training loss 1,500 steps later, PSNR no better.
- Switched off (this start): the training estimate charges a 0 under uniform noise about 0.2 bits at the
  smallest scale (+0.041 bpp for 64 channels; real coding pays ~0), and the channels stayed off: after
  2,100 steps their analysis weights had a spread of 0.0004 (the old ones 0.017), their scale index was
  still 0 and the PSNR equal to the twin's. A latent of 1 at the smallest scale costs ~18 bits, a wall
  the straight-through gradient does not climb.
Session 9, half on (widen_analysis_gain 0.3, widen_prior_index 8; configs/ablation/z1_*_lr1e-4.yaml), at lr
1e-4 from step 37,600 beside the narrow twin: training loss +6 % over the first 250 steps, then a steady +3 %
(+0.04 bpp, about what 64 channels of mostly-zero latents at index 8 cost; PSNR -0.03 dB) to step 39,700.
On 12 fixed crops (rounded latents) both arms were equal within 1 % rate and 0.03 dB at every λ
(λ 8192: 1.025 bpp / 32.17 dB wide, 1.033 / 32.20 narrow). The new channels were in use (22 % of their
elements nonzero at λ 8192, 1.3 % at λ 256) but their synthesis weights stayed small (spread 0.003 against
0.020) and the prior's index stayed at 8 (its bias moves ~1e-4 per step). Stopped there.
A wider z1 probably has to be trained in from further back (or from scratch), not grafted on.
"""
from __future__ import annotations

import torch

# Tensor name -> (axis holding z1's channels, layout along it): "single" is [C1], "pair" is
# [head..., scale index C1, mean C1] (a prior output: its two halves grow separately).
LAYOUT = {
    "analysis.image.convs.3.weight": (0, "single"),
    "analysis.image.convs.3.bias": (0, "single"),
    "analysis.latent.0.conv1.weight": (1, "single"),
    "synthesis.convs.0.weight": (0, "single"),
    "priors.0.layers.2.weight": (0, "pair"),
    "priors.0.layers.2.bias": (0, "pair"),
    "prior_lambda.0.net.2.weight": (0, "pair"),   # head: the shifts of the prior's two hidden layers
    "prior_lambda.0.net.2.bias": (0, "pair"),
    "context.hidden.weight": (1, "single"),
    "context.out.weight": (0, "pair"),
    "context.out.bias": (0, "pair"),
}
SYNTHESIS = "synthesis.convs.0.weight"   # reads z1: the only new weights that do not start at zero
SYNTHESIS_GAIN = 0.1
ANALYSIS = "analysis.image.convs.3.weight"   # writes z1
PRIOR_OUT = "priors.0.layers.2.bias"   # [scale index C1, mean C1]


def widen_z1(state: dict, old_c1: int, new_c1: int, seed: int = 0, analysis_gain: float = 0.0,
             prior_index: float = 0.0) -> dict:
    """A state dict of a model with old_c1 z1 channels -> one for new_c1 (> old_c1) channels.

    The defaults switch the new channels off (the same function). analysis_gain > 0 writes them with random
    analysis weights of that fraction of the trained ones' spread, prior_index > 0 starts their prior at that
    index of the scale table: a start between off and fully on, where leaving 0 costs a few bits, not ~18.
    """
    if new_c1 <= old_c1:
        raise ValueError(f"z1 can only grow: {old_c1} -> {new_c1} channels")
    generator = torch.Generator().manual_seed(seed)
    out = dict(state)
    for name, (axis, layout) in LAYOUT.items():
        if name in state:
            out[name] = _grow(state[name], axis, _segments(layout, state[name].shape[axis], old_c1, new_c1))
    for name, gain in ((SYNTHESIS, SYNTHESIS_GAIN), (ANALYSIS, analysis_gain)):
        w = state[name]
        rows = torch.randn((new_c1 - old_c1, *w.shape[1:]), generator=generator) * (gain * w.float().std())
        out[name][old_c1:] = rows.to(w.dtype)
    out[PRIOR_OUT][old_c1:new_c1] = prior_index   # 0: the table's smallest scale
    return out


def _segments(layout: str, length: int, old_c1: int, new_c1: int) -> list:
    """(old length, new length) of each run of the axis, in order."""
    grown = [(old_c1, new_c1)] * (2 if layout == "pair" else 1)
    head = length - old_c1 * len(grown)
    if head < 0 or layout == "single" and head:
        raise ValueError(f"an axis of {length} does not hold {len(grown)} x {old_c1} z1 channels")
    return ([(head, head)] if head else []) + grown


def _grow(t: torch.Tensor, axis: int, segments: list) -> torch.Tensor:
    """Zeros where the axis grew; each old run copied to the start of its new run."""
    shape = list(t.shape)
    shape[axis] = sum(n for _, n in segments)
    out = torch.zeros(shape, dtype=t.dtype)
    src = dst = 0
    for old, new in segments:
        out.narrow(axis, dst, old).copy_(t.narrow(axis, src, old))
        src, dst = src + old, dst + new
    return out
