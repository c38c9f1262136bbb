"""`python -m codec bench-memory --megapixels 20`: peak RSS and time of encode and decode of a large photo,
each in a fresh process so the figures are not mixed with anything else."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
import numpy as np
from codec import api
from codec.imageio import Photo
from codec.runtime import CodecModel
mode, path, h, w, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
model = CodecModel.load(sys.argv[6] or None)
t0 = time.perf_counter()
if mode == "encode":
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = (128 + 60 * np.sin(xx / 300.0) + 40 * np.cos(yy / 200.0)).astype(np.uint8)[..., None].repeat(3, 2)
    pixels = np.clip(pixels + rng.integers(-6, 7, pixels.shape), 0, 255).astype(np.uint8)
    t0 = time.perf_counter()
    data = api.compress(model, Photo(pixels), 128, threads=threads).data
    open(path, "wb").write(data)
else:
    photo = api.decompress(model, open(path, "rb").read(), threads=threads)
seconds = time.perf_counter() - t0
print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(megapixels: float, threads: int, model: str | None) -> list[dict]:
    w = int(round((megapixels * 1e6 * 3 / 2) ** 0.5))
    h = int(round(megapixels * 1e6 / w))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "big.nlic")
        for mode in ("encode", "decode"):
            out = subprocess.run([sys.executable, "-c", CHILD, mode, path, str(h), str(w), str(threads), model or ""],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r.update(width=w, height=h, s_per_mp=r["seconds"] / (w * h / 1e6))
            results.append(r)
    return results


def main(args):
    rows = measure(args.megapixels, args.threads, args.model)
    print("| step | image | threads | seconds | s/MP | peak RSS (MB) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['width']}x{r['height']} | {args.threads} | {r['seconds']:.1f} | "
              f"{r['s_per_mp']:.2f} | {r['peak_rss_mb']:.0f} |")
    print(json.dumps(rows))
    return rows
