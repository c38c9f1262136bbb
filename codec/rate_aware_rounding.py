"""Rate-aware rounding of z1: the encoder's choice of integers, as video encoders' RDOQ does for coefficients.

Plain rounding puts each residual r = y - mean at the nearest integer. Near the edge of a bin, the integer
one step closer to the prior mean adds little latent error but can save many bits: at a small scale
(σ 0.2) a residual of 1 costs ~8.5 bits and a 0 almost none. So a residual moves one step towards the mean
when the squared latent error this adds is below BETA times the bits it saves, the bits read from the very
CDF tables the coder uses.

Why one β for every λ: the latents carry the rate gain sqrt(λ/724), so a latent error e is an image error
of about e²·724/λ (times the synthesis' own gain), which the training loss weighs by λ: to first order the
trade between latent error and bits does not depend on λ. Probing the synthesis (session 20) found its gain
per unit latent error growing faster than that with λ, and differing between channels, but weighting the
rounding by either measured gain did no better (README, "Rate-aware rounding").

Only the encoder changes: the integers it picks are coded and decoded as before, so the bitstream format, the
model id and every decoder stay as they are. Only z1 is treated: it carries nearly all the bits, and the
upper levels steer the priors of everything below them.

β was chosen in session 20 on photos the benchmark does not use (BD-rate against plain rounding, real files,
model 8bfbed17, λ 64-8192): on 10 `blades/dtu_nordtank` photos β 0.01 gave -0.92 %, 0.02 -1.14 %; on 6 general
`train/` photos +0.06 % and +0.47 %. 0.01 keeps most of the blade gain and costs general photos nothing.
It costs the encoder ~0.02 s/MP (entropy coding 0.275 -> 0.294 s/MP on a blade frame, one thread).
Tried beside it and dropped (README, "Rate-aware rounding"): the same shift for every residual (a deadzone)
lost 2-26 %, and moving the decoder's values towards the mean (reconstruction offsets) lost 11 %.

It is off by default since session 24: the bits it saves are the faint detail inspectors look for. On
`bench-defects` (faint cracks and pits drawn on photos) β 0.01 needs 7-9 % more bits than plain rounding before
a defect keeps half its contrast (4 `dtu_nordtank` photos: +8.6 %, 4 `drone_frames`: +7.7 %, the synthetic
shell +7.1 %). Restricting it to spare the detail (moves only where the prior's scale is at least 0.3-1.2, or
only moves saving at most 4-7 bits) took its PSNR gain with it (+0.03 to +0.26 % BD-rate against plain
rounding on 8 `dtu_nordtank` photos): the gain is the isolated costly ±1s of flat areas, which is what a faint
crack is to the encoder. PSNR_BETA keeps the PSNR-best setting for those who choose it (`--beta`, edge
`rate.rounding_beta`).
"""
from __future__ import annotations

import numpy as np

from .errors import CodecError
from .rans import PREC

PSNR_BETA = 0.01     # the best β on PSNR (session 20)
DEFAULT_BETA = 0.0   # plain rounding: faint defects keep their bits (session 24)


BETA_MAX = 1.0        # past it nearly every small residual would be zeroed: surely a typo


def check_beta(beta: float) -> None:
    if not 0 <= beta <= BETA_MAX:
        raise CodecError(f"rate-aware rounding β {beta:g} is outside [0, {BETA_MAX:g}] (0: plain rounding, "
                         f"{PSNR_BETA:g}: best on PSNR)")


def symbol_bits(cdfs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(tables, maxlen) float64: what each symbol of each table costs, in bits; inf past the support (the
    escape symbol and beyond), so that those residuals are never moved."""
    freq = np.diff(cdfs.astype(np.int64), axis=1).astype(np.float64)
    bits = PREC - np.log2(np.maximum(freq, 1.0))
    support = np.arange(bits.shape[1])[None, :] < (lengths[:, None] - 1)
    return np.where(support, bits, np.inf)


def towards_mean(t: np.ndarray, r: np.ndarray, table_idx: np.ndarray, bits: np.ndarray, offsets: np.ndarray,
                 beta: float) -> np.ndarray:
    """t: residuals before rounding, r: the same rounded to the nearest integer (int64), table_idx: each one's
    CDF table, bits: symbol_bits. Returns r with the residuals that pay their way moved one step (int64)."""
    toward = r - np.sign(r)
    t = t.astype(np.float64)
    added_error = (t - toward) ** 2 - (t - r) ** 2
    with np.errstate(invalid="ignore"):     # inf - inf (both past the support) is nan: never moved
        saved = _cost(bits, offsets, table_idx, r) - _cost(bits, offsets, table_idx, toward)
    move = (r != 0) & np.isfinite(saved) & (added_error < beta * saved)
    return np.where(move, toward, r)


def _cost(bits, offsets, table_idx, r):
    symbol = r - offsets[table_idx]
    inside = (symbol >= 0) & (symbol < bits.shape[1])
    return np.where(inside, bits[table_idx, np.clip(symbol, 0, bits.shape[1] - 1)], np.inf)
