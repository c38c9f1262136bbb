"""Integer CDF tables for the rANS coder, built once when a model is exported and stored in it.

Table t < num_scales is a zero-mean Gaussian (convolved with a unit box) of scale scale_table[t]; the
last table is the fixed standard logistic prior that models before the learned top prior use for zL.
Each table covers a finite support
plus one escape symbol. Decoders never rebuild these from floats: they read the stored integers.
"""
from __future__ import annotations

import math

import numpy as np

from .rans import TOTAL

GAUSS_TAIL_SIGMAS = 5.0
LOGISTIC_SUPPORT = 16


def _gaussian_pmf(scale: float, half: int) -> np.ndarray:
    k = np.arange(-half, half + 1, dtype=np.float64)
    cdf = lambda v: 0.5 * np.vectorize(math.erfc)(-v / (scale * math.sqrt(2.0)))
    return cdf(k + 0.5) - cdf(k - 0.5)


def _logistic_pmf(half: int) -> np.ndarray:
    k = np.arange(-half, half + 1, dtype=np.float64)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))
    return sig(k + 0.5) - sig(k - 0.5)


def quantise_pmf(pmf: np.ndarray) -> np.ndarray:
    """Integer frequencies summing to TOTAL, every one >= 1; the last entry is the escape symbol.

    The escape gets the mass outside the support (at least 1). Rounding error is settled on the
    most probable symbols so the small ones keep their relative sizes.
    """
    escape = max(0.0, 1.0 - pmf.sum())
    probs = np.append(pmf, escape)
    n = probs.size
    freq = np.maximum(1, np.floor(probs * (TOTAL - n)).astype(np.int64) + 1)
    diff = TOTAL - int(freq.sum())
    order = np.argsort(-probs, kind="stable")
    i = 0
    while diff != 0:
        j = order[i % n]
        step = 1 if diff > 0 else -1
        if freq[j] + step >= 1:
            freq[j] += step
            diff -= step
        i += 1
    return freq


def build_tables(scales) -> dict:
    """Returns cdfs (T, maxlen+1) int32, lengths (T,) int32 and offsets (T,) int32."""
    freqs, offsets = [], []
    for s in scales:
        half = max(1, int(math.ceil(s * GAUSS_TAIL_SIGMAS)))
        freqs.append(quantise_pmf(_gaussian_pmf(s, half)))
        offsets.append(-half)
    freqs.append(quantise_pmf(_logistic_pmf(LOGISTIC_SUPPORT)))
    offsets.append(-LOGISTIC_SUPPORT)
    maxlen = max(f.size for f in freqs)
    cdfs = np.full((len(freqs), maxlen + 1), TOTAL, dtype=np.int32)
    for t, f in enumerate(freqs):
        cdfs[t, 0] = 0
        cdfs[t, 1: f.size + 1] = np.cumsum(f)
    lengths = np.array([f.size for f in freqs], dtype=np.int32)
    return {"cdfs": cdfs, "lengths": lengths, "offsets": np.array(offsets, dtype=np.int32)}


def check_tables(cdfs, lengths, offsets) -> None:
    """Validate stored tables once at load: a broken model file must not reach the coder."""
    if cdfs.ndim != 2 or lengths.shape != offsets.shape or lengths.shape[0] != cdfs.shape[0]:
        raise ValueError("CDF table shapes disagree")
    for t, n in enumerate(lengths):
        row = cdfs[t, : n + 1]
        if n < 2 or n >= cdfs.shape[1] or row[0] != 0 or row[-1] != TOTAL or np.any(np.diff(row) < 1):
            raise ValueError(f"CDF table {t} is malformed")
