"""`python -m codec bench-budget`: encodes per photo and seconds per megapixel when a byte budget picks λ,
for bisection of the λ grid (the search until session 10), the interpolating search from the middle
(`codec/rate_search.py`), and the same search started at the previous photo's answer (what the edge does),
on the same photos in one run. Every strategy must choose the index bisection chooses."""
from __future__ import annotations

import statistics
import time

from .. import api
from ..data import list_images, spread
from ..errors import CodecError
from ..imageio import read_photo
from ..lambdas import GRID_SIZE
from ..runtime import CodecModel


def bisection(model, photo, max_bytes: int, threads: int):
    """The reference: plain bisection of the whole grid, one whole encode per try. (index or None, tries)."""
    lo, hi, best, tries = 0, GRID_SIZE - 1, None, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        tries += 1
        if len(api.compress(model, photo, mid, threads=threads).data) <= max_bytes:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best, tries


def interpolating(model, photo, max_bytes: int, threads: int, start=None):
    try:
        enc = api.compress_to_budget(model, photo, max_bytes, threads=threads, start_index=start)
    except CodecError:   # below the smallest file: bisection says None too
        return None, None
    return enc.lambda_index, enc.tries


def run(model, paths, bpps, threads: int) -> dict:
    api.compress(model, read_photo(paths[0]), 0, threads=threads)   # compile and allocate before timing
    rows = []
    for bpp in bpps:
        previous = None
        for path in paths:
            photo = read_photo(path)
            h, w = photo.pixels.shape[:2]
            max_bytes = api.bytes_for_bpp(bpp, w, h)
            row = {"photo": path.name, "bpp": bpp, "megapixels": w * h / 1e6}
            strategies = (("bisection", lambda: bisection(model, photo, max_bytes, threads)),
                          ("interpolating", lambda: interpolating(model, photo, max_bytes, threads)),
                          ("from previous photo", lambda: interpolating(model, photo, max_bytes, threads, previous)))
            for name, search in strategies:
                t0 = time.perf_counter()
                index, tries = search()
                row[name] = {"index": index, "tries": tries, "s_per_mp": (time.perf_counter() - t0) / row["megapixels"]}
            previous = row["bisection"]["index"]
            rows.append(row)
    return {"rows": rows, "summary": summarise(rows)}


def summarise(rows) -> dict:
    out = {}
    for name in ("bisection", "interpolating", "from previous photo"):
        tries = [r[name]["tries"] for r in rows if r[name]["tries"] is not None]
        out[name] = {"mean_tries": statistics.mean(tries), "max_tries": max(tries),
                     "s_per_mp": statistics.mean(r[name]["s_per_mp"] for r in rows),
                     "same_index": sum(r[name]["index"] == r["bisection"]["index"] for r in rows)}
    return out


def main(args):
    paths = list_images(args.data)
    # --consecutive: a run of frames as a drone shoots them; by default photos spread over the folder
    paths = paths[:args.max_images] if args.consecutive else spread(paths, args.max_images)
    if not paths:
        raise CodecError(f"{args.data}: no photos")
    api._set_threads(args.threads)
    result = run(CodecModel.load(args.model), paths, args.bpp, args.threads)
    n = len(result["rows"])
    print(f"{len(paths)} {'consecutive' if args.consecutive else 'spread'} photos x budgets {args.bpp} bpp, "
          f"{args.threads} thread(s)\n"
          "| search | encodes per photo (mean / max) | s/MP | same λ as bisection |\n|---|---|---|---|")
    for name, s in result["summary"].items():
        print(f"| {name} | {s['mean_tries']:.2f} / {s['max_tries']} | {s['s_per_mp']:.3f} | {s['same_index']}/{n} |")
    return result
