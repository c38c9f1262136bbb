"""Integer prior networks (Ballé, Johnston & Minnen, ICLR 2019): the exact path from decoded latents
to distribution parameters.

Each trained float PriorNet is converted after training: per-output-channel integer weights, integer
biases, a per-channel integer multiplier and shift for the rounding division, clipped integer
activations. Convolutions run in float64 on integer-valued arrays, exact because every partial sum
stays far below 2**53 (bounded below), so any BLAS and any thread count gives the same integers.
Outputs: an index into the fixed scale table and a mean on the grid 1/mean_grid.

Bounds: |weight| <= 2047, 0 <= activation <= 4095, |input| <= 2**15, at most 2048 taps per output:
|accumulator| < 2**37, and accumulator * multiplier (< 2**20) < 2**57 fits int64.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

WEIGHT_MAX = 2047
ACT_MAX = 4095
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


# Sub-pixel form of ConvTranspose2d(k=4, stride=2, padding=1): output phase a (row parity) draws on input
# rows (m-1, m) with kernel rows (3, 1) for a = 0, and rows (m, m+1) with kernel rows (2, 0) for a = 1;
# likewise for columns. Four 2x2 convolutions instead of one 4x4 over a zero-inserted grid: 4x fewer MACs.
_PHASE_TAPS = {0: (3, 1), 1: (2, 0)}


def conv_transpose2x_exact(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ConvTranspose2d(k=4, stride=2, padding=1) with torch's weight layout (Cin,Cout,4,4): output 2H x 2W."""
    cin, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = np.empty((w.shape[1], 2 * h, 2 * wd), dtype=np.float64)
    for a, rows in _PHASE_TAPS.items():
        for b, cols in _PHASE_TAPS.items():
            kernel = w[:, :, list(rows)][:, :, :, list(cols)].transpose(1, 0, 2, 3)
            window = xp[:, a:a + h + 1, b:b + wd + 1]
            out[:, a::2, b::2] = conv2d_exact(window, np.ascontiguousarray(kernel), pad=0)
    return out


def requantise(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """round(acc * mult / 2**shift) per output channel, in int64 (round half up)."""
    a = acc.astype(np.int64)
    m = mult.astype(np.int64)[:, None, None]
    s = shift.astype(np.int64)[:, None, None]
    return (a * m + (np.int64(1) << (s - 1))) >> s


class IntegerPrior:
    """z_{l+1} * mean_grid (int64, C x h x w) -> (scale index int32, mean * mean_grid int64), C x 2h x 2w."""

    def __init__(self, layers: list[dict], num_scales: int):
        self.layers = layers
        self.num_scales = num_scales

    def __call__(self, zq: np.ndarray, out_hw) -> tuple[np.ndarray, np.ndarray]:
        h = np.clip(zq, -INPUT_MAX, INPUT_MAX).astype(np.float64)
        for i, layer in enumerate(self.layers):
            w = layer["w"].astype(np.float64)
            acc = conv_transpose2x_exact(h, w) if i == 0 else conv2d_exact(h, w, pad=1)
            acc += layer["b"].astype(np.float64)[:, None, None]
            q = requantise(acc, layer["mult"], layer["shift"])
            if i < len(self.layers) - 1:
                h = np.clip(q, 0, ACT_MAX).astype(np.float64)
        q = q[:, : out_hw[0], : out_hw[1]]
        c = q.shape[0] // 2
        index = np.clip(q[:c], 0, self.num_scales - 1).astype(np.int32)
        mean = np.clip(q[c:], -MEAN_MAX, MEAN_MAX)
        return index, mean

    def check_bounds(self) -> None:
        """Refuse a model whose worst-case accumulator could leave the exact range (see module doc)."""
        in_max = INPUT_MAX
        for i, layer in enumerate(self.layers):
            w = np.abs(layer["w"].astype(np.int64))
            out_axis = 1 if i == 0 else 0
            per_out = np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1).sum(axis=1)
            bound = per_out * in_max + np.abs(layer["b"])
            if bound.max() >= ACC_LIMIT or layer["mult"].max() >= (1 << MULT_BITS) or layer["shift"].min() < 1:
                raise ValueError(f"integer prior layer {i} can leave the exact range")
            in_max = ACT_MAX

    def arrays(self, prefix: str) -> dict:
        out = {}
        for i, layer in enumerate(self.layers):
            for key, value in layer.items():
                out[f"{prefix}{i}/{key}"] = value
        return out

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str, num_scales: int) -> "IntegerPrior":
        layers, i = [], 0
        while f"{prefix}{i}/w" in arrays:
            layers.append({k: arrays[f"{prefix}{i}/{k}"] for k in ("w", "b", "mult", "shift")})
            i += 1
        if not layers:
            raise ValueError(f"model has no integer prior under {prefix}")
        prior = cls(layers, num_scales)
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


def convert(prior_net, calibration_inputs, mean_grid: int, num_scales: int) -> IntegerPrior:
    """Convert a trained float PriorNet using decoded latents from real images to set activation ranges.

    calibration_inputs: list of float tensors z_{l+1} (1,C,h,w) as the decoder sees them.
    """
    import torch
    import torch.nn.functional as F

    convs = list(prior_net.layers)
    act_max = [0.0] * (len(convs) - 1)
    with torch.no_grad():
        for z in calibration_inputs:
            h = z
            for i, conv in enumerate(convs[:-1]):
                h = F.relu(conv(h))
                act_max[i] = max(act_max[i], float(h.max()))
    in_scale = 1.0 / mean_grid
    layers = []
    for i, conv in enumerate(convs):
        w = conv.weight.detach().double().numpy()
        b = conv.bias.detach().double().numpy()
        out_axis = 1 if i == 0 else 0  # ConvTranspose2d stores (Cin, Cout, k, k)
        wmax = np.abs(np.moveaxis(w, out_axis, 0)).reshape(w.shape[out_axis], -1).max(axis=1)
        w_scale = np.where(wmax > 0, wmax / WEIGHT_MAX, 1.0)
        shape = [1] * 4
        shape[out_axis] = -1
        w_int = np.round(w / w_scale.reshape(shape)).astype(np.int16)
        b_int = np.round(b / (w_scale * in_scale)).astype(np.int64)
        if i < len(convs) - 1:
            out_scale = np.full_like(w_scale, max(act_max[i], 1e-6) / ACT_MAX)
        else:
            c = w_scale.size // 2
            out_scale = np.concatenate([np.ones(c), np.full(c, 1.0 / mean_grid)])
        mult, shift = _multiplier(w_scale * in_scale / out_scale)
        layers.append({"w": w_int, "b": b_int, "mult": mult, "shift": shift.astype(np.int8)})
        in_scale = out_scale[0]
    return IntegerPrior(layers, num_scales)
