"""`python -m codec bench-refine`: what SGA+ buys over plain encoding, against its baselines.

On centre crops of validation photos at a λ ladder: the unrefined point, then each refinement method's
real bitstream (size and decoded PSNR) at several step counts. BD-rate is against the unrefined curve.
Writes refine_points.csv, refine_bd.csv, refine_gain.png and prints a Markdown table.
"""
from __future__ import annotations

import csv
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from .. import api
from ..data import list_images, spread
from ..imageio import Photo, read_rgb
from ..lambdas import index_of_lambda, lambda_of_index
from ..latent_refinement import RefineConfig, refine
from ..photo_refinement import measure
from ..runtime import CodecModel
from ..tiling import TileGeometry, analyse
from ..transforms import TorchTransforms
from .metrics import bd_rate

PRESETS = {
    # what `codec refine` runs by default: a sixth of "methods"' time
    "default": [(RefineConfig.method, RefineConfig.classes, RefineConfig.a, RefineConfig.tau_max)],
    "methods": [("ssl", 2, 2.3, 0.5), ("linear", 2, 2.3, 0.5), ("cosine", 2, 2.3, 0.5), ("atanh", 2, 2.3, 0.5),
                ("ste", 2, 2.3, 0.5), ("noise", 2, 2.3, 0.5)],
    "classes": [("ssl", 3, 2.3, 0.5), ("linear", 3, 2.3, 0.5), ("cosine", 3, 2.3, 0.5)],
    "sensitivity": [("ssl", 2, 1.5, 0.5), ("ssl", 2, 3.5, 0.5), ("ssl", 2, 2.3, 0.2), ("ssl", 2, 2.3, 1.0)],
}


def label(method, classes, a, tau_max) -> str:
    return f"{method}/{classes}c/a={a:g}/tmax={tau_max:g}"


def crops(data_dir, n: int, size: int) -> list[np.ndarray]:
    out = []
    for path in spread(list_images(data_dir), n):
        im = read_rgb(path)
        h, w = min(size, im.shape[0]) // 16 * 16, min(size, im.shape[1]) // 16 * 16
        y0, x0 = (im.shape[0] - h) // 2, (im.shape[1] - w) // 2
        out.append(np.ascontiguousarray(im[y0:y0 + h, x0:x0 + w]))
    return out


def run_one(model, pixels, lam_index, config, steps, checkpoints):
    """Points (steps, Point) of one method on one crop, plus seconds per step."""
    method, classes, a, tau_max = config
    lam = lambda_of_index(lam_index)
    photo = Photo(pixels)
    g = TileGeometry(pixels.shape[1], pixels.shape[0], api.DEFAULT_TILE_PX, model.cfg.levels)
    t = TorchTransforms(model.torch_model, lam)
    ys = [torch.from_numpy(y)[None] for y in analyse(t.image, t.latent, pixels, g)]
    x = torch.from_numpy(pixels.transpose(2, 0, 1).copy()).float().div(255)[None]
    found = {}

    def collect(step, loss, bpp, mse, latents=None):
        if latents is not None:
            found[step] = latents

    cfg = RefineConfig(method=method, classes=classes, a=a, tau_max=tau_max, steps=steps)
    # CPU time, not wall time: the figure stays true when other work shares the machine.
    t0 = time.process_time()
    refine(model.torch_model, x, lam, cfg, ys, collect, snapshots=set(checkpoints))
    per_step = (time.process_time() - t0) / steps
    points = []
    for step in sorted(found):
        enc = api.compress_latents(model, [z[0].numpy() for z in found[step]], photo, lam_index, beta=0.0)
        points.append((step, measure(model, enc.data, pixels, lam)))
    return points, per_step


def baseline(model, pixels, lam_index):
    photo = Photo(pixels)
    return measure(model, api.compress(model, photo, lam_index).data, pixels, lambda_of_index(lam_index))


def bd_rows(rows):
    curves = defaultdict(lambda: defaultdict(list))
    for r in rows:
        curves[(r["config"], r["steps"])][r["lambda"]].append((r["bpp"], r["psnr"]))
    mean = lambda pts: (float(np.mean([p[0] for p in pts])), float(np.mean([p[1] for p in pts])))
    ref = {lam: mean(p) for lam, p in curves[("unrefined", 0)].items()}
    lams = sorted(ref)
    out = []
    for (config, steps), by_lam in sorted(curves.items()):
        if config == "unrefined":
            continue
        pts = [mean(by_lam[lam]) for lam in lams]
        bd = bd_rate([ref[l][0] for l in lams], [ref[l][1] for l in lams], [p[0] for p in pts], [p[1] for p in pts])
        gain_db = float(np.mean([p[1] - ref[l][1] for p, l in zip(pts, lams)]))
        out.append({"config": config, "steps": steps, "bd_rate_percent": bd, "mean_psnr_change_db": gain_db})
    return out


def plot(bd, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for config in sorted({r["config"] for r in bd}):
        pts = sorted((r["steps"], r["bd_rate_percent"]) for r in bd if r["config"] == config and r["bd_rate_percent"] is not None)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=config)
    ax.set(xlabel="refinement steps", ylabel="BD-rate vs unrefined (%)", title="Latent refinement gain")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(data_dir, out_dir, model_path=None, lambdas=(128, 512, 2048, 8192), images=4, size=256, steps=200,
        checkpoints=(25, 50, 100, 200), presets=("methods",)):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = CodecModel.load(model_path)
    configs = [c for p in presets for c in PRESETS[p]]
    checkpoints = sorted({c for c in checkpoints if c <= steps} | {steps})
    rows, timings = [], []
    for i, pixels in enumerate(crops(data_dir, images, size)):
        for lam in lambdas:
            idx = index_of_lambda(lam)
            p = baseline(model, pixels, idx)
            rows.append({"image": i, "lambda": lam, "config": "unrefined", "steps": 0, **p.__dict__})
            for config in configs:
                points, per_step = run_one(model, pixels, idx, config, steps, checkpoints)
                timings.append(per_step / (pixels.shape[0] * pixels.shape[1] / 1e6))
                rows += [{"image": i, "lambda": lam, "config": label(*config), "steps": s, **pt.__dict__}
                         for s, pt in points]
        print(f"crop {i} done", flush=True)
    bd = bd_rows(rows)
    for name, data in (("refine_points.csv", rows), ("refine_bd.csv", bd)):
        with open(out_dir / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    plot(bd, out_dir / "refine_gain.png")
    lines = [f"CPU s per MP per step (mean over runs, {torch.get_num_threads()} thread(s)): {np.mean(timings):.2f}", "",
             "| method | steps | BD-rate vs unrefined | mean PSNR change |", "|---|---|---|---|"]
    for r in bd:
        v = "n/a" if r["bd_rate_percent"] is None else f"{r['bd_rate_percent']:+.2f} %"
        lines.append(f"| {r['config']} | {r['steps']} | {v} | {r['mean_psnr_change_db']:+.3f} dB |")
    text = "\n".join(lines)
    (out_dir / "refine_bd.md").write_text(text + "\n")
    print(text)
    return bd


def main(args):
    torch.set_num_threads(args.threads)
    run(args.data, args.out, args.model, tuple(args.lambdas), args.images, args.size, args.steps,
        tuple(args.checkpoints), tuple(args.presets))
