"""Integer prior networks (Ballé, Johnston & Minnen, ICLR 2019): the exact path from decoded latents
to distribution parameters.

Each trained float PriorNet is converted after training: per-output-channel integer weights, integer
biases, a per-channel integer multiplier and shift for the rounding division, clipped integer
activations. Outputs: an index into the fixed scale table and a mean on the grid 1/mean_grid.

Two exact ways to run a convolution, giving the same integers:
- reference: float64 on integer-valued arrays, exact because every partial sum stays far below 2**53
  (bounded below), so any BLAS and any thread count gives the same integers;
- 8-bit: uint8 activations times int8 weights summed in int32 (int8_gemm.py); used when a layer's weights
  fit 7 bits and its inputs 8 bits, as in models exported since 2026-11-22 (session 3); their rate cost
  against the older 12-bit layers is +0.01 % of the bits. The first layer's input, the decoded latent
  (|zq| < 2**15), goes through as two bytes (BytePlaneConv).

λ-conditioned priors (ModelConfig.prior_lambda): each layer's bias is a table with one row per λ index
(the float PriorLambda shifts at the grid's λ values, folded into the bias), and the decoder picks the row
of the λ index in the header, so the priors stay integer-exact.

Bounds: |weight| <= 2047 (63 now), 0 <= activation <= act_max (4095 in older models, 255 now),
|input| <= 2**15, at most 2048 taps per output: |accumulator| < 2**37, and accumulator * multiplier (< 2**20)
< 2**57 fits int64.
"""
from __future__ import annotations

import numba
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import int8_gemm
from .lambdas import GRID_SIZE, lambda_of_index

ACT_MAX = 4095     # the hidden activations' ceiling in models from before the 8-bit layers
INPUT_MAX = 1 << 15
MEAN_MAX = 1 << 23
MULT_BITS = 20
ACC_LIMIT = 1 << 42  # times a multiplier < 2**20 stays below 2**62


