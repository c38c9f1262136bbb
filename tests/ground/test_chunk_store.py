"""The on-disk chunk store shared by the daemons of one group: byte counts that survive another daemon's
cleanup, and a backlog of complete transfers queued once however often the scan runs."""
from __future__ import annotations

import hashlib

from codec import api
from codec.imageio import Photo
from deploy.localrun import free_port
from edge import wire as edge_wire
from ground.chunk_store import ChunkStore
from ground.config import GroundConfig
from ground.daemon import GroundDaemon
from ground.wire import ChunkInfo
from tests.conftest import synthetic_image


def _info(image_id: str, index: int, count: int, size: int) -> ChunkInfo:
    return ChunkInfo("site-1", "drone-1", image_id, "0" * 64, index, count, size, {})


def test_byte_counts_skip_unfinished_files_and_transfers_another_daemon_removed(tmp_path):
    store = ChunkStore(tmp_path, fsync=False)
    a, b = _info("a" * 32, 0, 2, 10), _info("b" * 32, 0, 1, 7)
    assert store.put(a, b"12345") and not store.put(a, b"12345") and store.put(b, b"1234567")
    (store.dir / a.key / ".000001.999.tmp.chunk").write_bytes(b"half")   # another daemon mid-write
    (store.dir / "stray-file").write_bytes(b"not a transfer")
    assert store.stored_bytes(a.key) == 5 and store.total_bytes() == 12
    store.discard(b.key)                       # what another daemon does once it archived the photo
    assert store.stored_bytes(b.key) == 0 and store.total_bytes() == 5


def test_a_backlog_of_complete_transfers_is_queued_once_per_transfer(tmp_path, tiny_model):
    cfg = GroundConfig.model_validate({
        "model": str(tiny_model.path), "state_dir": str(tmp_path / "state"), "archive": str(tmp_path / "archive"),
        "mqtt": {"port": free_port()}})
    daemon = GroundDaemon(cfg)   # not started: its intake and scan are called here, nothing consumes the queue
    for width in (128, 192):   # two sizes: the untrained model codes different content alike
        data = api.compress(tiny_model, Photo(synthetic_image(128, width, 1)), 128).data
        image_id = hashlib.sha256(data).hexdigest()[:32]
        meta = {"image_id": image_id, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                "drone": "drone-1", "site": "site-1", "name": "x.png", "lambda_index": 128,
                "t_detect": 0.0, "t_spooled": 0.0, "encode_ms": 1.0}
        topic = edge_wire.chunk_topic("blades", "site-1", "drone-1", image_id)
        for chunk in edge_wire.plan_chunks(topic, meta, data, 600):
            daemon.take_chunk(topic, chunk.props.UserProperty, chunk.payload)
    for _ in range(3):
        daemon.scan()
    assert daemon.work.qsize() == 2
