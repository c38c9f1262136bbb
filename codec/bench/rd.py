"""`python -m codec bench --data DIR --out DIR`: this codec and the anchors on the same images, same run.

Writes per_image.csv, summary.csv (mean RD point per codec and setting, with s/MP), bd_rate.csv
(BD-rate in PSNR and MS-SSIM of every codec against HEIC), head_to_head.csv (ours against each anchor
directly) and rd.png, and prints both as Markdown; then where ours loses to HEIC (gap.py):
gap_by_quality.csv, per_image_bd.csv and gap.md. With --archive-steps N it also runs ours as the ground
station archives a photo (SGA+ refinement, N steps), as the codec "ours-archive".

Why the head-to-head table: two codecs' BD-rates against HEIC are averages over different PSNR ranges (each
codec's overlap with HEIC), so their difference does not say which of the two needs fewer bits. Session 20's
table put ours at +35.8 % and JPEG XL at +32.2 % against HEIC on blades, yet over their common range ours
needs 11 % fewer bits than JPEG XL.
"""
from __future__ import annotations

import csv
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .. import api
from ..data import list_images, spread
from ..errors import CodecError
from ..imageio import Photo, read_rgb
from ..lambdas import index_of_lambda
from ..rate_aware_rounding import DEFAULT_BETA
from ..runtime import CodecModel
from . import gap
from .anchors import Anchor, anchors
from .metrics import bd_rate, common_range, ms_ssim, psnr

DEFAULT_LAMBDAS = (64, 256, 1024, 4096, 8192)
REFERENCE = "HEIC"
ARCHIVE = "ours-archive"
OURS = "ours"
FIELDS = ["dataset", "image", "codec", "setting", "bytes", "bpp", "psnr", "ms_ssim", "enc_s_per_mp", "dec_s_per_mp"]


def ours(model: CodecModel, lambdas, threads: int, beta: float = DEFAULT_BETA) -> Anchor:
    """beta: z1's rate-aware rounding (codec/rate_aware_rounding.py; the default is the encoder's)."""
    def encode(pixels, lam):
        return api.compress(model, Photo(pixels), index_of_lambda(lam), threads=threads, beta=beta).data

    def decode(data):
        return api.decompress(model, data, threads=threads).pixels

    return Anchor(OURS, list(lambdas), encode, decode)


def archived(model: CodecModel, lambdas, steps: int, threads: int) -> Anchor:
    """Ours as the ground station archives a photo: SGA+ refinement (`codec refine`'s method) for `steps`
    steps, never worse than plain encoding on R + λ·MSE. Its encode time is the refinement's."""
    from ..latent_refinement import RefineConfig
    from ..photo_refinement import refine_photo

    cfg = RefineConfig(steps=steps)

    def encode(pixels, lam):
        return refine_photo(model, Photo(pixels), index_of_lambda(lam), cfg).data

    return Anchor(ARCHIVE, list(lambdas), encode, ours(model, lambdas, threads).decode)


def measure(codec: Anchor, pixels: np.ndarray, setting) -> dict:
    mp = pixels.shape[0] * pixels.shape[1] / 1e6
    t0 = time.perf_counter()
    data = codec.encode(pixels, setting)
    t1 = time.perf_counter()
    out = codec.decode(data)
    t2 = time.perf_counter()
    return {"codec": codec.name, "setting": setting, "bytes": len(data),
            "bpp": 8 * len(data) / (pixels.shape[0] * pixels.shape[1]), "psnr": psnr(pixels, out),
            "ms_ssim": ms_ssim(pixels, out), "enc_s_per_mp": (t1 - t0) / mp, "dec_s_per_mp": (t2 - t1) / mp}


def summarise(rows: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["codec"], r["setting"])].append(r)
    out = []
    for (dataset, codec, setting), rs in groups.items():
        mean = {k: float(np.mean([r[k] for r in rs])) for k in FIELDS[5:]}
        out.append({"dataset": dataset, "codec": codec, "setting": setting, "images": len(rs), **mean})
    return out