def conv2d_exact(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """x (Cin,H,W), w (Cout,Cin,k,k), both integer-valued float64; stride 1. Returns float64 sums."""
    cout, cin, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    ho, wo = xp.shape[1] - k + 1, xp.shape[2] - k + 1
    cols = sliding_window_view(xp, (k, k), axis=(1, 2)).transpose(1, 2, 0, 3, 4).reshape(ho * wo, cin * k * k)
    return (cols @ w.reshape(cout, -1).T).T.reshape(cout, ho, wo)


def hwc_matrix(w: np.ndarray) -> np.ndarray:
    """(Cout,Cin,k,k) -> (Cout, k*k*Cin), taps ordered as conv2d_int8 gathers them."""
    return w.transpose(0, 2, 3, 1).reshape(len(w), -1)


def conv2d_int8(x_hwc: np.ndarray, matmul, k: int) -> np.ndarray:
    """x (H,W,Cin) uint8, already padded; matmul an int8_gemm.Int8Matmul of hwc_matrix(w). int32 (Cout,Ho,Wo).
    Channels last, so that gathering the k x k windows copies whole runs of channels."""
    ho, wo = x_hwc.shape[0] - k + 1, x_hwc.shape[1] - k + 1
    cols = sliding_window_view(x_hwc, (k, k), axis=(0, 1)).transpose(0, 1, 3, 4, 2).reshape(ho * wo, -1)
    return matmul(cols).T.reshape(-1, ho, wo)


# Sub-pixel form of ConvTranspose2d(k=4, stride=2, padding=1): output phase a (row parity) draws on input
# rows (m-1, m) with kernel rows (3, 1) for a = 0, and rows (m, m+1) with kernel rows (2, 0) for a = 1;
# likewise for columns. Four 2x2 convolutions instead of one 4x4 over a zero-inserted grid: 4x fewer MACs.
_PHASE_TAPS = {0: (3, 1), 1: (2, 0)}


def phase_kernel(w: np.ndarray, a: int, b: int) -> np.ndarray:
    """The (Cout,Cin,2,2) kernel of output phase (a, b), from torch's ConvTranspose2d layout (Cin,Cout,4,4)."""
    kernel = w[:, :, list(_PHASE_TAPS[a])][:, :, :, list(_PHASE_TAPS[b])].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(kernel)


def conv_transpose2x_exact(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ConvTranspose2d(k=4, stride=2, padding=1) with torch's weight layout (Cin,Cout,4,4): output 2H x 2W,
    int64, by the float64 reference."""
    cin, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    out = np.empty((w.shape[1], 2 * h, 2 * wd), dtype=np.int64)
    for a in (0, 1):
        for b in (0, 1):
            kernel = phase_kernel(w, a, b).astype(np.float64)
            out[:, a::2, b::2] = conv2d_exact(xp[:, a:a + h + 1, b:b + wd + 1], kernel, 0)
    return out


class BytePlaneConv:
    """The transposed first layer on the 8-bit path. Its input, |zq| < 2**15, is split into two bytes,
    zq = 256 * (hi - 128) + lo, convolved together as uint8 rows of one product per phase. hi carries +128
    everywhere (its padding too), so its share is corrected by the exact constant 128 * sum(w)."""

    LIMIT = 1 << 15

    def __init__(self, w: np.ndarray):
        self._phases = {}
        for a in (0, 1):
            for b in (0, 1):
                k = phase_kernel(w, a, b)
                self._phases[a, b] = (int8_gemm.Int8Matmul(hwc_matrix(k)),
                                      128 * k.astype(np.int64).reshape(len(k), -1).sum(axis=1)[:, None, None])
        self.cout = w.shape[1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _, h, wd = x.shape
        hw = x.transpose(1, 2, 0)
        planes = np.concatenate([np.pad((hw >> 8) + 128, ((1, 1), (1, 1), (0, 0)), constant_values=128),
                                 np.pad(hw & 255, ((1, 1), (1, 1), (0, 0)))], axis=0).astype(np.uint8)
        rows = h + 2   # hi plane above, lo plane below: one product per phase for both
        out = np.empty((self.cout, 2 * h, 2 * wd), dtype=np.int64)
        for (a, b), (matmul, correction) in self._phases.items():
            both = conv2d_int8(planes[a:, b:b + wd + 1], matmul, 2)
            hi, lo = both[:, :h], both[:, rows:rows + h]
            out[:, a::2, b::2] = 256 * (hi.astype(np.int64) - correction) + lo
        return out


def requantise(acc: np.ndarray, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """clip(round((acc + bias) * mult / 2**shift), lo, hi) per output channel, in int64 (round half up)."""
    acc = np.ascontiguousarray(acc)
    out = np.empty(acc.shape, np.int64)
    _requantise(acc.reshape(len(acc), -1), bias.astype(np.int64), mult.astype(np.int64),
                shift.astype(np.int64), lo, hi, out.reshape(len(acc), -1))
    return out


@numba.njit(cache=True, nogil=True)
def _requantise(acc, bias, mult, shift, lo, hi, out):
    # one fused integer pass: numpy's int64 temporaries made this a third of the prior's time
    for c in range(acc.shape[0]):
        half = np.int64(1) << (shift[c] - 1)
        for i in range(acc.shape[1]):
            v = ((np.int64(acc[c, i]) + bias[c]) * mult[c] + half) >> shift[c]
            out[c, i] = min(max(v, lo), hi)


class IntegerPrior:
    """z_{l+1} * mean_grid (int64, C x h x w) -> (scale index int32, mean * mean_grid int64), C x 2h x 2w."""

    def __init__(self, layers: list[dict], num_scales: int, act_max: int = ACT_MAX, int8: bool = True):
        """int8=False keeps every layer on the float64 reference path (same integers, slower)."""
        self.layers = layers
        self.num_scales = num_scales
        self.act_max = act_max
        self._fast = [self._fast_conv(i, layer) if int8 and int8_gemm.available() else None
                      for i, layer in enumerate(layers)]

    def _fast_conv(self, i: int, layer: dict):
        # the first layer's input (the decoded latent, split into bytes) is checked per call
        w = layer["w"]
        taps = w.shape[0] * 4 if i == 0 else w[0].size   # a 2x2 phase of the transposed conv, or k x k
        if not int8_gemm.fits(w, int8_gemm.ACT_MAX if i == 0 else self.act_max, taps):
            return None
        return BytePlaneConv(w) if i == 0 else int8_gemm.Int8Matmul(hwc_matrix(w))

    @property
    def int8_layers(self) -> int:
        return sum(f is not None for f in self._fast)

    def _conv(self, i: int, h: np.ndarray) -> np.ndarray:
        w, fast = self.layers[i]["w"], self._fast[i]
        if i == 0:
            small = fast is not None and np.abs(h).max(initial=0) < BytePlaneConv.LIMIT
            return fast(h) if small else conv_transpose2x_exact(h, w)
        if fast is not None:
            return conv2d_int8(np.pad(h.transpose(1, 2, 0).astype(np.uint8), ((1, 1), (1, 1), (0, 0))), fast, 3)
        return conv2d_exact(h.astype(np.float64), w.astype(np.float64), pad=1)

    @property
    def lambda_conditioned(self) -> bool:
        return self.layers[0]["b"].ndim == 2

    def _bias(self, layer: dict, lambda_index) -> np.ndarray:
        if layer["b"].ndim == 1:
            return layer["b"]
        if lambda_index is None:
            raise ValueError("this prior is conditioned on λ: it needs the λ index")
        return layer["b"][lambda_index]

    def __call__(self, zq: np.ndarray, out_hw, lambda_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        u, mean = self.outputs(zq, out_hw, lambda_index)
        return np.clip(u, 0, self.num_scales - 1).astype(np.int32), mean

    def outputs(self, zq: np.ndarray, out_hw, lambda_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scale index before it is clipped to the table, mean * mean_grid), int64: the spatial context
        adds its corrections to these, as the float model does."""
        h = np.clip(zq, -INPUT_MAX, INPUT_MAX)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            lo, hi = (0, self.act_max) if i < last else (-MEAN_MAX, MEAN_MAX)
            h = requantise(self._conv(i, h), self._bias(layer, lambda_index), layer["mult"], layer["shift"], lo, hi)
        q = h[:, : out_hw[0], : out_hw[1]]
        c = q.shape[0] // 2
        return q[:c], q[c:]

    def check_bounds(self) -> None:
        """Refuse a model whose worst-case accumulator could leave the exact range (see module doc)."""
        if not 1 <= self.act_max <= ACT_MAX:
            raise ValueError(f"integer prior activation ceiling {self.act_max} is outside 1..{ACT_MAX}")
        in_max = INPUT_MAX
        for i, layer in enumerate(self.layers):
            w = np.abs(layer["w"].astype(np.int64))
            out_axis = 1 if i == 0 else 0
            per_out = np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1).sum(axis=1)
            b = np.abs(layer["b"].astype(np.int64))
            bound = per_out * in_max + (b.max(axis=0) if b.ndim == 2 else b)
            if bound.max() >= ACC_LIMIT or layer["mult"].max() >= (1 << MULT_BITS) or layer["shift"].min() < 1:
                raise ValueError(f"integer prior layer {i} can leave the exact range")
            in_max = self.act_max

    def arrays(self, prefix: str) -> dict:
        out = {f"{prefix}act_max": np.array(self.act_max, np.int32)}
        for i, layer in enumerate(self.layers):
            for key, value in layer.items():
                out[f"{prefix}{i}/{key}"] = value
        return out

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str, num_scales: int, int8: bool = True) -> "IntegerPrior":
        layers, i = [], 0
        while f"{prefix}{i}/w" in arrays:
            layers.append({k: arrays[f"{prefix}{i}/{k}"] for k in ("w", "b", "mult", "shift")})
            i += 1
        if not layers:
            raise ValueError(f"model has no integer prior under {prefix}")
        if len({layer["b"].ndim for layer in layers}) != 1 or layers[0]["b"].ndim == 2 and \
                any(layer["b"].shape[0] != GRID_SIZE for layer in layers):
            raise ValueError(f"integer prior under {prefix}: bias tables must all have {GRID_SIZE} λ rows or none")
        act_max = int(arrays.get(f"{prefix}act_max", ACT_MAX))   # older models: no key, 12-bit activations
        prior = cls(layers, num_scales, act_max, int8)
        prior.check_bounds()
        return prior


