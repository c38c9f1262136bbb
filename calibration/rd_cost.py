"""What INT8 costs: rate-distortion of the INT8 analysis against FP32 (both under ONNX Runtime, same
photos, same λ, same ground decoder), and the speed-up on this CPU.

Reported: BD-rate (%, INT8 against FP32; positive = INT8 needs more bits for the same PSNR) and BD-PSNR
(dB at equal rate; negative = INT8 worse) on the mean RD curve, and, because BD numbers need curves that
span a rate range, the mean PSNR and size differences at equal λ as well (the loss is taken from these when the FP32 curve
spans less than a 1.2x rate range). Target: at most 0.3 dB lost.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from codec import api
from codec.bench.metrics import bd_psnr, bd_rate, psnr
from codec.data import list_images
from codec.errors import CodecError
from codec.imageio import read_photo
from codec.lambdas import index_of_lambda, lambda_of_index
from codec.onnx_export import OrtTransforms, check_stamp
from codec.tiling import WINDOW_PX

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "blades" / "drone_frames"
TARGET_DB = 0.3


def spread(paths: list, n: int) -> list:
    """n photos evenly spread over the sorted list (the folder holds runs of near-duplicate frames)."""
    if n <= 0 or n >= len(paths):
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, n).round().astype(int)]


def encode_point(model, photo, lam_index, image_onnx, latent_onnx, threads):
    ort = OrtTransforms.from_files(image_onnx, latent_onnx, lambda_of_index(lam_index), threads=threads)
    t0 = time.perf_counter()
    enc = api.compress(model, photo, lam_index, transforms=ort, threads=threads)
    seconds = time.perf_counter() - t0
    out = api.decompress(model, enc.data, threads=threads)
    h, w = photo.pixels.shape[:2]
    return {"bpp": 8 * len(enc.data) / (h * w), "psnr": psnr(photo.pixels, out.pixels),
            "enc_s_per_mp": seconds / (h * w / 1e6)}


def window_speed(image_onnx, threads: int, size=WINDOW_PX, repeats=5) -> float:
    """Median seconds of one of the largest analysis windows the tiling makes."""
    ort = OrtTransforms.from_files(image_onnx, image_onnx, 1024.0, threads=threads)
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    ort.image(x)  # warm-up: the first run allocates
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ort.image(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(model, onnx_dir, data=DEFAULT_DATA, max_images=10, lambdas=(64, 256, 1024, 4096, 8192),
            threads=1, int8_graph="encoder.int8.onnx") -> dict:
    onnx_dir = Path(onnx_dir)
    graphs = {"fp32": onnx_dir / "encoder.onnx", "int8": onnx_dir / int8_graph}
    latent = onnx_dir / "encoder_latent.onnx"
    for p in list(graphs.values()) + [latent]:
        if not p.is_file():
            raise CodecError(f"{p}: not found (run export/build_engine.py --int8 --output-dir {onnx_dir})")
        check_stamp(p, model)
    paths = spread(list_images(data), max_images)
    if not paths:
        raise CodecError(f"{data}: no photos")
    points = {k: {lam: [] for lam in lambdas} for k in graphs}
    for path in paths:
        photo = read_photo(path)
        for lam in lambdas:
            for k, g in graphs.items():
                points[k][lam].append(encode_point(model, photo, index_of_lambda(lam), g, latent, threads))
        print(f"{path.name} done", flush=True)
    return {"int8_graph": int8_graph, **summarise(points, lambdas, graphs, threads, [p.name for p in paths])}


def summarise(points, lambdas, graphs, threads, names) -> dict:
    mean = {k: {lam: {m: float(np.mean([p[m] for p in points[k][lam]])) for m in ("bpp", "psnr", "enc_s_per_mp")}
                for lam in lambdas} for k in points}
    curve = lambda k, m: [mean[k][lam][m] for lam in lambdas]
    d_psnr = [pi["psnr"] - pf["psnr"] for lam in lambdas for pf, pi in zip(points["fp32"][lam], points["int8"][lam])]
    d_rate = [pi["bpp"] / pf["bpp"] - 1 for lam in lambdas for pf, pi in zip(points["fp32"][lam], points["int8"][lam])]
    bd_r = bd_rate(curve("fp32", "bpp"), curve("fp32", "psnr"), curve("int8", "bpp"), curve("int8", "psnr"))
    bd_p = bd_psnr(curve("fp32", "bpp"), curve("fp32", "psnr"), curve("int8", "bpp"), curve("int8", "psnr"))
    win = {k: window_speed(g, threads) for k, g in graphs.items()}
    enc = {k: float(np.mean(curve(k, "enc_s_per_mp"))) for k in graphs}
    # BD numbers integrate over the common rate range; a model whose rate hardly moves with λ gives a
    # range too narrow to mean anything, and then the equal-λ differences are the figure to trust.
    span = max(curve("fp32", "bpp")) / min(curve("fp32", "bpp"))
    bd_meaningful = bd_p is not None and span >= 1.2
    loss_db = -bd_p if bd_meaningful else -float(np.mean(d_psnr))
    return {
        "photos": names, "lambdas": list(lambdas), "threads": threads, "curves": mean,
        "bd_rate_percent": bd_r, "bd_psnr_db": bd_p, "rate_span": span, "bd_meaningful": bd_meaningful,
        "mean_delta_psnr_db_same_lambda": float(np.mean(d_psnr)),
        "mean_delta_bits_percent_same_lambda": 100 * float(np.mean(d_rate)),
        "loss_db": loss_db, "target_db": TARGET_DB, "within_target": loss_db <= TARGET_DB,
        "speed": {"window_s": win, "window_px": WINDOW_PX, "window_speedup": win["fp32"] / win["int8"],
                  "encode_s_per_mp": enc, "encode_speedup": enc["fp32"] / enc["int8"]},
    }
