"""`python -m codec bench-defects`: how many bits each codec needs before a faint defect stays visible.

PSNR is dominated by sky and smooth shell; inspectors look for hairline cracks and small pits a few grey
levels darker than the blade around them. This benchmark draws such defects (1- and 2-pixel cracks, 3- and
6-pixel pits, 5 to 20 grey levels deep) on a synthetic blade shell and, with --data, on real photos; codes
each picture with ours and every anchor at their whole ladders; and measures how much of each defect's
contrast (its mean luma below the ring 3-4 pixels around it) the decoded picture keeps.

The summary is the bit rate at which a defect keeps half its contrast, interpolated on log bpp between the
ladder's points, and for each codec the geometric mean of that rate over HEIC's, over the defects both make
visible inside their ladders. Session 23 found this while checking a decoder post-filter: the codec itself
keeps only 2 of a 12-level hairline crack's levels at λ 1024.

--against codes the same pictures with other model files of ours too ("ours:<model id>"), and the summary then
also gives each one's half-contrast bpp over the default's, defect by defect: how a training change moves
faint defects, which PSNR does not show. --archive-steps does the same for ours as the ground station archives
a photo (SGA+ refinement, "ours-archive"): whether refining the latents for rate and MSE keeps faint defects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CodecError
from ..imageio import read_rgb
from ..runtime import CodecModel
from ..rate_aware_rounding import DEFAULT_BETA
from .rd import ARCHIVE, OURS, REFERENCE, bench_images, contenders, ours, write_csv

DEPTHS = (5, 8, 12, 20)                                   # grey levels below the surrounding surface
KINDS = ("crack 1 px", "crack 2 px", "pit 3 px", "pit 6 px")
LAMBDAS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)     # denser than the RD ladder: crossings need it
MIN_SIDE = 256
HALF = 0.5
SHELL = "synthetic shell"
VISIBLE = 0.75    # a drawn defect counts when the original keeps this share of its depth (not clipped at 0)


@dataclass
class Defect:
    kind: str
    depth: int
    mask: np.ndarray


def shell(h: int, w: int, seed: int = 1) -> np.ndarray:
    """A smooth blade shell, off-white with gentle shading and sensor noise (float RGB)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.repeat((150 + 20 * xx / w + 8 * yy / h)[..., None], 3, 2) * np.array([1.0, 0.98, 0.95])
    return img + rng.normal(0, 0.8, img.shape)


def _crack(h: int, w: int, top: int, left: int, length: int, width: int) -> np.ndarray:
    """A gently wandering vertical crack."""
    m = np.zeros((h, w), bool)
    for t in range(length):
        x = left + int(round(6 * math.sin(t / 25)))
        m[top + t, x:x + width] = True
    return m


