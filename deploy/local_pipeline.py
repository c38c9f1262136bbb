"""The whole pipeline on this machine: mosquitto on a free loopback port, the ground daemon and the edge
service as real processes, a folder of photos through them; prints per-photo bytes, bpp, PSNR and latency.

    python -m deploy.local_pipeline [--photos DIR] [--limit N] [--lambda-index I | --max-bytes B]
                                    [--model PATH] [--sequential] [--keep DIR]
"""
from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .localrun import Broker, Service, drop_photo, write_yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "blades" / "drone_frames"
SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m deploy.local_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=Path, default=None,
                   help=f"folder of photos (default {DEFAULT_PHOTOS}, else generated test photos)")
    p.add_argument("--limit", type=int, default=5, help="at most this many photos (default 5; 0 = all)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--lambda-index", type=int, default=128, help="fixed λ grid index (default 128)")
    rate.add_argument("--max-bytes", type=int, default=None, help="per-photo byte budget instead of a fixed λ")
    p.add_argument("--model", type=Path, default=None, help="codec model (default: the bundled one)")
    p.add_argument("--sequential", action="store_true",
                   help="drop the next photo only when the previous one is archived (latency without queueing)")
    p.add_argument("--keep", type=Path, default=None, help="keep the run's folders (logs, archive) here")
    p.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    return p.parse_args(argv)


def pick_photos(folder: Path | None, limit: int, work: Path) -> list[Path]:
    folder = folder or (DEFAULT_PHOTOS if DEFAULT_PHOTOS.is_dir() else None)
    if folder is None:
        return generated_photos(work / "generated", limit or 5)
    if not folder.is_dir():
        raise SystemExit(f"error: {folder}: no such folder")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    if not photos:
        raise SystemExit(f"error: {folder}: no .jpg/.png/.tif photos in it")
    return photos[:limit] if limit else photos


def generated_photos(folder: Path, n: int) -> list[Path]:
    """Photo-like test images (shading, an edge, texture) for machines without the shared blade photos."""
    from PIL import Image
    folder.mkdir(parents=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        yy, xx = np.mgrid[0:384, 0:512].astype(np.float64)
        img = 120 + 60 * np.sin(xx / 170 + i)[..., None] * np.array([1.0, 0.8, 0.6]) + 30 * np.cos(yy / 190)[..., None]
        img[(xx > 256) & (yy > 128)] += 50
        img += 10 * np.sin(xx * 1.3 + yy * 0.7)[..., None] + rng.normal(0, 4, img.shape)
        path = folder / f"generated_{i:02d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        out.append(path)
    return out


def configs(work: Path, port: int, args) -> tuple[Path, Path]:
    rate = ({"mode": "budget", "max_bytes": args.max_bytes} if args.max_bytes
            else {"mode": "fixed", "lambda_index": args.lambda_index})
    model = {"model": args.model.resolve()} if args.model else {}
    edge = write_yaml(work / "edge.yaml", {**model, "drone": "drone-local", "site": "local", "inbox": work / "inbox",
                                           "spool": work / "spool", "processed": work / "sent", "rate": rate,
                                           "poll_interval_s": 0.05, "mqtt": {"port": port}})
    ground = write_yaml(work / "ground.yaml", {**model, "state_dir": work / "ground-state",
                                               "archive": work / "archive", "mqtt": {"port": port}})
    return edge, ground


def catalog_rows(db: Path) -> dict:
    if not db.exists():
        return {}
    con = sqlite3.connect(str(db), timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return {r["name"]: dict(r) for r in con.execute("SELECT * FROM images")}
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


def wait_for(db: Path, names: set, deadline: float, services) -> dict:
    while time.monotonic() < deadline:
        rows = catalog_rows(db)
        if names <= set(rows):
            return rows
        for s in services:
            if not s.running():
                raise SystemExit(f"error: {s.module} exited early; see {s.log_path}")
        time.sleep(0.1)
    raise SystemExit(f"error: timed out with {len(catalog_rows(db))} of {len(names)} photos archived")


def wait_spool_empty(spool: Path, deadline: float) -> None:
    """The catalog row comes before the ack; stop only once the edge has its acks and an empty spool."""
    while time.monotonic() < deadline and any(spool.glob("*.nlic")):
        time.sleep(0.05)
    if any(spool.glob("*.nlic")):
        raise SystemExit("error: timed out waiting for the edge to receive the ground's acks")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def report(photos: list[Path], rows: dict) -> None:
    from codec.imageio import read_photo
    print(f"{'photo':<22}{'size':>11}{'bytes':>9}{'bpp':>8}{'PSNR dB':>9}{'latency ms':>12}"
          f"{'encode':>9}{'transfer':>10}{'decode':>8}")
    lat = []
    for p in photos:
        r = rows[p.name]
        q = psnr(read_photo(p).pixels, read_photo(r["recon_path"]).pixels)
        e2e = (r["t_archived"] - r["t_detect"]) * 1000
        transfer = (r["t_received"] - r["t_spooled"]) * 1000
        lat.append((e2e, r["encode_ms"], transfer, r["decode_ms"]))
        print(f"{p.name[:21]:<22}{r['width']:>5}x{r['height']:<5}{r['bytes']:>9}{r['bpp']:>8.3f}{q:>9.2f}"
              f"{e2e:>12.0f}{r['encode_ms']:>9.0f}{transfer:>10.0f}{r['decode_ms']:>8.0f}")
    span = max(r["t_archived"] for r in rows.values()) - min(r["t_detect"] for r in rows.values())
    mean = np.mean(np.array(lat), axis=0)
    print(f"{len(photos)} photos in {span:.1f} s: {60 * len(photos) / span:.1f} photos/min; mean latency "
          f"{mean[0]:.0f} ms = encode {mean[1]:.0f} + transfer {mean[2]:.0f} + decode {mean[3]:.0f} "
          f"+ spool/archive writes {mean[0] - mean[1:].sum():.0f}")


def run(args, work: Path) -> int:
    photos = pick_photos(args.photos, args.limit, work)
    broker = Broker(work / "broker").start()
    edge_cfg, ground_cfg = configs(work, broker.port, args)
    ground = Service("ground", ground_cfg, work / "ground.log").start()
    edge = Service("edge", edge_cfg, work / "edge.log").start()
    services, db = (edge, ground), work / "ground-state" / "catalog.sqlite"
    try:
        for s, text in ((ground, "ready"), (edge, "edge ready")):
            if not s.wait_log(text, 120):
                raise SystemExit(f"error: {s.module} did not start; see {s.log_path}")
        (work / "inbox").mkdir(exist_ok=True)
        deadline = time.monotonic() + args.timeout
        print(f"broker on 127.0.0.1:{broker.port}; {len(photos)} photos; work folder {work}", flush=True)
        if args.sequential:
            for i, p in enumerate(photos):
                drop_photo(p, work / "inbox")
                rows = wait_for(db, {x.name for x in photos[:i + 1]}, deadline, services)
        else:
            for p in photos:
                drop_photo(p, work / "inbox")
            rows = wait_for(db, {p.name for p in photos}, deadline, services)
        wait_spool_empty(work / "spool", deadline)
    finally:
        codes = [edge.stop(), ground.stop()]
        broker.stop()
    report(photos, rows)
    if codes != [0, 0]:
        print(f"error: services did not stop cleanly (exit codes edge {codes[0]}, ground {codes[1]})", file=sys.stderr)
        return 1
    print("stopped cleanly")
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args, args.keep.resolve())
    work = Path(tempfile.mkdtemp(prefix="bladecodec-pipeline-"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
