"""The image analysis rewritten for inference graphs (ONNX Runtime, TensorRT): the same function, fewer
memory passes. The training model is left as it is.

Two exact rewrites (equal up to float rounding):

1. Each diagonal GDN becomes one Softsign. A GDN with diagonal Γ is x / (β + γ|x|) per channel; with
   u = (γ/β)·x it equals softsign(u) / γ, where softsign(u) = u / (1 + |u|) is a single ONNX operator.
   γ/β folds into the weights of the convolution before the GDN, 1/γ into the input channels of the
   convolution after it (zero padding stays zero). Per pixel only Softsign and the λ-dependent FiLM
   multiply-add remain instead of Abs, Mul, Add, Div, and ONNX Runtime's INT8 graph no longer
   dequantises the convolution output twice (it fed both |x| and the division).
2. The first 5x5 stride-2 convolution over 3 channels becomes SpaceToDepth(2) and a 3x3 convolution
   over 12 channels (the 5x5 kernel padded to 6x6 and cut into 2x2 blocks). Three input channels make a
   poor matrix product for ONNX Runtime's INT8 kernels (K = 75); the rewrite runs it 2.3x faster.
   SpaceToDepth needs even height and width: the codec's transform windows are multiples of 16 px.

Measured on this project's CPU (INT8 analysis of a 480x848 blade frame, one thread): the GDN/FiLM
passes at half resolution took a third of the time before; see issue #4's notes for the tables.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .layers import rate_gain


class _Softsign(torch.autograd.Function):
    """u / (1 + |u|), exported as ONNX Softsign (traced, torch's softsign would become Abs, Add, Div)."""

    @staticmethod
    def forward(ctx, u):
        return u / (1.0 + u.abs())

    @staticmethod
    def symbolic(g, u):
        return g.op("Softsign", u)


class _SpaceToDepth(torch.autograd.Function):
    """ONNX SpaceToDepth, blocksize 2: output channel (dy·2 + dx)·C + c holds pixel (2i+dy, 2j+dx) of c."""

    @staticmethod
    def forward(ctx, x):
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"the inference analysis needs even height and width, got {h}x{w}")
        return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4).reshape(b, 4 * c, h // 2, w // 2)

    @staticmethod
    def symbolic(g, x):
        return g.op("SpaceToDepth", x, blocksize_i=2)


def space_to_depth_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A 5x5, stride-2, padding-2 convolution as a 3x3, padding-1 convolution over SpaceToDepth(2) input.

    Output i reads input rows 2i-2..2i+2, i.e. blocks i-1, i, i+1 of rows (2k, 2k+1); the sixth row of
    that span (2i+3) gets a zero weight.
    """
    if conv.kernel_size != (5, 5) or conv.stride != (2, 2) or conv.padding != (2, 2):
        raise ValueError("space_to_depth_conv takes a 5x5 convolution with stride 2 and padding 2")
    w = F.pad(conv.weight.detach(), (0, 1, 0, 1))        # (O, C, 6, 6): taps -2..+3
    o, c = w.shape[:2]
    w = w.view(o, c, 3, 2, 3, 2)                          # (O, C, block y, dy, block x, dx)
    blocked = nn.Conv2d(4 * c, o, 3, padding=1)
    with torch.no_grad():
        blocked.weight.copy_(w.permute(0, 3, 5, 1, 2, 4).reshape(o, 4 * c, 3, 3))
        blocked.bias.copy_(conv.bias.detach())
    return blocked


def diagonal_gdns(image) -> bool:
    """Every GDN of image is a forward GDN with a diagonal Γ: the shape the fold rewrites."""
    return all(g.is_diagonal() and not g.inverse for g in image.gdns)


def foldable(image) -> bool:
    """Diagonal GDNs with all γ > 0 (a zero γ would make the fold divide by zero)."""
    return diagonal_gdns(image) and all(bool((g.gamma_diagonal() > 0).all()) for g in image.gdns)


def folded_conv(image, i: int):
    """(weight, bias) of Conv i of the rewritten analysis, a differentiable function of image's parameters:
    times γ/β of the GDN after it per output channel, divided by γ of the GDN before it per input channel.
    The INT8 emulation (quantisation_aware.py) folds with this too, so it quantises the weights exported."""
    w, b = image.convs[i].weight, image.convs[i].bias
    if i < len(image.gdns):
        ratio = image.gdns[i].gamma_diagonal() / image.gdns[i].beta()
        w, b = w * ratio.view(-1, 1, 1, 1), b * ratio
    if i > 0:
        w = w / image.gdns[i - 1].gamma_diagonal().view(1, -1, 1, 1)
    return w, b


class InferenceImageAnalysis(nn.Module):
    """Same function as ImageAnalysis (x, λ) -> y1, rewritten as described above."""

    def __init__(self, image):
        super().__init__()
        if not foldable(image):
            raise ValueError("the inference analysis needs diagonal GDNs with every γ > 0")
        convs = copy.deepcopy(image.convs)
        self.films = image.films
        with torch.no_grad():
            for i, conv in enumerate(convs):
                weight, bias = folded_conv(image, i)
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)
            for i, gdn in enumerate(image.gdns):
                self.register_buffer(f"gamma{i}", gdn.gamma_diagonal().view(1, -1, 1, 1))
        convs[0] = space_to_depth_conv(convs[0])
        self.convs = convs

    def forward(self, x, lam, store=None):
        """store, if given, is applied to every tensor an operator writes: half_precision.py rounds them to
        float16 there, as an FP16 engine stores them."""
        keep = store or _unchanged
        h = keep(_SpaceToDepth.apply(keep(x - 0.5)))
        for i, film in enumerate(self.films):
            gain, shift = (keep(t) for t in film.affine(lam, h.dtype))
            # FiLM(softsign(u) / γ) = (gain·softsign(u) + γ·shift) / γ; the 1/γ lives in the next conv
            s = keep(_Softsign.apply(keep(self.convs[i](h))))
            h = keep(keep(s * gain) + keep(shift * getattr(self, f"gamma{i}")))
        return keep(keep(self.convs[-1](h)) * rate_gain(lam, h.dtype))


def _unchanged(t):
    return t


def inference_image_analysis(image) -> nn.Module:
    """The rewritten analysis when the model allows it, else the model's own."""
    return InferenceImageAnalysis(image) if foldable(image) else image
