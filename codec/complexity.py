"""Multiply-accumulates per pixel of the transforms, counted layer by layer on a real forward pass."""
from __future__ import annotations

import torch
from torch import nn

from .layers import SimplifiedGDN


def count_macs(module: nn.Module, *inputs) -> int:
    total = 0

    def hook(layer, args, out):
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            k = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            total += out.numel() * k
        elif isinstance(layer, nn.ConvTranspose2d):
            # every input element meets every kernel tap once
            x = args[0]
            total += x.numel() * layer.out_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, nn.Linear):
            total += out.numel() * layer.in_features
        elif isinstance(layer, SimplifiedGDN):
            # its 1x1 convolution over |x| (F.conv2d, no module), or one multiply per element when diagonal
            total += out.numel() * (1 if layer.elementwise else out.shape[1])

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, SimplifiedGDN))]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total


def analysis_macs_per_pixel(net, size: int = 512) -> float:
    """What the drone runs per pixel: image analysis plus the latent chain."""
    x = torch.rand(1, 3, size, size)
    return count_macs(net.analysis, x, torch.tensor([256.0])) / (size * size)


def synthesis_macs_per_pixel(net, size: int = 512) -> float:
    z = torch.zeros(1, net.cfg.c1, size // 16, size // 16)
    return count_macs(net.synthesis, z, torch.tensor([256.0])) / (size * size)