def _by_dataset(summary: list[dict]):
    """(dataset, {codec: its mean RD points}) for each dataset, in name order."""
    for dataset in sorted({s["dataset"] for s in summary}):
        points = defaultdict(list)
        for s in summary:
            if s["dataset"] == dataset:
                points[s["codec"]].append(s)
        yield dataset, points


def _bd_rates(anchor_pts, pts) -> dict:
    """BD-rate of pts against anchor_pts in PSNR and in MS-SSIM."""
    return {f"bd_rate_{metric}": bd_rate([p["bpp"] for p in anchor_pts], [_q(p, metric) for p in anchor_pts],
                                         [p["bpp"] for p in pts], [_q(p, metric) for p in pts])
            for metric in ("psnr", "ms_ssim")}


def bd_table(summary: list[dict]) -> list[dict]:
    out = []
    for dataset, points in _by_dataset(summary):
        ref = points.get(REFERENCE)
        if ref is None:
            continue
        for codec, pts in points.items():
            row = {"dataset": dataset, "codec": codec, **_bd_rates(ref, pts)}
            row["enc_s_per_mp"] = float(np.mean([p["enc_s_per_mp"] for p in pts]))
            row["dec_s_per_mp"] = float(np.mean([p["dec_s_per_mp"] for p in pts]))
            out.append(row)
    return out


def head_to_head(summary: list[dict], codecs=("ours", ARCHIVE)) -> list[dict]:
    """BD-rate of each of `codecs` present against every other codec, each pair over its own common range
    (PSNR, in dB)."""
    out = []
    for dataset, points in _by_dataset(summary):
        for codec, other in [(c, o) for c in codecs if c in points for o in points if o != c]:
            ours_pts, pts = points[codec], points[other]
            row = {"dataset": dataset, "codec": codec, "against": other, **_bd_rates(pts, ours_pts)}
            row["psnr_from"], row["psnr_to"] = common_range([p["psnr"] for p in pts],
                                                            [p["psnr"] for p in ours_pts])
            out.append(row)
    return out


def _q(point, metric):
    """MS-SSIM in dB (-10 log10(1 - MS-SSIM)), the usual scale for BD computations."""
    return point["psnr"] if metric == "psnr" else -10 * np.log10(max(1 - point["ms_ssim"], 1e-10))


