"""ONNX Runtime against PyTorch on real photos: integer latents, and decoding on the ground decoder.

The check is on what the drone transmits (the integer latents), not on float outputs: a float
difference matters only where it moves a latent across a rounding boundary.
"""
from __future__ import annotations

import time

import numpy as np

from codec import api
from codec.imageio import read_photo
from codec.lambdas import index_of_lambda, lambda_of_index
from codec.onnx_export import OrtTransforms

MIN_AGREEMENT = 0.999


def latent_agreement(a: list, b: list) -> float:
    return float(sum((x == y).sum() for x, y in zip(a, b)) / sum(x.size for x in a))


def decodes_on_ground(model, enc) -> tuple[bool, str]:
    """The ground decoder rebuilds exactly the encoder's integer latents, and a photo of the right size."""
    try:
        zq, _ = api.decode_latents(model, api.read_container(model, enc.data))
        if not all(np.array_equal(a, b) for a, b in zip(enc.latents, zq)):
            return False, "decoded latents differ from the encoded ones"
        photo = api.decompress(model, enc.data)
    except Exception as e:  # any failure here is the finding, reported per photo
        return False, f"{type(e).__name__}: {e}"
    return True, f"{photo.pixels.shape[1]}x{photo.pixels.shape[0]}"


def compare(model, image_onnx, latent_onnx, photo_paths, lambdas=(256, 2048), min_agreement=MIN_AGREEMENT,
            threads: int = 1) -> dict:
    """Encode each photo at each λ with PyTorch and with the graph; report agreement and decoding."""
    rows = []
    for path in photo_paths:
        photo = read_photo(path)
        for lam in lambdas:
            index = index_of_lambda(lam)
            ort = OrtTransforms.from_files(image_onnx, latent_onnx, lambda_of_index(index), threads=threads)
            ref = api.compress(model, photo, index, keep_latents=True)
            t0 = time.perf_counter()
            enc = api.compress(model, photo, index, transforms=ort, keep_latents=True)
            seconds = time.perf_counter() - t0
            ok, detail = decodes_on_ground(model, enc)
            rows.append({"photo": path.name, "lambda": lam, "agreement": latent_agreement(enc.latents, ref.latents),
                         "bytes": len(enc.data), "torch_bytes": len(ref.data), "decodes": ok, "detail": detail,
                         "encode_s": round(seconds, 3)})
    worst = min((r["agreement"] for r in rows), default=0.0)
    return {"passed": bool(rows) and worst >= min_agreement and all(r["decodes"] for r in rows),
            "min_agreement_required": min_agreement, "worst_agreement": worst,
            "all_decode": all(r["decodes"] for r in rows), "runs": rows}
