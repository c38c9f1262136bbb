"""Build the edge encoder: PyTorch -> ONNX (FP32, optionally INT8 Q/DQ) -> TensorRT engine, with checks.

    python export/build_engine.py --output-dir DIR [--model PATH] [--int8] [--max-size HxW]

Writes DIR/encoder.onnx and DIR/encoder_latent.onnx (the analysis is two graphs: image windows, then
the latent chain), with --int8 DIR/encoder.int8.onnx, the TensorRT engines under
DIR/engines/<TensorRT version + device>/ when tensorrt and a CUDA device exist, and DIR/report.json
with the result of every check: ONNX checker, the TensorRT parser's operators, MACs, ONNX Runtime against
PyTorch, and the folded analysis in emulated float16 storage (codec/half_precision.py; an engine keeps its
tensors in float16 wherever it does not run INT8).

Exit status: 0 every check passed and the engines were built; 1 a check failed (see report.json);
2 bad command line; 3 every check passed but no engine was built (tensorrt or a CUDA device missing).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = PROJECT_ROOT.parent / "shared" / "data" / "blades" / "drone_frames"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_ENGINE = 0, 1, 2, 3

log = logging.getLogger("build_engine")


def parse_size(text: str) -> tuple:
    m = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not m or not all(0 < int(v) <= 131072 for v in m.groups()):
        raise argparse.ArgumentTypeError(f"expected HxW in pixels, e.g. 3648x5472, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python export/build_engine.py", description=__doc__.split("\n\n")[0],
                                epilog="Exit status: 0 all passed and engines built, 1 a check failed, "
                                       "2 usage error, 3 checks passed but no engine (no tensorrt/CUDA).")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument("--int8", action="store_true", help="also calibrate and quantise (Q/DQ) and build INT8")
    p.add_argument("--max-size", type=parse_size, default=(5460, 8192),
                   help="largest photo HxW the engines must take (default 5460x8192, 45 MP)")
    p.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="real blade photos for the ORT checks")
    p.add_argument("--num-photos", type=int, default=3)
    p.add_argument("--lambdas", type=float, nargs="+", default=[256.0, 2048.0])
    p.add_argument("--calibration-dir", type=Path, help="calibration photos (default: blades/dtu_nordtank)")
    p.add_argument("--calibration-count", type=int, default=32)
    p.add_argument("--varied-dir", type=Path,
                   help="varied photos pooled in for the inner Conv inputs' INT8 ranges (default: shared/data/train)")
    p.add_argument("--no-varied", dest="varied", action="store_false",
                   help="calibrate every INT8 range on the calibration photos alone")
    p.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT builder workspace limit")
    p.add_argument("--tflops", type=float, default=5.0,
                   help="sustained TFLOP/s assumed for the projected 20 MP time (default 5)")
    p.add_argument("--ops-table", type=Path, help="TensorRT parser operator table (.tsv)")
    p.add_argument("--threads", type=int, default=1)
    return p


def stage(report: dict, name: str, fn):
    """Run one check, record its result (or the exception as a failure) and the time it took."""
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as e:  # a broken stage must be reported, not crash the remaining checks
        result = {"passed": False, "error": f"{type(e).__name__}: {e}"}
    result["seconds"] = round(time.perf_counter() - t0, 2)
    report["checks"][name] = result
    log.info("%-22s %s", name, "passed" if result.get("passed", True) else f"FAILED {result.get('error', '')}")
    return result


def photo_paths(args) -> list:
    from codec.data import list_images, spread
    if not args.photos.is_dir():
        raise FileNotFoundError(f"{args.photos}: photo folder not found (pass --photos DIR)")
    paths = list_images(args.photos)
    if not paths:
        raise FileNotFoundError(f"{args.photos}: no photos")
    return spread(paths, args.num_photos)


def onnx_stages(args, model, report: dict) -> dict:
    from codec import half_precision
    from codec.imageio import read_photo
    from codec.onnx_export import export_stamped
    from export import graph_checks, parity

    image, latent = export_stamped(model, args.output_dir)
    report["files"] = {"encoder": str(image), "encoder_latent": str(latent)}
    table = graph_checks.load_ops_table(args.ops_table) if args.ops_table else graph_checks.load_ops_table()

    def checker():
        r = {"encoder": graph_checks.run_checker(image), "encoder_latent": graph_checks.run_checker(latent)}
        return {"passed": all(v["passed"] for v in r.values()), **r}

    def operators():
        r = {"encoder": graph_checks.check_tensorrt_ops(image, table),
             "encoder_latent": graph_checks.check_tensorrt_ops(latent, table)}
        return {"passed": all(v.ok for v in r.values()), **{k: v.as_dict() for k, v in r.items()}}

    def macs():
        r = graph_checks.macs_report(image, latent, model.cfg.c1, tflops=args.tflops)
        return {"passed": r["within_budget"], **r}

    stage(report, "onnx_checker", checker)
    stage(report, "tensorrt_operators", operators)
    stage(report, "macs", macs)
    stage(report, "ort_vs_torch_fp32", lambda: parity.compare(model, image, latent, photo_paths(args),
                                                              args.lambdas, threads=args.threads))
    # the engine runs in float16 wherever it does not run INT8: a folded analysis can lose latents there
    stage(report, "fp16_storage", lambda: half_precision.check(
        model.torch_model.analysis.image, [read_photo(p).pixels for p in photo_paths(args)]))
    graphs = {"image": image, "latent": latent}
    if args.int8:
        graphs["image"] = int8_stages(args, model, report, image, latent, table)
    return graphs


def int8_stages(args, model, report, image, latent, table) -> Path:
    from calibration.calibration_set import CalibrationSet, varied_option
    from calibration.quantize import quantize_encoder
    from codec.onnx_export import export_int8_source
    from export import graph_checks, parity

    int8 = args.output_dir / "encoder.int8.onnx"
    cal = CalibrationSet(**({"folder": args.calibration_dir} if args.calibration_dir else {}),
                         count=args.calibration_count, **varied_option(args.varied, args.varied_dir))
    # a model with an INT8-tuned image analysis (codec/quantisation_aware.py) is quantised from that one
    source = export_int8_source(model, args.output_dir) or image
    report["files"]["encoder_int8_source"] = str(source)
    stage(report, "int8_quantisation", lambda: {**quantize_encoder(source, int8, cal), "calibration": cal.describe()})
    report["files"]["encoder_int8"] = str(int8)
    stage(report, "int8_tensorrt_operators", lambda: graph_checks.check_tensorrt_ops(int8, table).as_dict())
    # INT8 moves some latents across rounding boundaries by design: what must hold is that every
    # bitstream decodes; the agreement is reported, and the RD cost is measured by `python -m calibration rd`.
    stage(report, "ort_int8_decodes", lambda: parity.compare(model, int8, latent, photo_paths(args), args.lambdas,
                                                             min_agreement=0.0, threads=args.threads))
    return int8


def engine_stage(args, model, report: dict, graphs: dict) -> bool:
    from edge.backends import BackendError
    from export import tensorrt_build

    try:
        tensorrt_build.toolchain()
    except BackendError as e:
        report["engine"] = {"built": False, "reason": str(e)}
        log.warning("engine NOT built: %s", e)
        return False
    result = stage(report, "tensorrt_engine", lambda: tensorrt_build.build_engines(
        graphs["image"], graphs["latent"], args.output_dir, model, args.max_size, args.int8, args.workspace_mb))
    report["engine"] = {"built": result.get("passed", False), **({"error": result["error"]} if "error" in result else {})}
    return result.get("passed", False)


def run(args) -> int:
    from codec.runtime import CodecModel
    from codec.service.atomic_files import write_bytes

    args.output_dir.mkdir(parents=True, exist_ok=True)
    # An earlier run's report must not outlive a run that fails before writing its own.
    (args.output_dir / "report.json").unlink(missing_ok=True)
    model = CodecModel.load(args.model)
    report = {"model": str(model.path), "model_id": model.model_id.hex(), "int8": args.int8,
              "max_size_hw": list(args.max_size), "checks": {}}
    graphs = onnx_stages(args, model, report)
    checks_ok = all(c.get("passed", False) for c in report["checks"].values())
    if checks_ok:
        built = engine_stage(args, model, report, graphs)
        checks_ok = all(c.get("passed", False) for c in report["checks"].values())
    else:
        built = False
        report["engine"] = {"built": False, "reason": "not attempted: a check failed"}
    report["passed"] = checks_ok
    write_bytes(args.output_dir / "report.json", json.dumps(report, indent=1, default=str).encode())
    status = EXIT_FAILED if not checks_ok else (EXIT_OK if built else EXIT_NO_ENGINE)
    print(summary(report, args.output_dir, status))
    return status


def summary(report: dict, out_dir: Path, status: int) -> str:
    lines = [f"{name}: {'passed' if c.get('passed') else 'FAILED'}" for name, c in report["checks"].items()]
    m = report["checks"].get("macs", {})
    if "macs_per_pixel" in m:
        p = m["projected_photo"]
        lines.append(f"MACs/pixel {m['macs_per_pixel']} (budget 100000); {p['megapixels']} MP projected "
                     f"{p['seconds']} s at {p['assumed_tflops']} TFLOP/s")
    engine = report.get("engine", {})
    lines.append("engine: built" if engine.get("built") else
                 f"engine NOT built: {engine.get('reason') or engine.get('error')}")
    lines.append(f"report: {out_dir / 'report.json'} (exit status {status})")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except Exception as e:  # model file or output directory unusable: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
