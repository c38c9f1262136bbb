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
from .defect_visibility import KINDS, VISIBLE, contrast, draw, layout, pictures


def kept(net, background: np.ndarray, lam: float) -> dict:
    """{kind: ([unquantised fractions], [rounded fractions])} for the defects drawn on one picture at one λ."""
    background = centre_crop(background)
    defects = layout(*background.shape[:2])
    original = draw(background, defects)
    unquantised, rounded = reconstructions(net, original, lam)
    out = collections.defaultdict(lambda: ([], []))
    for d in defects:
        drawn = contrast(original, d.mask)
        if drawn < VISIBLE * d.depth:   # clipped at black: bench-defects leaves it out too
            continue
        out[d.kind][0].append(contrast(unquantised, d.mask) / drawn)
        out[d.kind][1].append(contrast(rounded, d.mask) / drawn)
    return out


def run(models: dict, data: str | None, max_images: int, lambdas) -> list[dict]:
    """One row per model, λ, picture group (shell / photos) and defect kind: mean fractions kept."""
    groups = collections.defaultdict(list)
    for i, (name, background) in enumerate(pictures(data, max_images)):
        groups["synthetic shell" if i == 0 else "photos"].append(background)
    rows = []
    for model_name, model in models.items():
        for lam in lambdas:
            for group, backgrounds in groups.items():
                per_kind = collections.defaultdict(lambda: ([], []))
                for background in backgrounds:
                    for kind, (unq, rnd) in kept(model.torch_model, background, lam).items():
                        per_kind[kind][0].extend(unq)
                        per_kind[kind][1].extend(rnd)
                rows += [{"model": model_name, "lambda": lam, "pictures": group, "kind": kind,
                          "defects": len(per_kind[kind][0]), "unquantised": float(np.mean(per_kind[kind][0])),
                          "rounded": float(np.mean(per_kind[kind][1]))}
                         for kind in KINDS if per_kind[kind][0]]
    return rows


def main(args):
    paths = [args.model] + (args.against or [])
    models = {(p or "bundled"): CodecModel.load(p) for p in paths}
    rows = run(models, args.data, args.max_images, args.lambdas)
    print("| model | λ | pictures | defect | defects | contrast kept, unquantised latents | rounded latents |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['lambda']:g} | {r['pictures']} | {r['kind']} | {r['defects']} | "
              f"{r['unquantised']:.2f} | {r['rounded']:.2f} |")
