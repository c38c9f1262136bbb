"""`python -m codec bench-blocks IMAGE`: where in one photo ours loses to HEIC, block by block.

The 16x16 blocks are classed by the spread (standard deviation) of their luma, from flat sky to edges and
text. For each class the table gives the mean squared error of
- ours as decoded from a real bitstream at each λ,
- the same float model reconstructing from unquantised latents (the transforms' ceiling, bench-ceiling),
- HEIC at the given qualities, with its bpp beside it.
Where the decoded error of a class is far above its ceiling, the rounding of the latents costs it (more bits
or a better entropy model help); where the ceiling itself is above HEIC, the transforms cannot draw that
content at any rate (z1's width, or content the training never showed them). Session 22 found both on the
worst blade frames: flat sky at twice its ceiling, and a burned-in timestamp holding most of the ceiling's
error on one frame.
"""
from __future__ import annotations

import numpy as np

from ..errors import CodecError
from ..imageio import read_rgb
from ..runtime import CodecModel
from ..tiling import STRIDE
from .ceiling import reconstructions

CLASSES = ((0, 1), (1, 2), (2, 4), (4, 16), (16, np.inf))   # luma standard deviation of a block, 8-bit units
WORST_SHARE = 0.01   # the worst 1 % of blocks: how concentrated the ceiling's error is


def whole_blocks(pixels: np.ndarray) -> np.ndarray:
    h, w = (s // STRIDE * STRIDE for s in pixels.shape[:2])
    if not h or not w:
        raise CodecError(f"image of {pixels.shape[1]}x{pixels.shape[0]} is smaller than one {STRIDE} px block")
    return np.ascontiguousarray(pixels[:h, :w])


def _per_block(values: np.ndarray, reduce) -> np.ndarray:
    h, w = values.shape[0] // STRIDE, values.shape[1] // STRIDE
    return reduce(values.reshape(h, STRIDE, w, STRIDE).transpose(0, 2, 1, 3).reshape(h, w, -1), axis=-1)


def block_spread(pixels: np.ndarray) -> np.ndarray:
    return _per_block(pixels.astype(np.float64).mean(axis=2), np.std)


def block_mse(pixels: np.ndarray, recon: np.ndarray) -> np.ndarray:
    return _per_block(((recon.astype(np.float64) - pixels) ** 2).mean(axis=2), np.mean)


def class_masks(spread: np.ndarray) -> list[np.ndarray]:
    return [(spread >= lo) & (spread < hi) for lo, hi in CLASSES]


def by_class(spread: np.ndarray, mse: np.ndarray) -> list:
    """Mean error of each class's blocks (None for an empty class)."""
    return [float(mse[mask].mean()) if mask.any() else None for mask in class_masks(spread)]


def rows(model: CodecModel, pixels: np.ndarray, lambdas, heic_qualities) -> list[dict]:
    """One row per reconstruction: name, bpp (None for the ceiling), per-class and overall MSE."""
    from ..lambdas import index_of_lambda, lambda_of_index
    from .anchors import anchors
    from .rd import ours

    pixels = whole_blocks(pixels)
    spread, out = block_spread(pixels), []

    def add(name, nbytes, recon):
        mse = block_mse(pixels, recon)
        out.append({"name": name, "bpp": None if nbytes is None else 8 * nbytes / (pixels.shape[0] * pixels.shape[1]),
                    "classes": by_class(spread, mse), "all": float(mse.mean()), "block_mse": mse})

    def coded(codec, setting, name):
        data = codec.encode(pixels, setting)
        add(name, len(data), codec.decode(data))
    own = ours(model, lambdas, threads=1)
    for lam in lambdas:
        coded(own, lam, f"ours λ{lam:g}")
        unquantised, _ = reconstructions(model.torch_model, pixels, lambda_of_index(index_of_lambda(lam)))
        add(f"ours λ{lam:g}, unquantised", None, unquantised)
    heic = next(a for a in anchors(1) if a.name == "HEIC")
    for q in heic_qualities:
        coded(heic, q, f"HEIC q{q}")
    return out


def worst_share(mse: np.ndarray) -> float:
    """Share of the summed error that the worst WORST_SHARE of the blocks carry."""
    flat = np.sort(mse.ravel())[::-1]
    return float(flat[:max(1, int(round(WORST_SHARE * flat.size)))].sum() / max(flat.sum(), 1e-12))


def table(pixels: np.ndarray, result: list[dict]) -> str:
    spread = block_spread(whole_blocks(pixels))
    names = [f"{lo:g}–{hi:g}" if np.isfinite(hi) else f"≥ {lo:g}" for lo, hi in CLASSES]
    counts = [int(mask.sum()) for mask in class_masks(spread)]
    lines = ["| reconstruction | bpp | " + " | ".join(f"luma std {n} ({c} blocks)" for n, c in zip(names, counts))
             + " | all | worst 1 % of blocks' share |", "|---" * (len(CLASSES) + 4) + "|"]
    for r in result:
        cells = " | ".join("—" if v is None else f"{v:.3f}" for v in r["classes"])
        bpp = "—" if r["bpp"] is None else f"{r['bpp']:.3f}"
        lines.append(f"| {r['name']} | {bpp} | {cells} | {r['all']:.3f} | {100 * worst_share(r['block_mse']):.0f} % |")
    return "\n".join(lines)


def main(args):
    pixels = read_rgb(args.image)
    print(table(pixels, rows(CodecModel.load(args.model), pixels, args.lambdas, args.heic)))
