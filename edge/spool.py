"""The spool: encoded photos on disk until the ground acknowledges their archive, oldest first.

An entry is two files named by a sortable sequence number and the image id:
  <seq>-<image_id>.json   metadata (written first)
  <seq>-<image_id>.nlic   the bitstream (written last; its presence makes the entry complete)
Both are written atomically (temporary file, fsync, rename), so a crash never leaves a torn entry; a
.json without its .nlic is the remains of a crash before the bitstream landed and is removed on start.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from codec.service.atomic_files import write_bytes

log = logging.getLogger("edge.spool")


@dataclass
class Entry:
    seq: int
    image_id: str
    path: Path          # the .nlic file
    size: int

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")

    def meta(self) -> dict:
        return json.loads(self.meta_path.read_text())

    def data(self) -> bytes:
        return self.path.read_bytes()


class Spool:
    def __init__(self, directory, max_bytes: int, max_files: int):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rejected_dir = self.dir / "rejected"
        self.max_bytes, self.max_files = max_bytes, max_files
        self._remove_torn()

    def _remove_torn(self):
        for meta in self.dir.glob("*.json"):
            set_aside = self.rejected_dir / meta.name
            if set_aside.with_suffix(".nlic").exists():
                meta.replace(set_aside)   # a crash in the middle of set_aside
            elif not meta.with_suffix(".nlic").exists():
                log.warning("spool: removing %s left by a crash before its bitstream was written", meta.name)
                meta.unlink(missing_ok=True)
        for tmp in self.dir.glob(".*.tmp*"):
            tmp.unlink(missing_ok=True)

    def entries(self) -> list[Entry]:
        """Complete entries, oldest first."""
        out = []
        for p in self.dir.glob("*.nlic"):
            seq, _, image_id = p.stem.partition("-")
            try:
                out.append(Entry(int(seq), image_id, p, p.stat().st_size))
            except (ValueError, FileNotFoundError):
                continue  # not ours, or acked and deleted while listing
        return sorted(out, key=lambda e: e.seq)

    def find(self, image_id: str) -> Entry | None:
        return next((e for e in self.entries() if e.image_id == image_id), None)

    def usage(self) -> tuple[int, int]:
        entries = self.entries()
        return len(entries), sum(e.size for e in entries)

    def fits(self, extra_bytes: int = 0) -> bool:
        files, size = self.usage()
        return files + 1 <= self.max_files and size + extra_bytes <= self.max_bytes

    def add(self, image_id: str, data: bytes, meta: dict) -> Entry:
        seq = time.time_ns()
        path = self.dir / f"{seq:020d}-{image_id}.nlic"
        try:
            write_bytes(path.with_suffix(".json"), json.dumps(meta, sort_keys=True).encode())
            write_bytes(path, data)
        except OSError:
            path.with_suffix(".json").unlink(missing_ok=True)   # no entry rather than a torn one
            raise
        return Entry(seq, image_id, path, len(data))

    def remove(self, entry: Entry) -> None:
        # The bitstream goes first: without it the entry is no longer complete, whatever happens next.
        entry.path.unlink(missing_ok=True)
        entry.meta_path.unlink(missing_ok=True)

    def set_aside(self, entry: Entry) -> Path:
        """Move an entry the ground rejected out of the send queue, keeping it for inspection."""
        self.rejected_dir.mkdir(exist_ok=True)
        target = self.rejected_dir / entry.path.name
        # The bitstream first, so that the entry stops being sent at once; a crash before its metadata follows
        # leaves that .json for _remove_torn to move after it.
        entry.path.replace(target)
        entry.meta_path.replace(target.with_suffix(".json"))
        return target