def write_csv(path: Path, rows: list[dict]):
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(summary: list[dict], path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({s["dataset"] for s in summary})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for codec in sorted({s["codec"] for s in summary}):
            pts = sorted((s["bpp"], s["psnr"]) for s in summary if s["dataset"] == dataset and s["codec"] == codec)
            if pts:
                ax.plot(*zip(*pts), marker="o", lw=2.5 if codec == "ours" else 1.2, label=codec)
        ax.set(title=dataset, xlabel="bits per pixel (whole file)", ylabel="PSNR (dB, RGB)")
        ax.set_xlim(0, 2.5)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(bd: list[dict]) -> str:
    lines = ["| dataset | codec | BD-rate vs HEIC (PSNR) | BD-rate vs HEIC (MS-SSIM) | encode s/MP | decode s/MP |",
             "|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a (no overlap)" if v is None else f"{v:+.1f} %"
    for r in bd:
        lines.append(f"| {r['dataset']} | {r['codec']} | {fmt(r['bd_rate_psnr'])} | {fmt(r['bd_rate_ms_ssim'])} "
                     f"| {r['enc_s_per_mp']:.3f} | {r['dec_s_per_mp']:.3f} |")
    return "\n".join(lines)


def head_to_head_markdown(rows: list[dict]) -> str:
    lines = ["| dataset | codec | against | BD-rate (PSNR) | BD-rate (MS-SSIM) | common PSNR range |",
             "|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a (no overlap)" if v is None else f"{v:+.1f} %"
    for r in rows:
        span = "none" if r["psnr_from"] is None else f"{r['psnr_from']:.1f}–{r['psnr_to']:.1f} dB"
        lines.append(f"| {r['dataset']} | {r['codec']} | {r['against']} | {fmt(r['bd_rate_psnr'])} "
                     f"| {fmt(r['bd_rate_ms_ssim'])} | {span} |")
    return "\n".join(lines)


def bench_images(folder, max_images: int) -> list[Path]:
    """The folder's images, max_images of them evenly spaced (0: all); an empty folder is an error."""
    paths = list_images(folder)
    paths = spread(paths, max_images) if max_images else paths
    if not paths:
        raise CodecError(f"no images in {folder}")
    return paths


def contenders(model: CodecModel, lambdas, threads: int, codecs=None, beta: float = DEFAULT_BETA,
               archive_steps: int = 0) -> list[Anchor]:
    """Ours, ours as archived (with archive_steps), then the anchors; only those named in `codecs` if given
    (with archive_steps the archive path always runs)."""
    archive = [archived(model, lambdas, archive_steps, threads)] if archive_steps > 0 else []
    every = [ours(model, lambdas, threads, beta)] + archive + anchors(threads)
    if not codecs:
        return every
    if archive and ARCHIVE not in codecs:
        codecs = [*codecs, ARCHIVE]     # asking for the archive path and naming codecs should not drop it
    unknown = set(codecs) - {c.name for c in every}
    if unknown:
        raise CodecError(f"unknown codec {', '.join(sorted(unknown))}: choose from "
                         + ", ".join(c.name for c in every))
    return [c for c in every if c.name in codecs]


def run(data_dirs, out_dir, model_path=None, lambdas=DEFAULT_LAMBDAS, max_images=0, threads=2,
        codecs=None, archive_steps: int = 0, beta: float = DEFAULT_BETA) -> list[dict]:
    """archive_steps: also run ours as archived at the ground (SGA+ for that many steps per photo; 0: not).
    beta: our encoder's rate-aware rounding."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = CodecModel.load(model_path)
    codecs_run = contenders(model, lambdas, threads, codecs, beta, archive_steps)
    rows = []
    for d in data_dirs:
        for path in bench_images(d, max_images):
            pixels = read_rgb(path)
            for codec in codecs_run:
                for setting in codec.settings:
                    rows.append({"dataset": Path(d).name, "image": path.name, **measure(codec, pixels, setting)})
            print(f"{Path(d).name}/{path.name} done", flush=True)
    rows = [{k: r[k] for k in FIELDS} for r in rows]
    summary = summarise(rows)
    bd, pairs = bd_table(summary), head_to_head(summary)
    write_csv(out_dir / "per_image.csv", rows)
    write_csv(out_dir / "summary.csv", summary)
    write_csv(out_dir / "bd_rate.csv", bd)
    write_csv(out_dir / "head_to_head.csv", pairs)
    plot(summary, out_dir / "rd.png")
    text = markdown(bd) + "\n\nOurs against each codec directly:\n\n" + head_to_head_markdown(pairs)
    (out_dir / "bd_rate.md").write_text(text + "\n")
    print(text)
    write_gap(rows, summary, out_dir)
    return bd


def write_gap(rows: list[dict], summary: list[dict], out_dir: Path, codec: str = "ours"):
    gaps = gap.gap_by_quality(summary, codec, REFERENCE)
    images = gap.per_image_bd(rows, codec, REFERENCE)
    write_csv(out_dir / "gap_by_quality.csv", gaps)
    write_csv(out_dir / "per_image_bd.csv", images)
    text = gap.markdown(gaps, images, codec, REFERENCE)
    (out_dir / "gap.md").write_text(text + "\n")
    print(text)


def main(args):
    run(args.data, args.out, args.model, tuple(args.lambdas), args.max_images, args.threads, args.codecs,
        args.archive_steps, args.beta)
