"""Command line: compress, decompress, info, train, export-model.

Every user error ends with one line on stderr and a non-zero exit status, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import CodecError


def _beta_option(parser):
    from .rate_aware_rounding import DEFAULT_BETA, PSNR_BETA
    parser.add_argument("--beta", type=float, default=DEFAULT_BETA,
                        help=f"z1's rate-aware rounding (default {DEFAULT_BETA:g}: plain rounding, which keeps faint "
                             f"defects; {PSNR_BETA:g} saves ~1 %% of the bits on PSNR and costs faint defects ~8 %%)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m codec", description="Learned codec for blade photos")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="photo -> .nlic bitstream")
    c.add_argument("input")
    c.add_argument("-o", "--output", required=True)
    rate = c.add_mutually_exclusive_group(required=True)
    rate.add_argument("--lambda", dest="lam", type=float, help="rate-distortion trade-off, 64..8192")
    rate.add_argument("--bpp", type=float, help="largest file in bits per pixel (λ is searched)")
    rate.add_argument("--bytes", type=int, help="largest file in bytes (λ is searched)")
    c.add_argument("--model", help="model file (default: the bundled model)")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--tile", type=int, default=1024, help="coding tile size in pixels")
    _beta_option(c)

    d = sub.add_parser("decompress", help=".nlic bitstream -> .png/.tif/.jpg with the photo's metadata")
    d.add_argument("input")
    d.add_argument("-o", "--output", required=True)
    d.add_argument("--model")
    d.add_argument("--threads", type=int, default=1)

    i = sub.add_parser("info", help="print a bitstream's header as JSON")
    i.add_argument("input")

    t = sub.add_parser("train", help="train a model (resumable)")
    t.add_argument("--config", required=True)
    t.add_argument("--steps", type=int, default=None,
                   help="override the config's step count (its run_steps where it has them)")
    t.add_argument("--run-dir", default="", help="override the config's run directory")
    t.add_argument("--threads", type=int, default=None, help="override the config's thread count")
    t.add_argument("--processes", type=int, default=None,
                   help="override the config's data-parallel process count (each runs --threads threads)")
    t.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="stop (checkpoint and validate) after S CPU seconds of this run")

    e = sub.add_parser("export-model", help="float weights -> complete model (integer priors, CDF tables)")
    e.add_argument("--weights", required=True, help="a training run's best.npz or last.pt")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--int8-analysis", help="a quantisation-aware run's last.npz, tuned against --weights: its "
                                           "image analysis is what INT8 graphs are made from")
    b = sub.add_parser("bench", help="rate-distortion and speed against JPEG, WebP, JPEG 2000, AVIF, JPEG XL, HEIC")
    b.add_argument("--data", action="append", required=True, help="image folder (repeatable)")
    b.add_argument("--out", required=True)
    b.add_argument("--model")
    b.add_argument("--lambdas", type=float, nargs="+", default=[64, 256, 1024, 4096, 8192])
    b.add_argument("--max-images", type=int, default=0)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--codecs", nargs="+", help="subset of codecs to run (names as in the table)")
    b.add_argument("--archive-steps", type=int, default=0,
                   help="also bench ours as archived at the ground: SGA+ refinement for this many steps per photo")
    _beta_option(b)
    r = sub.add_parser("refine", help="SGA+ test-time latent refinement of one photo -> .nlic")
    r.add_argument("input", help="original photo, or a .nlic bitstream (refines its reconstruction)")
    r.add_argument("-o", "--output", required=True)
    r.add_argument("--lambda", dest="lam", type=float, required=True)
    r.add_argument("--method", default="ssl", choices=["ssl", "linear", "cosine", "atanh", "ste", "noise"])
    r.add_argument("--classes", type=int, default=2, choices=[2, 3])
    r.add_argument("--steps", type=int, default=500)
    r.add_argument("--time-budget", type=float, default=0.0, help="seconds in all (0: no limit)")
    r.add_argument("--a", type=float, default=2.3, help="SSL sharpness")
    r.add_argument("--tau-max", type=float, default=0.5)
    r.add_argument("--model")
    r.add_argument("--threads", type=int, default=2)

    br = sub.add_parser("bench-refine", help="SGA+ and baselines: BD-rate vs unrefined, gain vs steps")
    br.add_argument("--data", default="../shared/data/blades/drone_frames")
    br.add_argument("--out", required=True)
    br.add_argument("--model")
    br.add_argument("--lambdas", type=float, nargs="+", default=[128, 512, 2048, 8192])
    br.add_argument("--images", type=int, default=4)
    br.add_argument("--size", type=int, default=256, help="centre crop size in pixels")
    br.add_argument("--steps", type=int, default=200)
    br.add_argument("--checkpoints", type=int, nargs="+", default=[25, 50, 100, 200])
    br.add_argument("--presets", nargs="+", default=["methods"], choices=["default", "methods", "classes", "sensitivity"])
    br.add_argument("--threads", type=int, default=1)

    bt = sub.add_parser("bench-train", help="training steps/s of CPU training variants (run on an idle machine)")
    bt.add_argument("--variants", nargs="+", default=["baseline", "channels_last", "one_thread", "crop128_batch16",
                                                      "compile"])
    bt.add_argument("--steps", type=int, default=10)
    bt.add_argument("--warmup", type=int, default=3)

    bl = sub.add_parser("bench-ceiling", help="PSNR from unquantised vs rounded latents: do the transforms limit?")
    bl.add_argument("--data", action="append", required=True, help="image folder (repeatable)")
    bl.add_argument("--model")
    bl.add_argument("--lambdas", type=float, nargs="+", default=[64, 1024, 8192])
    bl.add_argument("--max-images", type=int, default=6)

    bg = sub.add_parser("bench-gdn", help="how far from linear each GDN works on real photos (Γ|x|/β)")
    bg.add_argument("--data", default="../shared/data/blades/drone_frames")
    bg.add_argument("--model", help="model file, float weights (a run's last.npz) or checkpoint (.pt)")
    bg.add_argument("--lambda", dest="lam", type=float, default=1024.0)
    bg.add_argument("--max-images", type=int, default=4)

    bv = sub.add_parser("bench-curve", help="steps to the BD-rate targets if training keeps its pace (power-law fit)")
    bv.add_argument("--history", default=None, help="CSV of model, step, blades, kodak (default: docs/results)")
    bv.add_argument("--since", type=int, default=36000, help="fit the models from this step on (default: the "
                    "last architecture change)")
    bv.add_argument("--steps-per-s", type=float, default=0.35, help="training speed for the days column")

    bk = sub.add_parser("bench-blocks", help="one photo's error by block class (flat to edges): ours decoded, "
                        "its unquantised ceiling, HEIC")
    bk.add_argument("image")
    bk.add_argument("--lambdas", type=float, nargs="+", default=[1024, 8192])
    bk.add_argument("--heic", type=int, nargs="+", default=[50, 60], help="HEIC qualities")
    bk.add_argument("--model")

    br = sub.add_parser("bench-defect-reach", help="share of faint defects' contrast kept from unquantised vs "
                        "rounded latents: does a model lose them in its transforms or in z1's rounding?")
    br.add_argument("--data", help="folder of photos to draw the defects on as well as the synthetic shell")
    br.add_argument("--max-images", type=int, default=4, help="photos taken evenly from --data (0: all)")
    br.add_argument("--model")
    br.add_argument("--against", nargs="+", metavar="MODEL", help="other model files to measure the same way")
    br.add_argument("--lambdas", type=float, nargs="+", default=[256, 1024])

    bf = sub.add_parser("bench-defects", help="bits each codec needs to keep half the contrast of faint cracks "
                        "and pits drawn on a blade shell (and on photos with --data)")
    bf.add_argument("--out", required=True)
    bf.add_argument("--data", help="folder of photos to draw the defects on as well")
    bf.add_argument("--max-images", type=int, default=4, help="photos taken evenly from --data (0: all)")
    bf.add_argument("--codecs", nargs="+", help="only these (names as in the RD benchmark)")
    bf.add_argument("--threads", type=int, default=1)
    bf.add_argument("--model")
    bf.add_argument("--against", nargs="+", metavar="MODEL", help="other model files of ours to code with too, "
                    "each also compared with --model's defect by defect")
    bf.add_argument("--archive-steps", type=int, default=0, help="also code ours as archived at the ground "
                    "(SGA+ for this many steps per picture and λ), compared with ours defect by defect")
    _beta_option(bf)

    bn = sub.add_parser("bench-runs", help="coded validation RD of training runs, BD-rate against the first")
    bn.add_argument("runs", nargs="+", help="run directories (their last.npz) or model files")
    bn.add_argument("--recode", action="store_true", help="code every run's weights again with today's encoder "
                    "(frames, λs and calibration photos from --config) instead of reading the recorded figures; an "
                    "exported model file codes as it ships, with its own priors, equalisation and γ floor")
    bn.add_argument("--config", help="training config whose validation settings --recode uses (default: the "
                    "default run's)")

    bc = sub.add_parser("bench-coder", help="rANS throughput and overhead on real photos' symbols")
    bc.add_argument("--data", default="../shared/data/blades/drone_frames")
    bc.add_argument("--max-images", type=int, default=4)
    bc.add_argument("--model")
    bb = sub.add_parser("bench-budget", help="encodes per photo when a byte budget picks λ: bisection vs search")
    bb.add_argument("--data", default="../shared/data/blades/drone_frames")
    bb.add_argument("--max-images", type=int, default=13)
    bb.add_argument("--consecutive", action="store_true", help="the first photos in name order, not spread")
    bb.add_argument("--bpp", type=float, nargs="+", default=[0.1, 0.3], help="budgets in bits per pixel")
    bb.add_argument("--model")
    bb.add_argument("--threads", type=int, default=1)
    bm = sub.add_parser("bench-memory", help="peak RSS and time of encode/decode of a large photo")
    bm.add_argument("--megapixels", type=float, default=20.0)
    bm.add_argument("--threads", type=int, default=2)
    bm.add_argument("--model")
    return p


def read_bytes(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CodecError(f"{path}: {e.strerror}") from None


def write_bytes(path, data: bytes):
    """Write to a temporary name, fsync, rename: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CodecError(f"{path}: cannot write ({e.strerror})") from None


