"""Chunks stay at or below the broker's maximum packet size, read from CONNACK (or the configured cap)."""
from __future__ import annotations

import hashlib

import paho.mqtt.client as mqtt
import pytest

from deploy.localrun import Broker
from edge import wire
from edge.config import MQTT
from edge.mqtt_link import Link
from tests.deploy.harness import wait_until

META = {"image_id": "ab" * 16, "sha256": "cd" * 32, "size": 0, "drone": "drone-01", "site": "site-01",
        "name": "IMG_0001.JPG", "lambda_index": 200, "t_detect": 1.0, "t_spooled": 2.0, "encode_ms": 3.0}
TOPIC = wire.chunk_topic("blades", "site-01", "drone-01", "ab" * 16)


@pytest.mark.parametrize("limit", [512, 700, 4096, 1 << 16])
@pytest.mark.parametrize("size", [1, 999, 10_000, 100_003])
def test_every_planned_packet_fits_and_the_chunks_rebuild_the_file(limit, size):
    data = hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1)
    data = data[:size]
    chunks = wire.plan_chunks(TOPIC, {**META, "size": size}, data, limit)
    assert b"".join(c.payload for c in chunks) == data
    assert [c.index for c in chunks] == list(range(len(chunks)))
    sizes = [wire.packet_size(TOPIC, c.props, len(c.payload)) for c in chunks]
    assert max(sizes) <= limit
    assert len(chunks) == 1 or sizes[0] > limit - 16      # and the chunks are not needlessly small


def test_a_limit_too_small_for_the_headers_is_refused():
    with pytest.raises(wire.OversizeMessage, match="no room"):
        wire.plan_chunks(TOPIC, {**META, "size": 10}, b"x" * 10, 300)


def _link(port, cap=8192):
    cfg = MQTT(port=port, client_id="edge-test", max_packet_bytes=cap, connect_wait_s=5)
    link = Link(cfg, "blades/site-01/drone-01/ack")
    link.start()
    assert link.connected.wait(10)
    return link


def test_limit_comes_from_connack_and_oversize_never_goes_out(tmp_path):
    broker = Broker(tmp_path / "b", max_packet_size=1024).start()
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sniffer", protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.append(m)
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("blades/#", qos=1)
    sub.loop_start()
    link = _link(broker.port)
    try:
        assert link.max_packet == 1024               # the broker's 1024, not our 8192 cap
        data = bytes(range(256)) * 40
        chunks = wire.plan_chunks(TOPIC, {**META, "size": len(data)}, data, link.max_packet)
        # The chunker fills packets up to exactly the limit (whole packet; mosquitto only checks the part
        # after the fixed header, so this leaves it a few bytes to spare).
        assert max(wire.packet_size(TOPIC, c.props, len(c.payload)) for c in chunks) == 1024
        too_big = wire.Chunk(0, 1, data[:2000], chunks[0].props)
        with pytest.raises(wire.OversizeMessage):
            link.publish(TOPIC, too_big)
        for c in chunks:
            link.publish(TOPIC, c)
        assert wait_until(lambda: len(got) >= len(chunks), 10)
        assert b"".join(m.payload for m in sorted(got, key=lambda m: int(dict(m.properties.UserProperty)["chunk"]))) == data
        assert link.connected.is_set() and link.generation == 1     # never dropped, never reconnected
        # Control: the limit is real; a plain client sending a larger packet is thrown off.
        rogue = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rogue", protocol=mqtt.MQTTv5)
        rogue.connect("127.0.0.1", broker.port)
        rogue.loop_start()
        rogue.publish(TOPIC, b"r" * 1100, qos=1)
        assert wait_until(lambda: "rogue disconnected due to oversize packet" in broker.log(), 10)
        rogue.loop_stop()
        assert "edge-test disconnected" not in broker.log()
    finally:
        link.stop()
        sub.loop_stop()
        broker.stop()


def test_configured_cap_applies_when_the_broker_advertises_none(tmp_path):
    broker = Broker(tmp_path / "b").start()
    link = _link(broker.port, cap=5000)
    try:
        assert link.max_packet == 5000
    finally:
        link.stop()
        broker.stop()