def _multiplier(ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer (mult, shift) with mult / 2**shift ~ ratio and 2**(MULT_BITS-1) <= mult < 2**MULT_BITS."""
    ratio = np.maximum(ratio, 1e-30)
    shift = (MULT_BITS - 1 - np.floor(np.log2(ratio))).astype(np.int64)
    if np.any(shift < 1) or np.any(shift > 62):
        raise ValueError("requantisation ratio out of range")
    mult = np.round(ratio * np.exp2(shift)).astype(np.int64)
    fix = mult >= (1 << MULT_BITS)
    mult[fix] >>= 1
    shift[fix] -= 1
    return mult, shift


def _shift_tables(prior_lambda) -> list:
    """Per layer, the PriorLambda shifts at every grid λ: (GRID_SIZE, width) float64; [] without them."""
    import torch

    if prior_lambda is None:
        return []
    with torch.no_grad():
        lam = torch.tensor([lambda_of_index(i) for i in range(GRID_SIZE)], dtype=torch.float64)
        return [s[:, :, 0, 0].double().numpy() for s in prior_lambda(lam)]


def convert(prior_net, calibration_inputs, mean_grid: int, num_scales: int, prior_lambda=None) -> IntegerPrior:
    """Convert a trained float PriorNet using decoded latents from real images to set activation ranges.

    calibration_inputs: list of (z_{l+1} float tensor (1,C,h,w) as the decoder sees it, λ).
    prior_lambda: the PriorNet's PriorLambda for λ-conditioned models (bias tables per λ index), or None.
    """
    import torch
    import torch.nn.functional as F

    convs = list(prior_net.layers)
    act_max = [0.0] * (len(convs) - 1)
    with torch.no_grad():
        for z, lam in calibration_inputs:
            shifts = prior_lambda(torch.tensor([float(lam)])) if prior_lambda is not None else [0.0] * len(convs)
            h = z
            for i, conv in enumerate(convs[:-1]):
                h = F.relu(conv(h) + shifts[i])
                act_max[i] = max(act_max[i], float(h.max()))
    shift_tables = _shift_tables(prior_lambda)
    in_scale = 1.0 / mean_grid
    layers = []
    for i, conv in enumerate(convs):
        b = conv.bias.detach().double().numpy()
        if shift_tables:   # one bias row per λ index
            b = b[None, :] + shift_tables[i]
        last = i == len(convs) - 1
        out_scale = output_scales(conv.out_channels, mean_grid) if last else hidden_scale(act_max[i])
        out_axis = 1 if i == 0 else 0  # ConvTranspose2d stores (Cin, Cout, k, k)
        layers.append(integer_layer(conv.weight.detach().double().numpy(), b, out_axis, in_scale, out_scale))
        in_scale = out_scale if not last else None
    return IntegerPrior(layers, num_scales, int8_gemm.ACT_MAX)


def hidden_scale(act_max: float) -> float:
    """A hidden layer's unit: its largest activation over the calibration set maps to the 8-bit ceiling."""
    return max(act_max, 1e-6) / int8_gemm.ACT_MAX


def output_scales(channels: int, mean_grid: int) -> np.ndarray:
    """The last layer's outputs: scale indices in units of 1, then means in units of 1/mean_grid."""
    c = channels // 2
    return np.concatenate([np.ones(c), np.full(c, 1.0 / mean_grid)])


def integer_layer(w: np.ndarray, b: np.ndarray, out_axis: int, in_scale: float, out_scale) -> dict:
    """One float layer as integers: 7-bit weights per output channel, integer bias (a row per λ index when
    b is 2-D) and the multiplier and shift that take the accumulator to the output's scale."""
    wmax = np.abs(np.moveaxis(w, out_axis, 0)).reshape(w.shape[out_axis], -1).max(axis=1)
    w_scale = np.where(wmax > 0, wmax / int8_gemm.WEIGHT_MAX, 1.0)
    shape = [1] * w.ndim
    shape[out_axis] = -1
    w_int = np.round(w / w_scale.reshape(shape)).astype(np.int16)
    b_int = np.round(b / (w_scale * in_scale)).astype(np.int64)
    if b_int.ndim == 2 and np.abs(b_int).max() < 2 ** 31:
        b_int = b_int.astype(np.int32)   # half the file size of the 256-row tables
    mult, shift = _multiplier(w_scale * in_scale / np.broadcast_to(out_scale, w_scale.shape))
    return {"w": w_int, "b": b_int, "mult": mult, "shift": shift.astype(np.int8)}