def cmd_compress(args):
    from . import api
    from .imageio import read_photo
    from .lambdas import index_of_lambda, lambda_of_index
    from .runtime import CodecModel

    model = CodecModel.load(args.model)
    photo = read_photo(args.input)
    h, w = photo.pixels.shape[:2]
    opts = {"threads": args.threads, "tile_px": args.tile, "beta": args.beta}
    try:
        if args.lam is not None:
            enc = api.compress(model, photo, index_of_lambda(args.lam), **opts)
        else:
            budget = args.bytes if args.bytes is not None else api.bytes_for_bpp(args.bpp, w, h)
            enc = api.compress_to_budget(model, photo, budget, **opts)
    except ValueError as e:
        raise CodecError(str(e)) from None
    write_bytes(args.output, enc.data)
    print(f"{args.output}: {len(enc.data)} bytes, {8 * len(enc.data) / (w * h):.4f} bpp, "
          f"λ={lambda_of_index(enc.lambda_index):.1f}")


def cmd_decompress(args):
    from . import api
    from .imageio import write_photo
    from .runtime import CodecModel

    data = read_bytes(args.input)
    model = CodecModel.load(args.model)
    write_photo(args.output, api.decompress(model, data, threads=args.threads))


def cmd_info(args):
    from . import container

    data = read_bytes(args.input)
    c = container.read(data, lambda levels: 2 ** (levels - 1))
    from .lambdas import lambda_of_index
    info = c.header.as_dict()
    info["lambda"] = round(lambda_of_index(c.header.lambda_index), 3)
    info["bytes"] = len(data)
    info["bpp"] = round(8 * len(data) / (c.header.width * c.header.height), 5)
    info["tile_bytes"] = [len(t) for t in c.tiles]
    info["metadata"] = {{container.META_EXIF: "exif", container.META_XMP: "xmp"}.get(k, str(k)): len(v)
                        for k, v in c.metadata.items()}
    print(json.dumps(info, indent=1))


