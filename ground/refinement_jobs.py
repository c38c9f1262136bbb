"""Archival refinement at the ground (SGA+, codec/latent_refinement.py), as a background job.

`python -m ground.refinement_jobs --config ground.yaml [--originals DIR] [--once]` runs beside the live
daemon, in its own process (so it never blocks live decoding; its systemd unit runs it at low CPU weight).
For every catalogued photo it refines the latents, from the original when the operator has synced the
drone's card into the originals folder (matched by content, then file name or capture time),
otherwise from the received reconstruction, and writes <image_id>.refined.nlic beside the archived
bitstream, a "refinement" block in the JSON sidecar, and a row in the catalog's `refinements` table.

Jobs live in the catalog: pending -> running -> done | failed. A job found `running` at start belonged to
a process that died; it goes back to pending, so a restarted job continues where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from codec.data import list_images
from codec.errors import CodecError
from codec.imageio import Photo, read_photo
from codec.latent_refinement import RefineConfig
from codec.photo_refinement import refine_photo
from codec.runtime import CodecModel

from . import exif_info
from .catalog import open_catalog
from .refinement_settings import RefinementSettings
from codec.service.atomic_files import write_bytes
from codec.service.process import LOG_FORMAT, load_config_or_report, stop_on_signals

log = logging.getLogger("ground.refinement")

SCHEMA = """
CREATE TABLE IF NOT EXISTS refinements (
    drone TEXT NOT NULL, image_id TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    source TEXT, source_path TEXT, refined_path TEXT, bytes_before INTEGER, bytes_after INTEGER,
    psnr_before REAL, psnr_after REAL, loss_before REAL, loss_after REAL, steps INTEGER, seconds REAL,
    kept_refined INTEGER, error TEXT, updated REAL NOT NULL,
    PRIMARY KEY (drone, image_id)
)
"""
RESULT_COLUMNS = ("source", "source_path", "refined_path", "bytes_before", "bytes_after", "psnr_before",
                  "psnr_after", "loss_before", "loss_after", "steps", "seconds", "kept_refined")


class JobQueue:
    """The `refinements` table beside the daemon's `images` table, in the same SQLite catalog."""

    def __init__(self, catalog_path):
        self.db = open_catalog(catalog_path, SCHEMA)

    def recover(self) -> int:
        """Jobs left `running` by a process that died go back to pending."""
        with self.db:
            return self.db.execute("UPDATE refinements SET state='pending', updated=? WHERE state='running'",
                                   (time.time(),)).rowcount

    def sync(self) -> int:
        """A pending job for every archived photo that has none yet."""
        if not self._has_images():
            return 0
        with self.db:
            return self.db.execute(
                "INSERT OR IGNORE INTO refinements (drone, image_id, state, updated) "
                "SELECT drone, image_id, 'pending', ? FROM images", (time.time(),)).rowcount

    def _has_images(self) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='images'").fetchone() is not None

    def claim(self) -> Optional[dict]:
        """The oldest pending job, marked running; None when there is nothing to do."""
        row = self.db.execute(
            "SELECT i.drone, i.image_id, i.name, i.capture_time, i.lambda_index, i.model_id, i.width, i.height, "
            "i.bitstream_path, i.recon_path, i.sidecar_path FROM refinements r JOIN images i "
            "ON r.drone = i.drone AND r.image_id = i.image_id WHERE r.state = 'pending' "
            "ORDER BY r.updated LIMIT 1").fetchone()
        if row is None:
            return None
        keys = ("drone", "image_id", "name", "capture_time", "lambda_index", "model_id", "width", "height",
                "bitstream_path", "recon_path", "sidecar_path")
        job = dict(zip(keys, row))
        with self.db:
            taken = self.db.execute("UPDATE refinements SET state='running', attempts=attempts+1, updated=? "
                                    "WHERE drone=? AND image_id=? AND state='pending'",
                                    (time.time(), job["drone"], job["image_id"])).rowcount
        return job if taken == 1 else self.claim()

    def finish(self, job: dict, result: dict):
        sets = ", ".join(f"{c}=?" for c in RESULT_COLUMNS)
        with self.db:
            self.db.execute(f"UPDATE refinements SET state='done', error=NULL, updated=?, {sets} "
                            "WHERE drone=? AND image_id=?",
                            (time.time(), *[result.get(c) for c in RESULT_COLUMNS], job["drone"], job["image_id"]))

    def fail(self, job: dict, error: str):
        with self.db:
            self.db.execute("UPDATE refinements SET state='failed', error=?, updated=? WHERE drone=? AND image_id=?",
                            (error, time.time(), job["drone"], job["image_id"]))

    def rows(self) -> list[dict]:
        cur = self.db.execute("SELECT * FROM refinements ORDER BY drone, image_id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


class OriginalsIndex:
    """Originals synced from the drone's card. Found by content first: the image id is the first 32 hex digits
    of the original file's SHA-256 (edge/service.py). Then by the file name (or a name equal to the image id),
    or by capture time for a photo whose name is unknown, as long as nothing known contradicts the match:
    cameras start again at DJI_0001 on every card, and another flight's DJI_0001 must not be refined into
    this photo's archive."""

    def __init__(self, folder: Optional[Path]):
        self.by_hash, self.by_name, self.by_time, self.capture = {}, {}, {}, {}
        if folder is None or not Path(folder).is_dir():
            return
        for path in list_images(folder):
            self.by_hash.setdefault(hashlib.sha256(path.read_bytes()).hexdigest()[:32], path)
            self.by_name.setdefault(path.stem, path)
            self.by_name.setdefault(path.name, path)
            try:
                self.capture[path] = exif_info.read(read_photo(path).exif).get("capture_time")
            except CodecError:
                continue
            if self.capture[path]:
                self.by_time.setdefault(self.capture[path], path)

    def find(self, job: dict) -> Optional[Path]:
        found = self.by_hash.get(job["image_id"]) or self.by_name.get(job["image_id"])
        if found is not None:
            return found
        name, taken = job.get("name") or "", job.get("capture_time")
        for key in (name, Path(name).stem):
            path = self.by_name.get(key) if key else None
            if path is not None and (taken is None or self.capture.get(path) in (None, taken)):
                return path
        return self.by_time.get(taken) if taken and not name else None


def source_photo(job: dict, originals: OriginalsIndex) -> tuple[str, Path, Photo]:
    """The original when it is there and has the archived size, else the received reconstruction."""
    path = originals.find(job)
    if path is not None:
        photo = read_photo(path)
        if photo.pixels.shape[:2] == (job["height"], job["width"]):
            return "original", path, photo
        log.warning("original %s is %dx%d, the archived photo %dx%d: using the reconstruction", path,
                    photo.pixels.shape[1], photo.pixels.shape[0], job["width"], job["height"])
    recon = Path(job["recon_path"])
    return "reconstruction", recon, read_photo(recon)


def refine_job(job: dict, model: CodecModel, settings: RefinementSettings, originals: OriginalsIndex) -> dict:
    if job["model_id"] != model.model_id.hex():
        raise CodecError(f"archived with model {job['model_id']}, this station has {model.model_id.hex()}")
    source, path, photo = source_photo(job, originals)
    cfg = RefineConfig(method=settings.method, classes=settings.classes, steps=settings.steps,
                       time_budget=settings.time_budget_s)
    result = refine_photo(model, photo, job["lambda_index"], cfg)
    refined = Path(job["bitstream_path"]).with_suffix(".refined.nlic")
    write_bytes(refined, result.data)
    summary = {"source": source, "source_path": str(path), "refined_path": str(refined),
               "bytes_before": result.before.bytes, "bytes_after": result.after.bytes,
               "psnr_before": result.before.psnr, "psnr_after": result.after.psnr,
               "loss_before": result.before.loss, "loss_after": result.after.loss, "steps": result.steps,
               "seconds": result.seconds, "kept_refined": int(result.kept_refined)}
    _update_sidecar(Path(job["sidecar_path"]), summary, settings)
    return summary


def _update_sidecar(path: Path, summary: dict, settings: RefinementSettings):
    sidecar = json.loads(path.read_text())
    sidecar["refinement"] = {**summary, "method": settings.method, "classes": settings.classes,
                             "file": Path(summary["refined_path"]).name}
    write_bytes(path, json.dumps(sidecar, indent=2, sort_keys=True).encode())


def run(catalog_path, model: CodecModel, settings: RefinementSettings, stop: threading.Event, once: bool = False):
    """Work through the queue until stopped (or, with once, until it is empty)."""
    import torch
    torch.set_num_threads(settings.threads)
    queue = JobQueue(catalog_path)
    if queue.recover():
        log.info("resuming refinement jobs left running by a stopped process")
    while not stop.is_set():
        queue.sync()
        job = queue.claim()
        if job is None:
            if once:
                break
            stop.wait(settings.poll_s)
            continue
        originals = OriginalsIndex(settings.originals)
        try:
            summary = refine_job(job, model, settings, originals)
        except (CodecError, OSError, ValueError) as e:
            log.error("refinement of %s/%s failed: %s", job["drone"], job["image_id"], e)
            queue.fail(job, str(e))
            continue
        queue.finish(job, summary)
        log.info("refined %s/%s from its %s: %d -> %d bytes, %.2f -> %.2f dB in %.0f s", job["drone"],
                 job["image_id"], summary["source"], summary["bytes_before"], summary["bytes_after"],
                 summary["psnr_before"], summary["psnr_after"], summary["seconds"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ground.refinement_jobs", description="archival SGA+ refinement")
    p.add_argument("--config", required=True, help="ground.yaml (catalog, archive, model, refinement section)")
    p.add_argument("--originals", help="folder of originals synced from the drone (overrides the config)")
    p.add_argument("--once", action="store_true", help="stop when no job is left")
    args = p.parse_args(argv)
    from .config import load
    cfg = load_config_or_report(args.config, load)
    if cfg is None:
        return 2
    settings = cfg.refinement
    if args.originals:
        settings = settings.model_copy(update={"originals": Path(args.originals)})
    logging.basicConfig(level=cfg.log_level, format=LOG_FORMAT)
    try:
        model = CodecModel.load(cfg.model)
    except CodecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    stop_on_signals(stop, log, "photo")
    run(cfg.catalog, model, settings, stop, once=args.once)
    return 0


if __name__ == "__main__":
    sys.exit(main())
