"""The spool on disk, the inbox rules, and the quota policies (run by the real edge process, no broker)."""
from __future__ import annotations

import json
import time

from deploy.localrun import Service, free_port, write_yaml
from edge.spool import Spool
from tests.deploy.harness import make_photos, wait_until


def test_entries_are_oldest_first_and_torn_ones_are_cleaned(tmp_path):
    s = Spool(tmp_path, max_bytes=10_000, max_files=10)
    a = s.add("a" * 32, b"first", {"name": "a"})
    b = s.add("b" * 32, b"second", {"name": "b"})
    (tmp_path / f"{time.time_ns():020d}-{'c' * 32}.json").write_text("{}")   # crash before the bitstream
    (tmp_path / ".x.123.tmp.nlic").write_bytes(b"half")                     # crash mid-write
    s = Spool(tmp_path, max_bytes=10_000, max_files=10)
    assert [e.image_id for e in s.entries()] == ["a" * 32, "b" * 32]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        [a.path.name, a.meta_path.name, b.path.name, b.meta_path.name])
    assert s.entries()[0].data() == b"first" and s.entries()[1].meta() == {"name": "b"}
    assert s.usage() == (2, 11) and s.fits(10) and not s.fits(10_000)
    kept = s.set_aside(s.entries()[0])
    assert kept.read_bytes() == b"first" and [e.image_id for e in s.entries()] == ["b" * 32]
    s.remove(s.entries()[0])
    assert s.entries() == []


def test_a_crash_in_the_middle_of_set_aside_keeps_the_metadata_with_the_bitstream(tmp_path):
    s = Spool(tmp_path, max_bytes=10_000, max_files=10)
    entry = s.add("d" * 32, b"rejected by the ground", {"name": "d"})
    s.rejected_dir.mkdir()
    entry.path.replace(s.rejected_dir / entry.path.name)   # set_aside's first step; the process dies here
    s = Spool(tmp_path, max_bytes=10_000, max_files=10)
    assert s.entries() == []
    assert json.loads((s.rejected_dir / entry.meta_path.name).read_text()) == {"name": "d"}
    assert (s.rejected_dir / entry.path.name).read_bytes() == b"rejected by the ground"


def _edge(tmp_path, model_path, quota: dict):
    cfg = write_yaml(tmp_path / "edge.yaml", {
        "model": model_path, "inbox": tmp_path / "inbox", "spool": tmp_path / "spool", "processed": None,
        "backend_order": ["torch"], "poll_interval_s": 0.05, "spool_quota": quota,
        # Nobody listens on this port: the edge spools and never gets an ack.
        "mqtt": {"port": free_port(), "connect_wait_s": 0}})
    (tmp_path / "inbox").mkdir()
    return Service("edge", cfg, tmp_path / "edge.log").start()


def test_drop_oldest_keeps_the_newest_photos_and_says_so(tmp_path, tiny_model):
    edge = _edge(tmp_path, tiny_model.path, {"max_files": 3, "when_full": "drop_oldest"})
    try:
        assert edge.wait_log("edge ready", 60), edge.log()
        for p in make_photos(tmp_path / "src", 6):
            (tmp_path / "inbox" / p.name).write_bytes(p.read_bytes())
            (tmp_path / "inbox" / (p.name + ".done")).touch()
            time.sleep(0.02)   # markers in capture order
        assert wait_until(lambda: edge.log().count("spooled ") == 6, 60), edge.log()
    finally:
        assert edge.stop() == 0
    names = sorted(json.loads(p.read_text())["name"] for p in (tmp_path / "spool").glob("*.json"))
    assert names == ["p0003.png", "p0004.png", "p0005.png"]
    assert edge.log().count("SPOOL FULL: dropped the oldest unsent photo") == 3


def test_refuse_new_leaves_photos_in_the_inbox_and_bad_input_is_set_aside(tmp_path, tiny_model):
    edge = _edge(tmp_path, tiny_model.path, {"max_files": 2, "when_full": "refuse_new"})
    inbox = tmp_path / "inbox"
    try:
        assert edge.wait_log("edge ready", 60), edge.log()
        (inbox / "broken.png").write_bytes(b"this is not a png")
        (inbox / "broken.png.done").touch()
        (inbox / "ghost.jpg.done").touch()                       # a marker without its photo
        (inbox / "partial.png").write_bytes(b"\x89PNG half written")   # no marker yet: left alone
        for p in make_photos(tmp_path / "src", 4):
            (inbox / p.name).write_bytes(p.read_bytes())
            (inbox / (p.name + ".done")).touch()
        assert wait_until(lambda: "SPOOL FULL" in edge.log(), 60), edge.log()
        assert wait_until(lambda: "broken.png" in edge.log() and "ghost.jpg.done" in edge.log(), 10), edge.log()
    finally:
        assert edge.stop() == 0
    assert len(list((tmp_path / "spool").glob("*.nlic"))) == 2
    waiting = sorted(p.name for p in inbox.glob("*.png"))
    assert waiting == ["p0002.png", "p0003.png", "partial.png"]       # nothing lost, nothing half-read
    assert (inbox / "rejected" / "broken.png").read_bytes() == b"this is not a png"
    assert not (inbox / "ghost.jpg.done").exists()
    assert "cannot encode broken.png" in edge.log()