def cmd_refine(args):
    from tqdm import tqdm
    from . import api
    from .imageio import read_photo
    from .lambdas import index_of_lambda
    from .latent_refinement import RefineConfig
    from .photo_refinement import passes, refine_photo
    from .runtime import CodecModel

    model = CodecModel.load(args.model)
    api._set_threads(args.threads)
    if Path(args.input).suffix.lower() == ".nlic":
        photo = api.decompress(model, read_bytes(args.input), threads=args.threads)
    else:
        photo = read_photo(args.input)
    try:
        cfg = RefineConfig(method=args.method, classes=args.classes, steps=args.steps, a=args.a,
                           tau_max=args.tau_max, time_budget=args.time_budget)
        index = index_of_lambda(args.lam)
    except ValueError as e:
        raise CodecError(str(e)) from None
    total = cfg.steps * passes(model, *photo.pixels.shape[:2])   # large photos: cfg.steps per coding tile
    with tqdm(total=total, desc="refine", unit="step", disable=not sys.stderr.isatty()) as bar:
        def step(i, loss, bpp, mse):
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", bpp=f"{bpp:.4f}")
        result = refine_photo(model, photo, index, cfg, on_step=step)
    write_bytes(args.output, result.data)
    b, a = result.before, result.after
    kept = "refined" if result.kept_refined else "unrefined (refinement did not lower the objective)"
    print(f"before: {b.bpp:.4f} bpp {b.psnr:.2f} dB (loss {b.loss:.4f}); after {result.steps} steps: "
          f"{a.bpp:.4f} bpp {a.psnr:.2f} dB (loss {a.loss:.4f}); wrote {kept} in {result.seconds:.1f} s")


