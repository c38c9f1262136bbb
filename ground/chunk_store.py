"""Incomplete transfers on disk, shared by every ground daemon of one shared-subscription group.

A shared subscription hands each message to one member, so chunks of one photo land on different daemons.
They all write into <state_dir>/partial/<key>/ (one file per chunk index, written atomically before the
PUBACK goes out), and whichever daemon sees the set complete takes an exclusive flock on the folder's
.lock and archives the photo. The kernel drops the lock when a daemon dies, so a photo whose decoder was
killed is picked up again by the next chunk, the periodic scan, or the restart.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from codec.service.atomic_files import write_bytes
from .wire import ChunkInfo

META = "meta.json"
CHUNK_RE = re.compile(r"^\d{6}\.chunk$")


class ChunkStore:
    def __init__(self, state_dir, fsync: bool = True):
        self.dir = Path(state_dir) / "partial"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    def put(self, info: ChunkInfo, payload: bytes) -> bool:
        """Store one chunk; False when it was a duplicate. Retries once if another daemon just removed the folder."""
        for attempt in (0, 1):
            try:
                return self._put(info, payload)
            except FileNotFoundError:
                if attempt:
                    raise
        return False

    def _put(self, info: ChunkInfo, payload: bytes) -> bool:
        folder = self.dir / info.key
        folder.mkdir(exist_ok=True)
        if not (folder / META).exists():
            meta = {k: getattr(info, k) for k in ("site", "drone", "image_id", "sha256", "count", "size")}
            write_bytes(folder / META, json.dumps({**meta, "extra": info.extra}).encode(), self.fsync)
        path = folder / f"{info.index:06d}.chunk"
        if path.exists():
            return False
        write_bytes(path, payload, self.fsync)
        return True

    def keys(self) -> list[str]:
        return [p.name for p in self.dir.iterdir() if p.is_dir()]

    def meta(self, key: str) -> dict | None:
        try:
            return json.loads((self.dir / key / META).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def received(self, key: str) -> int:
        try:
            # Only finished chunks: another daemon's temporary file (".000003.<pid>.tmp.chunk") is not one.
            return sum(1 for p in (self.dir / key).iterdir() if CHUNK_RE.match(p.name))
        except FileNotFoundError:
            return 0

    def is_complete(self, key: str) -> bool:
        meta = self.meta(key)
        return meta is not None and self.received(key) >= meta["count"]

    def assemble(self, key: str, meta: dict) -> bytes | None:
        """The whole bitstream, or None if a chunk is missing after all."""
        folder = self.dir / key
        try:
            return b"".join((folder / f"{i:06d}.chunk").read_bytes() for i in range(meta["count"]))
        except FileNotFoundError:
            return None

    def idle_s(self, key: str) -> float:
        """Seconds since the transfer's last chunk arrived."""
        try:
            newest = max(p.stat().st_mtime for p in (self.dir / key).iterdir())
        except (FileNotFoundError, ValueError):
            return 0.0
        return time.time() - newest

    def total_bytes(self) -> int:
        return sum(self.stored_bytes(folder.name) for folder in self.dir.iterdir())

    def stored_bytes(self, key: str) -> int:
        """Bytes of the transfer's finished chunks; 0 once another daemon has removed it."""
        total = 0
        try:
            names = [p for p in (self.dir / key).iterdir() if CHUNK_RE.match(p.name)]
        except (FileNotFoundError, NotADirectoryError):
            return 0
        for p in names:
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total

    @contextmanager
    def claim(self, key: str):
        """Yields True when this daemon holds the transfer exclusively, False when another one does."""
        try:
            fd = os.open(self.dir / key / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        except FileNotFoundError:
            yield False       # finished and removed by another daemon
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def discard(self, key: str) -> None:
        shutil.rmtree(self.dir / key, ignore_errors=True)
