"""200 photos through edge, broker and ground while each of them is killed in turn: every photo is archived
exactly once with the edge's exact bitstream, and the catalog agrees with the archive."""
from __future__ import annotations

import hashlib
import os
import signal
import time


from codec import api
from codec.imageio import read_photo
from tests.deploy.harness import Pipeline, make_photos, wait_until

N_PHOTOS = 200
QUOTA = 25


def _kill_ground_mid_decode(pipe: Pipeline, ground, attempts: int = 20) -> bool:
    """SIGSTOP the ground right after it logs 'decode start', and SIGKILL it there if that photo is not
    catalogued yet (it was caught before the archive was written). Returns whether that happened."""
    for _ in range(attempts):
        offset = len(ground.log())
        if not ground.wait_log("decode start", 10, offset):
            break
        os.kill(ground.proc.pid, signal.SIGSTOP)
        line = [ln for ln in ground.log()[offset:].splitlines() if "decode start" in ln][-1]
        image_id = line.split("decode start ")[1].split()[0]
        if image_id not in {r["image_id"] for r in pipe.rows()}:
            ground.kill()
            return True
        os.kill(ground.proc.pid, signal.SIGCONT)
    ground.kill()
    return False


def test_200_photos_survive_broker_ground_and_edge_kills(tmp_path, tiny_model):
    small = make_photos(tmp_path / "src", N_PHOTOS - 70)
    # Larger photos for the ground-kill phase: their decode is long enough to be caught in the middle.
    photos = small[:60] + make_photos(tmp_path / "src", 70, h=192, w=256, prefix="q") + small[60:]
    pipe = Pipeline(tmp_path / "run", tiny_model.path,
                    edge={"spool_quota": {"max_files": QUOTA, "when_full": "refuse_new"}})
    t0 = time.monotonic()
    try:
        pipe.broker.start()
        ground = pipe.start_ground()
        pipe.start_edge()

        # 1. The broker dies (SIGKILL: whatever it had not saved is gone) and comes back on the same port.
        pipe.drop(photos[:60])
        assert pipe.wait_archived(15, 90) >= 15, pipe.logs()
        pipe.broker.kill()
        time.sleep(1.0)
        pipe.broker.start()
        assert pipe.wait_archived(60, 90) == 60, pipe.logs()

        # 2. The ground dies in the middle of a decode and is restarted.
        pipe.drop(photos[60:130])
        caught = _kill_ground_mid_decode(pipe, ground)
        assert caught, "never caught the ground between 'decode start' and its catalog row\n" + pipe.logs()
        ground = pipe.start_ground()
        assert pipe.wait_archived(130, 90) == 130, pipe.logs()

        # 3. With the ground down no acks come, the spool fills up to its quota, and the edge is killed.
        assert wait_until(lambda: not pipe.spool_entries(), 30)   # every earlier ack is in
        ground.kill()
        offset = len(pipe.edge.log())
        pipe.drop(photos[130:])
        assert pipe.edge.wait_log("SPOOL FULL", 60, offset), pipe.logs()
        pipe.edge.kill()
        assert len(pipe.spool_entries()) == QUOTA, pipe.logs()
        assert len(list(pipe.inbox.glob("*.done"))) == N_PHOTOS - 130 - QUOTA, pipe.logs()  # waiting, not lost
        pipe.start_ground()
        pipe.start_edge()
        assert pipe.edge.wait_log(f"resuming a spool of {QUOTA} photos", 30), pipe.logs()
        assert pipe.wait_archived(N_PHOTOS, 120) == N_PHOTOS, pipe.logs()
        assert wait_until(lambda: not pipe.spool_entries(), 30), "spool not drained after all acks"
        elapsed = time.monotonic() - t0
    finally:
        codes = pipe.stop()
    assert all(c == 0 for c in codes.values()), codes
    _check_archive(pipe, photos, tiny_model)
    print(f"\n{N_PHOTOS} photos with three kills in {elapsed:.1f} s")


def _check_archive(pipe: Pipeline, photos, model):
    rows = pipe.rows()
    assert len(rows) == N_PHOTOS
    assert len({(r["drone"], r["image_id"]) for r in rows}) == N_PHOTOS
    assert sorted(r["name"] for r in rows) == sorted(p.name for p in photos)
    by_name = {r["name"]: r for r in rows}
    # Files: exactly three per photo, no temporary leftovers anywhere in the archive.
    files = [p for p in pipe.archive.rglob("*") if p.is_file()]
    assert len(files) == 3 * N_PHOTOS, sorted(p.name for p in files if p.name.startswith("."))[:5]
    assert not list(pipe.inbox.glob("*.png")) and not list(pipe.inbox.glob("*.done"))
    assert len(list((pipe.root / "sent").glob("*.png"))) == N_PHOTOS     # originals kept for refinement
    assert wait_until(lambda: not any((pipe.state / "partial").iterdir()), 15)
    # The archived bitstream is exactly what an independent encode of the photo gives (same model and λ).
    for p in photos[::7]:
        row = by_name[p.name]
        archived = open(row["bitstream_path"], "rb").read()
        assert hashlib.sha256(archived).hexdigest() == row["sha256"]
        assert archived == api.compress(model, read_photo(p), 128).data
    for row in rows:
        assert hashlib.sha256(open(row["bitstream_path"], "rb").read()).hexdigest() == row["sha256"]
        assert os.path.exists(row["recon_path"]) and os.path.exists(row["sidecar_path"])
