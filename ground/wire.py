"""The ground's side of the wire protocol (docs/pipeline.md): parse and check chunk topics and properties.

Everything here comes from the network, so every field is checked before it names a file or sizes a buffer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from codec.service.mqtt import ID_RE  # ids can never be '', '.', '..' or contain '/'

IMAGE_ID_RE = re.compile(r"^[0-9a-f]{8,64}$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class Rejected(Exception):
    """A message or photo the ground refuses; the message is the logged reason."""


def chunk_filter(root: str, group: str) -> str:
    return f"$share/{group}/{root}/+/+/img/+"


def ack_topic(root: str, site: str, drone: str) -> str:
    return f"{root}/{site}/{drone}/ack"


@dataclass(frozen=True)
class ChunkInfo:
    site: str
    drone: str
    image_id: str
    sha256: str
    index: int
    count: int
    size: int
    extra: dict          # name, lambda_index and the edge's timings, as sent

    @property
    def key(self) -> str:
        """Names the transfer's folder; ids are already checked to be single safe path components."""
        # Count and size too: chunks of one photo split two ways (the edge's packet limit changed between
        # sends) must not mix in one folder, where they would never add up.
        return f"{self.site}~{self.drone}~{self.image_id}~{self.sha256[:16]}~{self.count}~{self.size}"


def safe_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise Rejected(f"{what} {value!r} is not a safe id (1-64 of A-Z a-z 0-9 _ . -, not starting with . or -)")
    return value


def _int(props: dict, key: str, lo: int, hi: int) -> int:
    try:
        v = int(props[key])
    except KeyError:
        raise Rejected(f"user property {key!r} is missing") from None
    except ValueError:
        raise Rejected(f"user property {key!r} is not an integer") from None
    if not lo <= v <= hi:
        raise Rejected(f"user property {key}={v} outside {lo}..{hi}")
    return v


def parse_chunk(topic: str, user_props: list, payload_len: int, root: str, limits) -> ChunkInfo:
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != root or parts[3] != "img":
        raise Rejected(f"topic {topic!r} is not {root}/<site>/<drone>/img/<image_id>")
    site, drone, image_id = safe_id(parts[1], "site"), safe_id(parts[2], "drone id"), parts[4]
    if not IMAGE_ID_RE.fullmatch(image_id):
        raise Rejected(f"image id {image_id!r} is not 8-64 lower-case hex digits")
    props = dict(user_props or [])
    # The broker's ACL ties the topic's drone segment to the login; the properties must agree with it.
    for key, expected in (("image_id", image_id), ("drone", drone), ("site", site)):
        if props.get(key) != expected:
            raise Rejected(f"user property {key}={props.get(key)!r} does not match the topic's {expected!r}")
    sha = props.get("sha256", "")
    if not SHA_RE.fullmatch(sha):
        raise Rejected("user property sha256 is not 64 lower-case hex digits")
    size = _int(props, "size", 1, limits.max_bytes)
    count = _int(props, "chunks", 1, limits.max_chunks)
    index = _int(props, "chunk", 0, count - 1)
    if payload_len == 0:
        raise Rejected("empty chunk")
    if payload_len > size:
        raise Rejected(f"chunk of {payload_len} bytes is larger than the whole photo ({size} bytes)")
    extra = {k: props[k] for k in ("name", "lambda_index", "t_detect", "t_spooled", "encode_ms") if k in props}
    return ChunkInfo(site, drone, image_id, sha, index, count, size, extra)