def _lazy(module: str, func: str = "main"):
    """A handler that imports its module only when its command runs (keeps `info` and `--help` fast)."""
    def run(args):
        import importlib
        getattr(importlib.import_module(module, __package__), func)(args)
    return run


COMMANDS = {
    "compress": cmd_compress,
    "decompress": cmd_decompress,
    "info": cmd_info,
    "refine": cmd_refine,
    "train": _lazy(".train"),
    "export-model": _lazy(".export_model"),
    "bench": _lazy(".bench.rd"),
    "bench-refine": _lazy(".bench.refinement"),
    "bench-coder": _lazy(".bench.coder"),
    "bench-train": _lazy(".bench.training_speed"),
    "bench-runs": _lazy(".bench.compare_runs"),
    "bench-curve": _lazy(".bench.learning_curve"),
    "bench-blocks": _lazy(".bench.block_gap"),
    "bench-defects": _lazy(".bench.defect_visibility"),
    "bench-defect-reach": _lazy(".bench.defect_reach"),
    "bench-ceiling": _lazy(".bench.ceiling"),
    "bench-gdn": _lazy(".bench.gdn_strength"),
    "bench-memory": _lazy(".bench.memory"),
    "bench-budget": _lazy(".bench.budget"),
}


def run_reporting_errors(action) -> int:
    """Exit status of a command: user errors become one line on stderr, never a traceback."""
    try:
        action()
    except CodecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_errors(lambda: COMMANDS[args.command](args))
