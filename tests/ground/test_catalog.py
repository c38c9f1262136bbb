"""The catalog several ground daemons share: starting together, and archiving a photo exactly once."""
from __future__ import annotations

import multiprocessing
import sqlite3

from ground.catalog import Catalog
from ground.refinement_jobs import JobQueue

DAEMONS = 6
STARTS = 150


def _open(opener, path, barrier, errors):
    barrier.wait()    # every process opens the fresh file at the same moment, like daemons started together
    try:
        opener(path).db.close()
    except sqlite3.Error as exc:
        errors.put(f"{type(exc).__name__}: {exc}")


def _start_together(path) -> list[str]:
    ctx = multiprocessing.get_context("fork")
    barrier, errors = ctx.Barrier(DAEMONS), ctx.Queue()
    # Live daemons and refinement jobs (whose systemd units start at the same boot) open the same file.
    openers = [(Catalog, JobQueue)[i % 2] for i in range(DAEMONS)]
    procs = [ctx.Process(target=_open, args=(o, path, barrier, errors)) for o in openers]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    found = []
    while not errors.empty():
        found.append(errors.get())
    # any other failure (an exception that is not SQLite's, a hang) shows as an exit code
    return found + [f"exit code {p.exitcode}" for p in procs if p.exitcode != 0]


def test_daemons_and_refinement_jobs_that_start_together_all_open_a_new_catalog(tmp_path):
    # CI once saw the second of two daemons die with "database is locked" on PRAGMA journal_mode=WAL: two
    # connections switching a new file to WAL at once deadlock, and SQLite refuses one without waiting.
    # The race is rare (a few starts in a few hundred), hence many starts.
    for start in range(STARTS):
        path = tmp_path / f"catalog{start}.sqlite"
        assert _start_together(path) == [], f"start {start}"
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT count(*) FROM images").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM refinements").fetchone()[0] == 0
        db.close()


def test_a_photo_is_catalogued_once_across_two_connections(tmp_path):
    a, b = Catalog(tmp_path / "c.sqlite"), Catalog(tmp_path / "c.sqlite")
    row = {"drone": "d1", "image_id": "img-1", "site": "s", "sha256": "0" * 64, "bytes": 10, "width": 8,
           "height": 8, "lambda_index": 0, "lambda": 64.0, "bpp": 1.0, "model_id": "m", "recon_path": "r",
           "bitstream_path": "b", "sidecar_path": "s", "ground_id": "g", "t_archived": 1.0}
    assert a.add(row) is True
    assert b.add(row) is False
    assert b.has("d1", "img-1") and [r["image_id"] for r in a.rows()] == ["img-1"]
    a.close()
    b.close()
