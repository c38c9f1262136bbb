"""`python -m codec bench-defect-reach`: where a model loses faint defects, in its transforms or in z1's rounding.

bench-defects says how many bits a model needs to keep a drawn crack or pit at half contrast; this says why it
needs them. The same drawn defects as bench-defects (codec/bench/defect_visibility.py), on the synthetic shell
and on photos, are reconstructed twice by the float model (codec/bench/ceiling.py): from the unquantised
analysis output (what the transforms can carry at that λ, whatever the rate) and from rounded latents (what the
codec decodes). Each defect's decoded contrast over its drawn contrast, averaged per kind.

Session 38: at λ 256 lineage C's step 105,000 kept 0.54 of a 2-px crack from unquantised latents where
`e888c596` kept 0.67; rounded 0.20 against 0.28. So its faint-defect deficit starts in the transforms.
"""
from __future__ import annotations

import collections

import numpy as np

from ..runtime import CodecModel
from .ceiling import centre_crop, reconstructions
from .defect_visibility import KINDS, contrast, drawn_defects, pictures


def kept(net, drawn_picture: tuple, lam: float) -> list[tuple[str, float, float]]:
    """[(kind, unquantised fraction, rounded fraction)] for each defect of one drawn_defects picture at one λ."""
    original, drawn = drawn_picture
    unquantised, rounded = reconstructions(net, original, lam)
    return [(d.kind, contrast(unquantised, d.mask) / c, contrast(rounded, d.mask) / c) for d, c in drawn]


def run(models: dict, data: str | None, max_images: int, lambdas) -> list[dict]:
    """One row per model, λ, picture group (shell / photos) and defect kind: mean fractions kept."""
    groups = collections.defaultdict(list)   # each picture cropped to whole z1 positions and drawn once
    for i, (_, background) in enumerate(pictures(data, max_images)):
        groups["synthetic shell" if i == 0 else "photos"].append(drawn_defects(centre_crop(background)))
    rows = []
    for model_name, model in models.items():
        for lam in lambdas:
            for group, drawn_pictures in groups.items():
                fractions = collections.defaultdict(list)
                for picture in drawn_pictures:
                    for kind, unquantised, rounded in kept(model.torch_model, picture, lam):
                        fractions[kind].append((unquantised, rounded))
                rows += [_row(model_name, lam, group, kind, fractions[kind]) for kind in KINDS if fractions[kind]]
    return rows


def _row(model_name: str, lam: float, group: str, kind: str, fractions: list) -> dict:
    unquantised, rounded = np.mean(fractions, axis=0)
    return {"model": model_name, "lambda": lam, "pictures": group, "kind": kind, "defects": len(fractions),
            "unquantised": float(unquantised), "rounded": float(rounded)}


def main(args):
    paths = [args.model] + (args.against or [])
    models = {(p or "bundled"): CodecModel.load(p) for p in paths}
    rows = run(models, args.data, args.max_images, args.lambdas)
    print("| model | λ | pictures | defect | defects | contrast kept, unquantised latents | rounded latents |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['lambda']:g} | {r['pictures']} | {r['kind']} | {r['defects']} | "
              f"{r['unquantised']:.2f} | {r['rounded']:.2f} |")
