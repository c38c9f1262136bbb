"""The edge service's main loop: inbox -> encode -> spool -> publish; acks delete spooled photos.

Everything the service decides happens in this one thread, so the spool needs no locks. paho's network
thread only queues acks and flips the connection state (edge/mqtt_link.py).
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from codec.errors import CodecError, first_line
from codec.imageio import Photo, read_photo
from codec.runtime import CodecModel

from codec.service import sd_notify
from codec.service.process import stop_on_signals

from . import inbox, rate_policy, wire
from .backends import BackendError, select_backend
from .mqtt_link import Link
from .spool import Spool

log = logging.getLogger("edge")


class EdgeService:
    def __init__(self, cfg):
        self.cfg = cfg
        cfg.inbox.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(cfg.spool, cfg.spool_quota.max_bytes, cfg.spool_quota.max_files)
        self.model = CodecModel.load(cfg.model)
        self.backend = select_backend(self.model, order=tuple(cfg.backend_order), threads=cfg.rate.threads,
                                      **cfg.backend.model_dump())
        self.rate = rate_policy.RatePolicy(self.model, self.backend, cfg.rate)
        self._warm_up()
        self.link = Link(cfg.mqtt, wire.ack_topic(cfg.topic_root, cfg.site, cfg.drone))
        self.inflight: dict[str, tuple[int, float]] = {}   # image_id -> (connection generation, sent at)
        self.full = False
        self.last_size = 0
        self.intake_paused_until = 0.0   # monotonic; set when the encoder or the disk failed
        self.stop = threading.Event()

    def _warm_up(self):
        # The first encode compiles and allocates; do it now so it is not mistaken for a hang later.
        fixed = self.cfg.rate.model_copy(update={"mode": "fixed"})
        self.rate.encode(Photo(np.zeros((64, 64, 3), np.uint8)), fixed)

    # --- main loop -------------------------------------------------------------------------------------
    def run(self) -> int:
        self.link.start()
        if not self.link.connected.wait(self.cfg.mqtt.connect_wait_s):
            log.warning("broker %s:%d not reachable yet; spooling photos until it is",
                        self.cfg.mqtt.host, self.cfg.mqtt.port)
        files, size = self.spool.usage()
        if files:
            log.info("resuming a spool of %d photos (%d bytes)", files, size)
        sd_notify.ready(f"backend {self.backend.name}, spool {files} photos")
        log.info("edge ready: drone %s site %s backend %s", self.cfg.drone, self.cfg.site, self.backend.name)
        while not self.stop.is_set():
            sd_notify.watchdog()
            self.handle_acks()
            self.send_due()
            if not self.take_one_photo():
                self.stop.wait(self.cfg.poll_interval_s)
        sd_notify.stopping()
        self.link.stop()
        log.info("edge stopped")
        return 0

    # --- acknowledgements ------------------------------------------------------------------------------
    def handle_acks(self):
        if self.link.acks.empty():
            return
        by_id = {e.image_id: e for e in self.spool.entries()}
        while not self.link.acks.empty():
            ack = self.link.acks.get_nowait()
            entry = by_id.pop(ack["image_id"], None)
            if entry is None:
                continue  # a repeated ack for a photo already deleted
            self.inflight.pop(entry.image_id, None)
            if ack.get("status") in ("archived", "duplicate"):
                self.spool.remove(entry)
                log.info("ground archived %s; removed from the spool", entry.image_id)
            else:
                target = self.spool.set_aside(entry)
                log.error("ground rejected %s (%s); kept at %s", entry.image_id, ack.get("reason"), target)

    # --- sending ---------------------------------------------------------------------------------------
    def send_due(self):
        """Publish photos never sent on this connection or whose ack is overdue, oldest first."""
        if not self.link.connected.is_set():
            return
        gen, now = self.link.generation, time.monotonic()
        busy = sum(1 for st in self.inflight.values() if self._awaiting_ack(st, gen, now))
        for entry in self.spool.entries():
            state = self.inflight.get(entry.image_id)
            if self._awaiting_ack(state, gen, now):
                continue
            if busy >= self.cfg.transfer.max_inflight_photos:
                break
            if state is not None and state[0] == gen:
                log.warning("no ack for %s after %.0f s; sending it again", entry.image_id,
                            self.cfg.transfer.ack_timeout_s)
            if self._publish(entry):
                self.inflight[entry.image_id] = (gen, now)
                busy += 1

    def _awaiting_ack(self, state, gen: int, now: float) -> bool:
        """Sent on this connection and not yet overdue (a reconnect makes everything due again)."""
        return state is not None and state[0] == gen and now - state[1] < self.cfg.transfer.ack_timeout_s

    def _publish(self, entry) -> bool:
        try:
            meta, data = entry.meta(), entry.data()
        except FileNotFoundError:
            return False  # acked and removed meanwhile
        topic = wire.chunk_topic(self.cfg.topic_root, meta["site"], meta["drone"], entry.image_id)
        try:
            for chunk in wire.plan_chunks(topic, meta, data, self.link.max_packet):
                self.link.publish(topic, chunk)
        except wire.OversizeMessage as e:
            log.error("not sending %s: %s", entry.image_id, e)
            return False
        return True

    # --- taking photos ---------------------------------------------------------------------------------
    def take_one_photo(self) -> bool:
        """Encode and spool the oldest ready photo. False when there was nothing to do (or no room)."""
        if time.monotonic() < self.intake_paused_until:
            return False
        ready = inbox.ready_photos(self.cfg.inbox)
        if not ready:
            return False
        path = ready[0]
        if not path.exists() or not inbox.is_photo(path):
            log.error("inbox: marker %s has no photo file of a known type; removing the marker",
                      inbox.marker_of(path).name)
            inbox.drop(path, marker_only=True)
            return True
        if not self._may_encode():
            return False
        try:
            return self._take(path)
        except OSError as e:   # the spool's or the processed folder's disk: full, read-only, unmounted
            self._pause_intake(f"cannot file {path.name}: {e}")
            return False

    def _take(self, path: Path) -> bool:
        try:
            raw = path.read_bytes()
        except OSError as e:   # vanished or unreadable since it was listed; the camera's card still has it
            log.error("inbox: cannot read %s (%s); skipping it", path.name, e.strerror or e)
            inbox.drop(path, marker_only=True)
            return True
        image_id = hashlib.sha256(raw).hexdigest()[:32]   # same photo, same id: a re-take after a crash is a dup
        if self.spool.find(image_id) is None:
            if not self._encode_and_spool(path, image_id):
                return True
        self._finish_original(path, image_id)
        return True

    def _pause_intake(self, reason: str):
        """Leave the photo in the inbox and take none for a while; acks and sending go on meanwhile."""
        wait = self.cfg.intake_retry_s
        self.intake_paused_until = time.monotonic() + wait
        log.error("%s; the photo stays in the inbox, trying again in %g s", reason, wait)

    def _encode_and_spool(self, path: Path, image_id: str) -> bool:
        t_detect = time.time()
        try:
            photo = read_photo(path)
            t0 = time.perf_counter()
            enc = self.rate.encode(photo)
            encode_ms = (time.perf_counter() - t0) * 1000
        except (BackendError, RuntimeError, MemoryError) as e:   # the encoder failed (e.g. device out of memory)
            self._pause_intake(f"the encoder failed on {path.name}: {type(e).__name__}: {first_line(e)}")
            return False
        except CodecError as e:   # the photo itself: unreadable, or a size the codec refuses
            self._set_aside(path, image_id, f"cannot encode {path.name} ({e})")
            return False
        quota = self.cfg.spool_quota.max_bytes
        if len(enc.data) > quota:   # it could never fit: waiting would block every photo behind it
            self._set_aside(path, image_id, f"{path.name} encodes to {len(enc.data)} bytes, more than the whole "
                                            f"spool (spool_quota.max_bytes {quota})")
            return False
        self.last_size = len(enc.data)
        if not self._room_for(len(enc.data)):
            return False
        meta = {"image_id": image_id, "sha256": hashlib.sha256(enc.data).hexdigest(), "size": len(enc.data),
                "drone": self.cfg.drone, "site": self.cfg.site, "name": path.name,
                "lambda_index": enc.lambda_index, "t_detect": t_detect, "t_spooled": time.time(),
                "encode_ms": encode_ms, "encodes": enc.tries}
        self.spool.add(image_id, enc.data, meta)
        log.info("spooled %s as %s: %d bytes, λ index %d, %.0f ms (%d encodes)", path.name, image_id,
                 len(enc.data), enc.lambda_index, encode_ms, enc.tries)
        return True

    def _set_aside(self, path: Path, image_id: str, reason: str):
        bad = self.cfg.inbox / "rejected"
        bad.mkdir(exist_ok=True)
        target = free_name(bad, path.name, image_id)
        path.replace(target)
        inbox.drop(path, marker_only=True)
        log.error("inbox: %s; moved to %s", reason, target)

    def _finish_original(self, path: Path, image_id: str):
        if self.cfg.processed is not None:
            self.cfg.processed.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(free_name(self.cfg.processed, path.name, image_id)))
            inbox.drop(path, marker_only=True)
        else:
            inbox.drop(path)

    # --- spool quota -----------------------------------------------------------------------------------
    def _may_encode(self) -> bool:
        """Before encoding, whether the last photo's size would fit. drop_oldest deletes nothing on a guess (it
        decides once the size is known), and an empty spool always gets a try."""
        if self.cfg.spool_quota.when_full == "drop_oldest" or not self.spool.entries():
            return True
        return self._room_for(self.last_size)

    def _room_for(self, size: int) -> bool:
        if self.spool.fits(size):
            if self.full:
                log.warning("spool has room again; taking new photos")
            self.full = False
            return True
        if self.cfg.spool_quota.when_full == "drop_oldest":
            return self._drop_oldest(size)
        if not self.full:
            files, used = self.spool.usage()
            log.error("SPOOL FULL (%d photos, %d bytes; quota %d photos, %d bytes): not taking new photos, "
                      "they wait in the inbox until the ground acknowledges", files, used,
                      self.cfg.spool_quota.max_files, self.cfg.spool_quota.max_bytes)
        self.full = True
        return False

    def _drop_oldest(self, size: int) -> bool:
        while not self.spool.fits(size):
            entries = self.spool.entries()
            if not entries:
                return False  # cannot happen: larger photos are set aside before
            unsent = [e for e in entries if e.image_id not in self.inflight] or entries
            victim = unsent[0]
            self.spool.remove(victim)
            self.inflight.pop(victim.image_id, None)
            log.error("SPOOL FULL: dropped the oldest unsent photo %s (%d bytes) to take a new one",
                      victim.image_id, victim.size)
        return True


def free_name(folder: Path, name: str, image_id: str) -> Path:
    """folder/name, or the name tagged with the image id when another photo has it: cameras start again at
    DJI_0001 on every card, and an earlier flight's original must not be overwritten."""
    target = folder / name
    if not target.exists():
        return target
    return folder / f"{target.stem}.{image_id[:12]}{target.suffix}"


def install_signal_handlers(service: EdgeService):
    stop_on_signals(service.stop, log, "step")