def _pit(h: int, w: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[top:top + side, left:left + side] = True
    return m


def layout(h: int, w: int) -> list[Defect]:
    """One defect of every kind and depth, in a grid: a column per depth, a row per kind."""
    if min(h, w) < MIN_SIDE:
        raise CodecError(f"picture of {w}x{h} is too small to draw the defects on (at least {MIN_SIDE} px a side)")
    ch, cw = h // len(KINDS), w // len(DEPTHS)
    out = []
    for col, depth in enumerate(DEPTHS):
        left = col * cw + cw // 3
        for row, kind in enumerate(KINDS):
            top = row * ch + 10
            if kind.startswith("crack"):
                mask = _crack(h, w, top, left, ch - 20, int(kind.split()[1]))
            else:
                mask = _pit(h, w, top + ch // 3, left, int(kind.split()[1]))
            out.append(Defect(kind, depth, mask))
    return out


def draw(background: np.ndarray, defects: list[Defect]) -> np.ndarray:
    img = background.astype(np.float64)
    for d in defects:
        img[d.mask] -= d.depth
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def contrast(pixels: np.ndarray, mask: np.ndarray) -> float:
    """Grey levels by which a defect's mean luma lies below the ring 3-4 pixels around it."""
    luma = pixels.astype(np.float64).mean(2)
    ring = np.zeros_like(mask)
    for d in (-4, -3, 3, 4):
        ring |= np.roll(mask, d, axis=0) | np.roll(mask, d, axis=1)
    return float(luma[ring & ~mask].mean() - luma[mask].mean())


def pictures(data: str | None, max_images: int) -> list[tuple[str, np.ndarray]]:
    """(name, background) pairs: the synthetic shell, then the photos of `data` if given."""
    paths = bench_images(data, max_images) if data else []
    return [(SHELL, shell(512, 640))] + [(p.name, read_rgb(p)) for p in paths]


def drawn_defects(background: np.ndarray) -> tuple[np.ndarray, list[tuple[Defect, float]]]:
    """(the picture with every defect drawn, [(defect, its contrast there)]), leaving out the defects the
    picture cannot show (clipped at black: less than VISIBLE of their depth)."""
    defects = layout(*background.shape[:2])
    original = draw(background, defects)
    drawn = [(d, contrast(original, d.mask)) for d in defects]
    return original, [(d, c) for d, c in drawn if c >= VISIBLE * d.depth]


def code_picture(name: str, background: np.ndarray, codecs) -> list[dict]:
    """One row per codec, setting and defect: the decoded contrast beside the drawn one."""
    original, drawn = drawn_defects(background)
    rows = []
    for codec in codecs:
        for setting in codec.settings:
            data = codec.encode(original, setting)
            decoded = codec.decode(data)
            bpp = 8 * len(data) / (original.shape[0] * original.shape[1])
            rows += [{"image": name, "codec": codec.name, "setting": setting, "bpp": bpp, "kind": d.kind,
                      "depth": d.depth, "contrast_original": c, "contrast_decoded": contrast(decoded, d.mask)}
                     for d, c in drawn]
    return rows


def half_contrast_bpp(points: list[tuple[float, float]]) -> tuple[str, float]:
    """Where the kept share of contrast first reaches HALF, interpolated on log bpp: ("=", bpp).
    ("<", lowest bpp) when the ladder starts past it; (">", highest bpp) when the ladder never gets there."""
    points = sorted(points)
    for i, (bpp, kept) in enumerate(points):
        if kept >= HALF:
            if i == 0:
                return "<", bpp
            (b0, k0), (b1, k1) = points[i - 1], (bpp, kept)
            t = (HALF - k0) / (k1 - k0)
            return "=", math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
    return ">", points[-1][0]


def crossings(rows: list[dict]) -> dict:
    """{(image, codec, kind, depth): half_contrast_bpp of that curve}."""
    curves = {}
    for r in rows:
        key = (r["image"], r["codec"], r["kind"], r["depth"])
        curves.setdefault(key, []).append((r["bpp"], r["contrast_decoded"] / r["contrast_original"]))
    return {k: half_contrast_bpp(v) for k, v in curves.items()}


def ratio_to_reference(cross: dict, codec: str, images, reference: str = REFERENCE) -> tuple[float | None, int]:
    """Geometric mean of codec's half-contrast bpp over the reference's, over the defects on `images` that
    both place inside their ladders, and how many those are."""
    logs = [math.log(v / cross[(img, reference, kind, depth)][1])
            for (img, c, kind, depth), (bound, v) in cross.items()
            if c == codec and img in images and bound == "="
            and cross.get((img, reference, kind, depth), ("",))[0] == "="]
    return (math.exp(sum(logs) / len(logs)) if logs else None), len(logs)


def markdown(cross: dict, codecs: list[str]) -> str:
    fmt = lambda cell: "—" if cell is None else (f"{cell[1]:.3f}" if cell[0] == "=" else f"{cell[0]} {cell[1]:.3f}")
    lines = ["| image | defect | " + " | ".join(codecs) + " |", "|---|---|" + "---|" * len(codecs)]
    for img, kind, depth in sorted({(k[0], k[2], k[3]) for k in cross}):
        cells = [fmt(cross.get((img, c, kind, depth))) for c in codecs]
        lines.append(f"| {img} | {kind}, {depth} levels | " + " | ".join(cells) + " |")
    photos = {k[0] for k in cross} - {SHELL}
    for group, images in ((SHELL, {SHELL} & {k[0] for k in cross}), ("photos", photos)):
        if images:
            lines += _summary_rows(cross, codecs, group, images)
    return "\n".join(lines)


def _summary_rows(cross: dict, codecs: list[str], group: str, images: set) -> list[str]:
    never = [sum(1 for k, v in cross.items() if k[1] == c and k[0] in images and v[0] == ">") for c in codecs]
    rows = [f"| {group} | never at half contrast within the ladder | " + " | ".join(map(str, never)) + " |"]
    # ours is a second reference when another variant of ours (a model file, the archive path) ran beside it
    references = [REFERENCE] + ([OURS] if any(c.startswith(OURS + ":") or c == ARCHIVE for c in codecs) else [])
    for reference in references:
        ratios = [ratio_to_reference(cross, c, images, reference) for c in codecs]
        rows.append(f"| {group} | bpp over {reference}'s (geometric mean; defects) | "
                    + " | ".join("—" if r is None else f"**{r:.2f}x** ({n})" for r, n in ratios) + " |")
    return rows


def other_models(paths, lambdas, threads: int, beta: float) -> list:
    """Ours with each of these model files, named ours:<first 8 hex digits of its model id>."""
    runs = []
    for path in paths or []:
        model = CodecModel.load(path)
        codec = ours(model, lambdas, threads, beta)
        codec.name = f"{OURS}:{model.model_id.hex()[:8]}"
        runs.append(codec)
    return runs


def run(out_dir, data=None, max_images: int = 4, model_path=None, lambdas=LAMBDAS, threads: int = 1,
        codecs=None, beta: float = DEFAULT_BETA, against=None, archive_steps: int = 0) -> tuple[dict, str]:
    """Code every picture with every codec; write the CSVs and defects.md to out_dir.
    beta: our encoder's rate-aware rounding; against: more model files of ours to code with;
    archive_steps: also code as the ground archives (SGA+ for that many steps per picture and λ).
    Returns the half-contrast crossings and the markdown table."""
    backgrounds = pictures(data, max_images)
    codecs_run = contenders(CodecModel.load(model_path), lambdas, threads, codecs, beta, archive_steps)
    codecs_run += other_models(against, lambdas, threads, beta)
    rows = []
    for name, background in backgrounds:
        rows += code_picture(name, background, codecs_run)
        print(f"{name} done", flush=True)     # the archive path takes minutes per picture
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "defect_points.csv", rows)
    cross = crossings(rows)
    write_csv(out_dir / "half_contrast.csv", [{"image": k[0], "codec": k[1], "kind": k[2], "depth": k[3],
                                                "bound": v[0], "bpp_half_contrast": v[1]} for k, v in cross.items()])
    table = markdown(cross, [c.name for c in codecs_run])
    (out_dir / "defects.md").write_text(table + "\n")
    return cross, table


def main(args):
    print(run(args.out, args.data, args.max_images, args.model, threads=args.threads, codecs=args.codecs,
              beta=args.beta, against=args.against, archive_steps=args.archive_steps)[1])
