"""The SQLite catalog: one row per archived photo, keyed by (drone, image_id).

The primary key is what makes archiving exactly-once: a second insert of the same photo (a resend, or a
second daemon racing) fails and is treated as a duplicate. WAL mode lets several daemons share the file.
"""
from __future__ import annotations

import fcntl
import sqlite3
from contextlib import contextmanager
from pathlib import Path

COLUMNS = ("drone", "image_id", "site", "sha256", "bytes", "width", "height", "lambda_index", "lambda", "bpp",
           "model_id", "capture_time", "name", "recon_path", "bitstream_path", "sidecar_path", "ground_id",
           "t_detect", "t_spooled", "t_received", "t_archived", "encode_ms", "decode_ms")

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    drone TEXT NOT NULL, image_id TEXT NOT NULL, site TEXT NOT NULL, sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    lambda_index INTEGER NOT NULL, lambda REAL NOT NULL, bpp REAL NOT NULL, model_id TEXT NOT NULL,
    capture_time TEXT, name TEXT, recon_path TEXT NOT NULL, bitstream_path TEXT NOT NULL,
    sidecar_path TEXT NOT NULL, ground_id TEXT NOT NULL,
    t_detect REAL, t_spooled REAL, t_received REAL, t_archived REAL NOT NULL, encode_ms REAL, decode_ms REAL,
    PRIMARY KEY (drone, image_id)
)
"""


@contextmanager
def _setup_lock(path):
    """Serialise the catalog set-up of daemons that start together.

    Switching to WAL takes an exclusive lock from a shared one; when two connections try at once, SQLite
    refuses one with "database is locked" at once (its busy timeout does not apply to that deadlock).
    """
    with open(f"{path}.setup-lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_catalog(path, schema: str, **connect_args) -> sqlite3.Connection:
    """A connection to the shared catalog in WAL mode, with `schema` created if it is not there yet."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=30, **connect_args)
    with _setup_lock(path):
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(schema)
        db.commit()
    return db


class Catalog:
    def __init__(self, path):
        # Made where the daemon is built, used by its main loop thread only (one thread at a time).
        self.db = open_catalog(path, SCHEMA, check_same_thread=False)
        self.db.execute("PRAGMA synchronous=FULL")   # the row is on disk before the ack goes out

    def has(self, drone: str, image_id: str) -> bool:
        row = self.db.execute("SELECT 1 FROM images WHERE drone=? AND image_id=?", (drone, image_id)).fetchone()
        return row is not None

    def add(self, row: dict) -> bool:
        """Insert; False when the photo is already catalogued."""
        cols = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        try:
            with self.db:
                self.db.execute(f"INSERT INTO images ({cols}) VALUES ({marks})", [row.get(c) for c in COLUMNS])
        except sqlite3.IntegrityError:
            return False
        return True

    def rows(self) -> list[dict]:
        cur = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM images ORDER BY t_archived")
        return [dict(zip(COLUMNS, r)) for r in cur.fetchall()]

    def close(self):
        self.db.close()
