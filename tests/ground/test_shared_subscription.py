"""Two ground daemons in one shared-subscription group split the photos, and none is archived twice, even
though the chunks of one photo are spread over both daemons."""
from __future__ import annotations

from collections import Counter

from tests.deploy.harness import Pipeline, make_photos, wait_until

N = 30


def test_two_grounds_share_the_load_and_archive_each_photo_once(tmp_path, tiny_model):
    photos = make_photos(tmp_path / "src", N, h=256, w=256)
    # A small broker packet limit makes every photo several chunks, so both daemons hold parts of most photos.
    pipe = Pipeline(tmp_path / "run", tiny_model.path, broker={"max_packet_size": 700})
    try:
        pipe.broker.start()
        g1, g2 = pipe.start_ground("ground-a"), pipe.start_ground("ground-b")
        assert g1.wait_log("ready", 60) and g2.wait_log("ready", 60), pipe.logs()
        pipe.start_edge()
        pipe.drop(photos)
        assert pipe.wait_archived(N, 120) == N, pipe.logs()
        assert wait_until(lambda: not pipe.spool_entries(), 30)
    finally:
        codes = pipe.stop()
    assert all(c == 0 for c in codes.values()), codes
    rows = pipe.rows()
    assert len({r["image_id"] for r in rows}) == N
    by_daemon = Counter(r["ground_id"] for r in rows)
    assert set(by_daemon) == {"ground-a", "ground-b"}, by_daemon
    archived_lines = sum(g.log().count(" archived ") for g in pipe.grounds.values())
    assert archived_lines == N    # no daemon archived (or even decoded to the end) a photo the other had
    assert len([p for p in pipe.archive.rglob("*") if p.is_file()]) == 3 * N
    assert "packet limit 700 bytes, from CONNACK" in pipe.edge.log()
