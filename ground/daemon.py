"""The ground daemon's main loop: complete transfers -> verify -> decode -> archive -> catalog -> ack.

Exactly once: the catalog's primary key decides; everything before it is idempotent (the same files
rewritten atomically) and the ack comes last, so a crash anywhere only causes a resend.
"""
from __future__ import annotations

import hashlib
import math
import logging
import queue
import threading
import time

import numpy as np

from codec import api
from codec.errors import CodecError, UnknownModel
from codec.imageio import Photo
from codec.lambdas import lambda_of_index
from codec.runtime import CodecModel

from codec.service import sd_notify
from codec.service.process import stop_on_signals

from . import exif_info, wire
from .archive import Archive
from .catalog import Catalog
from .chunk_store import ChunkStore
from .mqtt_link import Link

log = logging.getLogger("ground")
SCAN_PERIOD_S = 5.0


class Incomplete(Exception):
    """A transfer that looked complete but lost a chunk file (e.g. removed by a late duplicate's cleanup)."""


class Held(Exception):
    """A sound photo this station cannot decode (another model): kept unacked until a station that can takes it."""


REACK_PERIOD_S = 2.0


class GroundDaemon:
    def __init__(self, cfg):
        self.cfg = cfg
        self.model = CodecModel.load(cfg.model)
        self._warm_up()
        self.store = ChunkStore(cfg.state_dir)
        self.catalog = Catalog(cfg.catalog)
        self.archive = Archive(cfg.archive, cfg.reconstruction)
        self.work: queue.Queue = queue.Queue()
        self.queued: set[str] = set()       # transfer keys in `work`: a backlog is queued once, not per scan
        self.queued_lock = threading.Lock()  # take_chunk runs in paho's thread
        self.held: set[str] = set()         # transfers of another model; this process can never decode them
        self.partial_bytes = self.store.total_bytes()
        self.last_ack: dict[str, float] = {}
        self.stop = threading.Event()
        self.link = Link(cfg.mqtt, cfg.topic_root, self.take_chunk)

    def _warm_up(self):
        # Load the float decoder and run the first (slow) decode now, before READY, not on a real photo.
        blank = api.compress(self.model, Photo(np.zeros((64, 64, 3), np.uint8)), 0)
        api.decompress(self.model, blank.data)

    # --- network thread: intake -------------------------------------------------------------------------
    def take_chunk(self, topic: str, user_props: list, payload: bytes) -> None:
        try:
            info = wire.parse_chunk(topic, user_props, len(payload), self.cfg.topic_root, self.cfg.limits)
            if self.cfg.drones is not None and info.drone not in self.cfg.drones:
                raise wire.Rejected(f"drone {info.drone!r} is not in this station's list")
            if self.partial_bytes + len(payload) > self.cfg.limits.max_partial_bytes:
                raise wire.Rejected("incomplete transfers exceed limits.max_partial_bytes; the edge will resend")
        except wire.Rejected as e:
            log.warning("rejected a chunk on %r: %s", topic, e)
            return
        if self.store.put(info, payload):
            self.partial_bytes += len(payload)
        self._enqueue((info.key, info.site, info.drone, info.image_id))

    def _enqueue(self, job):
        with self.queued_lock:
            if job[0] in self.queued or job[0] in self.held:
                return
            self.queued.add(job[0])
        self.work.put(job)

    # --- main loop --------------------------------------------------------------------------------------
    def run(self) -> int:
        self.link.start()
        if not self.link.connected.wait(self.cfg.mqtt.connect_wait_s):
            log.warning("broker %s:%d not reachable yet; will keep trying", self.cfg.mqtt.host, self.cfg.mqtt.port)
        sd_notify.ready(f"ground {self.cfg.ground_id}")
        log.info("ground %s ready", self.cfg.ground_id)
        self.scan()
        period = min(SCAN_PERIOD_S, self.cfg.partial_expiry_s / 2)
        next_scan = time.monotonic() + period
        while not self.stop.is_set():
            sd_notify.watchdog()
            try:
                job = self.work.get(timeout=0.5)
            except queue.Empty:
                job = None
            if job:
                with self.queued_lock:
                    self.queued.discard(job[0])   # a chunk arriving from now on queues it again
                self._handle_safely(job)
            if time.monotonic() >= next_scan:
                self.scan()
                next_scan = time.monotonic() + period
        sd_notify.stopping()
        self.link.stop()
        self.catalog.close()
        log.info("ground %s stopped", self.cfg.ground_id)
        return 0

    def scan(self):
        """Retry complete transfers (e.g. left by a killed daemon) and expire idle incomplete ones."""
        for key in self.store.keys():
            meta = self.store.meta(key)
            if meta and self.store.is_complete(key):
                self._enqueue((key, meta["site"], meta["drone"], meta["image_id"]))
            elif self.store.idle_s(key) > self.cfg.partial_expiry_s:
                self._expire(key, meta)
        self.partial_bytes = self.store.total_bytes()
        now = time.monotonic()
        self.last_ack = {k: t for k, t in self.last_ack.items() if now - t < REACK_PERIOD_S}

    def _expire(self, key: str, meta: dict | None):
        with self.store.claim(key) as mine:
            if not mine:
                return
            got = self.store.received(key)
            want = meta["count"] if meta else "?"
            log.warning("expired incomplete transfer %s: %d of %s chunks, idle over %.0f s", key, got, want,
                        self.cfg.partial_expiry_s)
            self.store.discard(key)

    def _handle_safely(self, job):
        try:
            self.handle(*job)
        except Exception:  # a disk or database error on one photo must not stop the station; resend retries
            log.exception("failed to archive %s; it stays pending and is retried", job[3])

    # --- one transfer -----------------------------------------------------------------------------------
    def handle(self, key: str, site: str, drone: str, image_id: str):
        if key in self.held:   # a job its chunks queued before the first one found it held
            return
        if self.catalog.has(drone, image_id):
            self._reack(key, site, drone, image_id)
            return
        if not self.store.is_complete(key):
            return
        with self.store.claim(key) as mine:
            if not mine:
                return  # another daemon is archiving it
            if self.catalog.has(drone, image_id):  # it finished while we waited for the lock
                self._reack(key, site, drone, image_id)
                return
            meta = self.store.meta(key)
            if meta is None:
                return
            try:
                sha = self.archive_one(key, meta)
            except Incomplete:
                return
            except Held as e:
                self.held.add(key)
                log.error("holding photo %s from %s/%s unacked: %s; the drone keeps it and resends, and a "
                          "station with that model (ground.yaml model:) archives it", image_id, site, drone, e)
                return
            except wire.Rejected as e:
                log.error("rejected photo %s from %s/%s: %s", image_id, site, drone, e)
                self.link.ack(site, drone, {"image_id": image_id, "status": "rejected", "reason": str(e)})
                self.store.discard(key)
                return
            self.link.ack(site, drone, {"image_id": image_id, "sha256": sha, "status": "archived"})
            self.store.discard(key)

    def _reack(self, key, site, drone, image_id):
        """A resend of an archived photo: its ack was lost or late. Ack again (once per burst of its chunks)
        and tidy up the folder the late chunks made."""
        now = time.monotonic()
        if now - self.last_ack.get(image_id, 0.0) >= REACK_PERIOD_S:
            self.link.ack(site, drone, {"image_id": image_id, "status": "duplicate"})
            self.last_ack[image_id] = now
        with self.store.claim(key) as mine:
            if mine:
                self.store.discard(key)

    def archive_one(self, key: str, meta: dict) -> str:
        t_received = time.time()
        stored = self.store.stored_bytes(key)
        if stored > meta["size"]:   # checked before reading: a hostile count must not size a buffer
            raise wire.Rejected(f"chunks hold {stored} bytes, the edge declared {meta['size']}")
        data = self.store.assemble(key, meta)
        if data is None:
            raise Incomplete(key)
        self._verify(meta, data)
        container = self._parse(data)
        h = container.header
        log.info("decode start %s (%dx%d, %d bytes)", meta["image_id"], h.width, h.height, len(data))
        t0 = time.perf_counter()
        try:
            photo = api.decompress(self.model, data, threads=self.cfg.decode_threads)
        except CodecError as e:
            raise wire.Rejected(f"decode failed: {e}") from None
        decode_ms = (time.perf_counter() - t0) * 1000
        exif = exif_info.read(photo.exif)
        row = self._row(meta, data, h, exif, t_received, decode_ms)
        folder = self.archive.folder(meta["site"], meta["drone"], exif_info.date_folder(
            row["capture_time"], row["t_detect"] or t_received))
        sidecar = {k: v for k, v in row.items() if not k.endswith("_path")}
        sidecar.update(exif=exif, header=h.as_dict())
        row.update(self.archive.write(folder, meta["image_id"], data, photo, sidecar))
        row["t_archived"] = time.time()
        if not self.catalog.add(row):
            log.info("photo %s was archived by another daemon meanwhile", meta["image_id"])
        else:
            log.info("archived %s from %s/%s: %d bytes, %.3f bpp, decode %.0f ms", meta["image_id"],
                     meta["site"], meta["drone"], len(data), row["bpp"], decode_ms)
        return row["sha256"]

    def _verify(self, meta: dict, data: bytes):
        if len(data) != meta["size"]:
            raise wire.Rejected(f"chunks add up to {len(data)} bytes, the edge declared {meta['size']}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta["sha256"]:
            raise wire.Rejected(f"sha256 mismatch: got {digest[:16]}…, the edge declared {meta['sha256'][:16]}…")

    def _parse(self, data: bytes):
        try:
            c = api.read_container(self.model, data)
        except UnknownModel as e:
            raise Held(str(e)) from None
        except CodecError as e:
            raise wire.Rejected(f"container: {e}") from None
        h, lim = c.header, self.cfg.limits
        if h.width * h.height > lim.max_pixels or max(h.width, h.height) > lim.max_side:
            raise wire.Rejected(f"header declares {h.width}x{h.height}, beyond the limits "
                                f"({lim.max_pixels} pixels, {lim.max_side} per side)")
        return c

    def _row(self, meta, data, h, exif, t_received, decode_ms) -> dict:
        extra = meta.get("extra", {})
        num = {k: _float_or_none(extra.get(k)) for k in ("t_detect", "t_spooled", "encode_ms")}
        return {"drone": meta["drone"], "image_id": meta["image_id"], "site": meta["site"],
                "sha256": meta["sha256"], "bytes": len(data), "width": h.width, "height": h.height,
                "lambda_index": h.lambda_index, "lambda": lambda_of_index(h.lambda_index),
                "bpp": len(data) * 8 / (h.width * h.height), "model_id": h.model_id.hex(),
                "capture_time": exif["capture_time"], "name": extra.get("name"),
                "ground_id": self.cfg.ground_id, **num, "t_received": t_received, "decode_ms": decode_ms}


def _float_or_none(value):
    """The edge's timings are informative: a malformed one is recorded as unknown, not a reject."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def install_signal_handlers(daemon: GroundDaemon):
    stop_on_signals(daemon.stop, log, "photo")
