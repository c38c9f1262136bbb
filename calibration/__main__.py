"""python -m calibration quantize|rd: INT8 quantisation of the edge encoder and what it costs."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from codec.errors import CodecError
from codec.service.atomic_files import write_bytes


def build_parser():
    p = argparse.ArgumentParser(prog="python -m calibration", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="encoder.onnx -> encoder.int8.onnx (QDQ, symmetric int8, per-channel)")
    q.add_argument("--onnx", required=True, type=Path)
    q.add_argument("-o", "--output", required=True, type=Path)
    q.add_argument("--calibration-dir", type=Path)
    q.add_argument("--count", type=int, default=32)
    q.add_argument("--varied-dir", type=Path,
                   help="varied photos pooled in for the inner Conv inputs' ranges (default: shared/data/train)")
    q.add_argument("--no-varied", dest="varied", action="store_false",
                   help="calibrate every range on the calibration photos alone")
    q.add_argument("--method", choices=("minmax", "percentile", "entropy"),
                   help="calibration ranges (default: percentile, 99.99th, for both targets)")
    q.add_argument("--target", default="tensorrt", choices=("tensorrt", "cpu"),
                   help="tensorrt: symmetric Q/DQ for TensorRT (default); cpu: QLinearConv for ONNX Runtime on CPU")
    q.add_argument("--no-equalise", dest="equalise", action="store_false",
                   help="cpu target: one output range per QLinearConv tensor instead of one per channel")
    r = sub.add_parser("rd", help="INT8 vs FP32: BD-rate, dB and speed-up under ONNX Runtime")
    r.add_argument("--onnx-dir", required=True, type=Path, help="folder with encoder[.int8].onnx, encoder_latent.onnx")
    r.add_argument("--model")
    r.add_argument("--data", type=Path)
    r.add_argument("--max-images", type=int, default=10)
    r.add_argument("--lambdas", type=float, nargs="+", default=[64, 256, 1024, 4096, 8192])
    r.add_argument("--int8-graph", default="encoder.int8.onnx",
                   help="INT8 graph in --onnx-dir to compare with encoder.onnx (e.g. encoder.int8cpu.onnx)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--out", type=Path, help="write the result as JSON here too")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "quantize":
            from .calibration_set import CalibrationSet, varied_option
            from .quantize import quantize_encoder
            cal = CalibrationSet(**({"folder": args.calibration_dir} if args.calibration_dir else {}), count=args.count,
                                 **varied_option(args.varied, args.varied_dir))
            result = quantize_encoder(args.onnx, args.output, cal, args.method, args.target, args.equalise)
        else:
            from codec.runtime import CodecModel
            from .rd_cost import DEFAULT_DATA, measure
            result = measure(CodecModel.load(args.model), args.onnx_dir, args.data or DEFAULT_DATA,
                             args.max_images, tuple(args.lambdas), args.threads, args.int8_graph)
        print(json.dumps(result, indent=1))   # before --out: a bad --out path must not lose a long measurement
        if args.command == "rd" and args.out:
            write_bytes(args.out, json.dumps(result, indent=1).encode())
    except (CodecError, ValueError) as e:   # ValueError: an argument out of range, e.g. a λ off the grid
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    return 0 if result.get("passed", result.get("within_target", True)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
