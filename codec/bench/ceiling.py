"""`python -m codec bench-ceiling --data DIR`: what limits the model's quality, the transforms or the rounding.

For each photo and λ, the float model reconstructs the photo twice: from the unquantised analysis output
(the transforms' ceiling: no rate could buy more) and from rounded latents (what the codec decodes, before
entropy coding, which is lossless). When PSNR stops rising with λ and the two are close, more bits cannot
help: the analysis and synthesis transforms need training, not the priors.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import list_images, spread
from ..errors import CodecError
from ..imageio import read_rgb
from ..runtime import CodecModel
from ..tiling import STRIDE, to_uint8
from .metrics import psnr

MAX_SIDE = 1024   # centre crop: whole-image float passes, memory bounded


def centre_crop(pixels: np.ndarray) -> np.ndarray:
    """Largest centred crop of at most MAX_SIDE per side that is a whole number of z1 positions."""
    h, w = (min(MAX_SIDE, s) // STRIDE * STRIDE for s in pixels.shape[:2])
    if not h or not w:
        raise CodecError(f"image of {pixels.shape[1]}x{pixels.shape[0]} is smaller than {STRIDE} px")
    top, left = (pixels.shape[0] - h) // 2, (pixels.shape[1] - w) // 2
    return pixels[top:top + h, left:left + w]


def _picture(x_hat: torch.Tensor) -> np.ndarray:
    """The decoder's own rounding to 8 bits."""
    return to_uint8(x_hat[0].numpy()).transpose(1, 2, 0)


@torch.no_grad()
def reconstructions(net, pixels: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(picture from unquantised latents, picture from rounded latents) of one photo (whole z1 positions)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float().div(255)[None]
    lam_t = torch.tensor([float(lam)])
    ys = net.analysis(x, lam_t)
    z_hat, _ = net.top_down(ys, lam=lam_t)
    return _picture(net.synthesis(ys[0], lam_t)), _picture(net.synthesis(z_hat[0], lam_t))


def ceiling(net, pixels: np.ndarray, lam: float) -> tuple[float, float]:
    """(PSNR from unquantised latents, PSNR from rounded latents) of one photo at one λ."""
    unquantised, rounded = reconstructions(net, pixels, lam)
    return psnr(pixels, unquantised), psnr(pixels, rounded)


def run(data: str, model: CodecModel, lambdas=(64, 1024, 8192), max_images: int = 6) -> list[dict]:
    paths = spread(list_images(data), max_images)
    if not paths:
        raise CodecError(f"{data}: no images")
    net = model.torch_model
    rows = []
    for lam in lambdas:
        pairs = [ceiling(net, centre_crop(read_rgb(p)), lam) for p in paths]
        unq, rounded = np.mean(pairs, axis=0)
        rows.append({"data": Path(data).name, "lambda": lam, "images": len(paths), "psnr_unquantised": unq,
                     "psnr_rounded": rounded})
    return rows


def main(args):
    model = CodecModel.load(args.model)
    rows = [r for data in args.data for r in run(data, model, tuple(args.lambdas), args.max_images)]
    print("| data | λ | images | PSNR, unquantised latents | PSNR, rounded latents | rounding costs |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['lambda']:g} | {r['images']} | {r['psnr_unquantised']:.2f} | "
              f"{r['psnr_rounded']:.2f} | {r['psnr_unquantised'] - r['psnr_rounded']:.2f} dB |")
