"""The checkerboard spatial context of z1 as an exact integer network (the float one: model.CheckerboardContext).

z1 is coded in two halves. The anchors ((i + j) even, in the tile's own z1 coordinates) are coded with the
integer prior from z2 alone; then the context network reads the decoded anchors around each non-anchor and
corrects its prior: scale index += du, mean += dmean (units of 1/mean_grid). Encoder and decoder run the
same integers, so the corrections are as exact as the prior's.

Layers: the four adjacent anchors (a 3x3 kernel masked to a cross) x 7-bit weights, requantised to 8 bits;
then a 1x1 layer (8-bit inputs, 7-bit weights) to (du, dmean). Only the non-anchors are computed: 4 of 9
taps at half the positions. Both layers run as 8-bit products (the decoded latent, |zq| < 2**15, as two
bytes, as the prior's first layer does) or, identically, as float64 sums of integers (4 C taps x 2**15 x 63:
far below 2**53).
"""
from __future__ import annotations

import numpy as np

from . import int8_gemm
from .integer_prior import (ACC_LIMIT, INPUT_MAX, MEAN_MAX, MULT_BITS, hidden_scale, integer_layer,
                            output_scales, requantise)

CROSS = ((0, 1), (1, 0), (1, 2), (2, 1))   # kernel taps on the adjacent anchors: above, left, right, below


def anchors(h: int, w: int) -> np.ndarray:
    """(h, w) bool: the first half of z1."""
    i, j = np.indices((h, w))
    return (i + j) % 2 == 0


