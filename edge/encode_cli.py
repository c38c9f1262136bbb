"""`python -m edge encode IN -o OUT --lambda L --backend torch|onnxruntime|tensorrt|auto [--onnx PATH | --engine PATH]`

The one-shot edge encoder for engineers and tests: the chosen backend runs the analysis, the shared
codec does the rest, and the file is the same NLIC container `python -m codec decompress` reads.
An explicit --backend never falls back silently (a test of the TensorRT path must not pass on torch);
`--backend auto` uses the drone's fallback order tensorrt -> onnxruntime -> torch.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from codec.cli import run_reporting_errors
from codec.errors import CodecError

BACKEND_CHOICES = ("torch", "onnxruntime", "tensorrt", "auto")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge encode",
                                description="Encode one photo on the edge with a chosen analysis backend")
    p.add_argument("input", help="photo (JPEG, PNG, TIFF)")
    p.add_argument("-o", "--output", required=True, help="output .nlic file")
    p.add_argument("--lambda", dest="lam", type=float, required=True, help="rate-distortion trade-off, 64..8192")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    graph = p.add_mutually_exclusive_group()
    graph.add_argument("--onnx", help="image-analysis graph (encoder.onnx or encoder.int8.onnx); "
                                      "encoder_latent.onnx is taken from the same folder")
    graph.add_argument("--engine", help="TensorRT engine file (its .json description and latent engine beside it)")
    p.add_argument("--providers", choices=("auto", "cuda", "cpu"), default="auto", help="ONNX Runtime provider")
    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tile", type=int, default=1024, help="coding tile size in pixels")
    return p


def check_args(args):
    if args.onnx and args.backend not in ("onnxruntime", "auto"):
        raise CodecError(f"--onnx is for the onnxruntime backend, not {args.backend}")
    if args.engine and args.backend not in ("tensorrt", "auto"):
        raise CodecError(f"--engine is for the tensorrt backend, not {args.backend}")
    if args.backend == "tensorrt" and not args.engine:
        raise CodecError("--backend tensorrt needs --engine PATH (built by export/build_engine.py)")


def encode(args) -> str:
    from codec import api
    from codec.cli import write_bytes
    from codec.imageio import read_photo
    from codec.lambdas import index_of_lambda, lambda_of_index
    from codec.runtime import CodecModel
    from edge.backends import DEFAULT_ORDER, select_backend

    check_args(args)
    try:
        lam_index = index_of_lambda(args.lam)
    except ValueError as e:
        raise CodecError(str(e)) from None
    photo = read_photo(args.input)
    model = CodecModel.load(args.model)
    order = DEFAULT_ORDER if args.backend == "auto" else (args.backend,)
    backend = select_backend(model, order, onnx=args.onnx, engine=args.engine, providers=args.providers,
                             threads=args.threads)
    t0 = time.perf_counter()
    enc = api.compress(model, photo, lam_index, tile_px=args.tile, threads=args.threads,
                       transforms=backend.transforms(lambda_of_index(lam_index)))
    seconds = time.perf_counter() - t0
    write_bytes(args.output, enc.data)
    h, w = photo.pixels.shape[:2]
    return (f"{args.output}: {len(enc.data)} bytes, {8 * len(enc.data) / (w * h):.4f} bpp, "
            f"λ={lambda_of_index(lam_index):.1f}, backend {backend.name}, {seconds:.2f} s")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    return run_reporting_errors(lambda: print(encode(args)))


if __name__ == "__main__":
    raise SystemExit(main())
