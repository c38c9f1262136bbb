"""`python -m codec bench-gdn --data DIR`: how far from linear each GDN of a model works on real photos.

A GDN divides its input by β + Γ|x| per channel (the inverse GDN of the synthesis multiplies), so it bends
the input only where Γ|x| is comparable with β. The strength of a channel is (Γ|x|)/β at the 99th percentile
over the photo's positions: 0 is a linear channel, 1 halves (or doubles) its largest inputs. Each layer
reports the median strength of its channels and the share of channels above 0.1.

Session 13 (λ 1024, 2 blade frames): most layers of every model since step 5,500 work nearly linearly
(medians 0.01-0.09), and the first and last synthesis layers went to ~0 as training went on; only the middle
synthesis layer grew, from 0.03 (step 5,500) to 0.17 (46,000) and 0.42 (75,900, 75 % of its channels >= 0.1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import weights
from ..data import list_images, spread
from ..errors import CodecError
from ..imageio import read_rgb
from ..layers import SimplifiedGDN
from .ceiling import centre_crop

PERCENTILE = 0.99
BENT = 0.1   # a channel counts as nonlinear from this strength on


def _strength(gdn: SimplifiedGDN, x: torch.Tensor) -> np.ndarray:
    """(C,) strength of each channel for the input x (1, C, h, w); full or diagonal Γ alike."""
    beta = gdn.beta().view(1, -1, 1, 1)
    bend = F.conv2d(x.abs().float(), gdn.gamma_param.square().float()) / beta
    return bend.flatten(2)[0].quantile(PERCENTILE, dim=1).numpy()


@torch.no_grad()
def strengths(net, pixels: np.ndarray, lam: float) -> dict:
    """GDN module name -> (C,) channel strengths, for one photo at one λ (the float model, rounded latents)."""
    found, hooks = {}, []
    for name, module in net.named_modules():
        if isinstance(module, SimplifiedGDN):
            hooks.append(module.register_forward_hook(
                lambda m, inputs, _, name=name: found.__setitem__(name, _strength(m, inputs[0]))))
    try:
        x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float().div(255)[None]
        net(x, torch.tensor([float(lam)]), noisy=False)
    finally:
        for h in hooks:
            h.remove()
    return found


def run(data: str, net, lam: float = 1024.0, max_images: int = 4) -> list[dict]:
    """net: a float NestedLatentCodec (train.load_float)."""
    paths = spread(list_images(data), max_images)
    if not paths:
        raise CodecError(f"{data}: no images")
    per_photo = [strengths(net, centre_crop(read_rgb(p)), lam) for p in paths]
    rows = []
    for name in per_photo[0]:
        s = np.mean([found[name] for found in per_photo], axis=0)   # per channel, averaged over photos
        rows.append({"layer": name, "channels": len(s), "median": float(np.median(s)), "max": float(s.max()),
                     "bent_share": float(np.mean(s >= BENT))})
    return rows


def main(args):
    from ..train import load_float

    path = Path(args.model) if args.model else weights.DEFAULT_MODEL
    if not path.is_file():
        raise CodecError(f"{path}: no such model, weights or checkpoint file")
    net, info = load_float(path)
    rows = run(args.data, net.eval(), args.lam, args.max_images)
    print(f"GDN strength (Γ|x|/β at the {PERCENTILE:.0%} point of |x|), λ {args.lam:g}, "
          f"{path} (step {info.get('step', '?')})")
    print(f"| layer | channels | median | max | channels ≥ {BENT:g} |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['channels']} | {r['median']:.3g} | {r['max']:.3g} | {r['bent_share']:.0%} |")