def neighbour_columns(zq: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """zq (C,h,w) with the non-anchors zeroed -> (N, 4*C): the four neighbours of each position
    (rows[k], cols[k]), tap-major, zero outside the tile."""
    zp = np.pad(zq, ((0, 0), (1, 1), (1, 1)))
    return np.concatenate([zp[:, rows + a, cols + b].T for a, b in CROSS], axis=1)


def cross_matrix(w: np.ndarray) -> np.ndarray:
    """(H, C, 3, 3) -> (H, 4*C), taps in the order of neighbour_columns."""
    return np.concatenate([w[:, :, a, b] for a, b in CROSS], axis=1)


def _int8(w: np.ndarray, act_max: int, enabled: bool):
    """An 8-bit product for the weight matrix w (M, K) when it fits, else None (the float64 reference)."""
    if enabled and int8_gemm.available() and int8_gemm.fits(w, act_max, w.shape[1]):
        return int8_gemm.Int8Matmul(w)
    return None


class IntegerContext:
    """Decoded anchors (zq, C x h x w) -> integer corrections (du, dmean) at the non-anchors, C x N each."""

    def __init__(self, layers: list[dict], int8: bool = True):
        """int8=False keeps both layers on the float64 reference path (same integers, slower)."""
        self.layers = layers
        self._hidden = cross_matrix(layers[0]["w"])
        self._out = layers[1]["w"][:, :, 0, 0]
        self._hidden_int8 = _int8(self._hidden, int8_gemm.ACT_MAX, int8)
        self._out_int8 = _int8(self._out, int8_gemm.ACT_MAX, int8)
        self._hidden_correction = 128 * self._hidden.astype(np.int64).sum(axis=1)

    def __call__(self, zq_anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, h, w = zq_anchors.shape
        rows, cols = np.nonzero(~anchors(h, w))
        x = neighbour_columns(np.clip(zq_anchors, -INPUT_MAX + 1, INPUT_MAX - 1), rows, cols)
        first, second = self.layers
        hidden = requantise(self._hidden_sums(x), first["b"], first["mult"], first["shift"], 0, int8_gemm.ACT_MAX)
        if self._out_int8 is not None:
            acc = self._out_int8(np.ascontiguousarray(hidden.T).astype(np.uint8)).T
        else:
            acc = (self._out.astype(np.float64) @ hidden.astype(np.float64)).astype(np.int64)
        out = requantise(acc, second["b"], second["mult"], second["shift"], -MEAN_MAX, MEAN_MAX)
        c = len(out) // 2
        return out[:c], out[c:]

    def _hidden_sums(self, x: np.ndarray) -> np.ndarray:
        """(H, N) int64 sums of the cross layer. 8-bit path: |zq| < 2**15 is split into two bytes,
        zq = 256 * (hi - 128) + lo, both multiplied in one product; hi's +128 is taken off exactly."""
        if self._hidden_int8 is None:
            return (self._hidden.astype(np.float64) @ x.T).astype(np.int64)
        xi = x.astype(np.int64)
        planes = np.concatenate([(xi >> 8) + 128, xi & 255]).astype(np.uint8)
        both = self._hidden_int8(planes).T.astype(np.int64)
        n = len(x)
        return 256 * (both[:, :n] - self._hidden_correction[:, None]) + both[:, n:]

    def check_bounds(self) -> None:
        """Refuse weights whose worst-case accumulator could leave the exact range."""
        in_max = INPUT_MAX
        for i, layer in enumerate(self.layers):
            w = np.abs(layer["w"].astype(np.int64))
            if i == 0:
                w = np.abs(cross_matrix(layer["w"]).astype(np.int64))
            bound = w.reshape(len(w), -1).sum(axis=1) * in_max + np.abs(layer["b"].astype(np.int64))
            if bound.max() >= ACC_LIMIT or layer["mult"].max() >= (1 << MULT_BITS) or layer["shift"].min() < 1:
                raise ValueError(f"spatial context layer {i} can leave the exact range")
            in_max = int8_gemm.ACT_MAX

    def arrays(self, prefix: str) -> dict:
        return {f"{prefix}{i}/{key}": value for i, layer in enumerate(self.layers) for key, value in layer.items()}

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str, int8: bool = True) -> "IntegerContext":
        try:
            layers = [{k: arrays[f"{prefix}{i}/{k}"] for k in ("w", "b", "mult", "shift")} for i in range(2)]
        except KeyError:
            raise ValueError(f"model has no spatial context under {prefix}") from None
        context = cls(layers, int8)
        context.check_bounds()
        return context


def second_half(prior_out, zq_first: np.ndarray, context: IntegerContext, num_scales: int):
    """The non-anchors' (scale index, mean) from the prior's raw output and the decoded anchors.
    prior_out: (raw index, mean) from IntegerPrior.outputs; zq_first: z1 decoded with it (anchors used)."""
    u, mean = prior_out
    first = anchors(*u.shape[-2:])
    du, dmean = context(np.where(first, zq_first, 0))
    index = np.clip(u[:, ~first] + du, 0, num_scales - 1).astype(np.int32)
    return index, mean[:, ~first] + dmean


def convert(context, calibration_inputs, mean_grid: int) -> IntegerContext:
    """The trained float CheckerboardContext as integers. calibration_inputs: decoded z1 tensors
    (1,C,h,w) as the decoder sees them, non-anchors zeroed; they set the hidden layer's range."""
    import torch

    act_max = 0.0
    with torch.no_grad():
        for z in calibration_inputs:
            h = context.hidden_activations(z)
            second = torch.from_numpy(~anchors(*z.shape[-2:])).to(h.dtype)   # the only outputs used
            act_max = max(act_max, float((h * second).max()))
    w0 = context.masked_weight().detach().double().numpy()
    layers = [integer_layer(w0, context.hidden.bias.detach().double().numpy(), 0, 1.0 / mean_grid,
                            hidden_scale(act_max))]
    layers.append(integer_layer(context.out.weight.detach().double().numpy(),
                                context.out.bias.detach().double().numpy(), 0, hidden_scale(act_max),
                                output_scales(context.out.out_channels, mean_grid)))
    result = IntegerContext(layers)
    result.check_bounds()
    return result
