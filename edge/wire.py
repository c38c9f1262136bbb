"""The edge's side of the wire protocol (docs/pipeline.md): topics, chunk user properties, packet sizes.

ground/wire.py parses what this writes; tests/deploy/test_wire_agreement.py checks the two agree.
"""
from __future__ import annotations

from dataclasses import dataclass

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# Bytes a PUBLISH needs besides topic, properties and payload: 1 fixed-header byte, up to 4 bytes of
# remaining length, 2 of topic length and 2 of packet id (QoS 1).
FIXED_OVERHEAD = 1 + 4 + 2 + 2


class OversizeMessage(Exception):
    """A PUBLISH that would exceed the broker's maximum packet size: it must never be sent."""


def chunk_topic(root: str, site: str, drone: str, image_id: str) -> str:
    return f"{root}/{site}/{drone}/img/{image_id}"


def ack_topic(root: str, site: str, drone: str) -> str:
    return f"{root}/{site}/{drone}/ack"


def _varint_len(n: int) -> int:
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def packet_size(topic: str, props: Properties, payload_len: int) -> int:
    """Exact size in bytes of a QoS 1 PUBLISH packet as it goes on the wire."""
    remaining = 2 + len(topic.encode()) + 2 + len(props.pack()) + payload_len
    return 1 + _varint_len(remaining) + remaining


def chunk_properties(meta: dict, index: int, count: int) -> Properties:
    """User properties carried by every chunk: ids, position, whole-file digest and the edge's timings."""
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("image_id", meta["image_id"]), ("chunk", str(index)), ("chunks", str(count)),
                          ("sha256", meta["sha256"]), ("size", str(meta["size"])), ("drone", meta["drone"]),
                          ("site", meta["site"]), ("name", meta["name"]),
                          ("lambda_index", str(meta["lambda_index"])), ("t_detect", f"{meta['t_detect']:.6f}"),
                          ("t_spooled", f"{meta['t_spooled']:.6f}"), ("encode_ms", f"{meta['encode_ms']:.3f}")]
    return props


@dataclass
class Chunk:
    index: int
    count: int
    payload: bytes
    props: Properties


def plan_chunks(topic: str, meta: dict, data: bytes, max_packet: int) -> list[Chunk]:
    """Split `data` so every PUBLISH, header and properties included, stays at or below max_packet."""
    # Properties of the widest chunk (largest index digits) bound every chunk's overhead.
    guess = max(1, len(data))
    for _ in range(8):   # the count's digit width settles in a couple of rounds
        worst = chunk_properties(meta, guess - 1, guess)
        room = max_packet - packet_size(topic, worst, 0)
        while room > 0 and packet_size(topic, worst, room) > max_packet:
            room -= 1   # a larger payload can need a longer remaining-length field (at most 3 more bytes)
        if room < 64:
            raise OversizeMessage(f"maximum packet size {max_packet} leaves no room for a payload "
                                  f"after {max_packet - room} bytes of topic and properties")
        count = max(1, -(-len(data) // room))
        if count == guess:
            break
        guess = count
    chunks = []
    for i in range(count):
        part = data[i * room:(i + 1) * room]
        props = chunk_properties(meta, i, count)
        size = packet_size(topic, props, len(part))
        if size > max_packet:
            raise OversizeMessage(f"chunk {i} would be a {size}-byte packet, above the limit {max_packet}")
        chunks.append(Chunk(i, count, part, props))
    return chunks
