"""Container format v1 (see docs/bitstream.md). A strict parser: every size is checked against fixed
bounds and against the bytes actually present before anything is allocated or decoded.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import google_crc32c

from .errors import BitstreamError
from .lambdas import GRID_SIZE

MAGIC = b"NLIC"
VERSION = 1
FIXED = struct.Struct("<4sBBBB16sIIHHHHII")   # 48 bytes
TILE_ENTRY = struct.Struct("<II")
CRC = struct.Struct("<I")
MAX_PIXELS = 100_000_000
MAX_SIDE = 1 << 17
MAX_META = 16 << 20
MIN_TILE_PX, MAX_TILE_PX = 128, 4096
META_EXIF, META_XMP = 1, 2
META_ENTRY = struct.Struct("<BI")


def crc32c(data: bytes) -> int:
    return google_crc32c.value(bytes(data))


def tile_crc(index: int, payload: bytes) -> int:
    """The tile's index is part of its CRC, so tiles moved to another slot are detected."""
    return crc32c(struct.pack("<I", index) + payload)


@dataclass
class Header:
    levels: int
    lambda_index: int
    model_id: bytes
    width: int
    height: int
    tile_px: int
    tiles_x: int = 0
    tiles_y: int = 0
    flags: int = 0

    def grid(self, alignment: int):
        return tile_grid(self.width, self.height, self.tile_px, alignment)

    def as_dict(self):
        return {"format": "NLIC", "version": VERSION, "levels": self.levels, "lambda_index": self.lambda_index,
                "model_id": self.model_id.hex(), "width": self.width, "height": self.height,
                "tile_px": self.tile_px, "tiles_x": self.tiles_x, "tiles_y": self.tiles_y}


@dataclass
class Container:
    header: Header
    tiles: list                       # payload bytes per tile, row-major
    metadata: dict = field(default_factory=dict)   # type -> bytes (EXIF, XMP)


def tile_grid(width: int, height: int, tile_px: int, alignment: int) -> tuple[int, int]:
    """Tiles across and down. Tiles cover the z1 grid (16 px per position)."""
    if tile_px % (16 * alignment) or not MIN_TILE_PX <= tile_px <= MAX_TILE_PX:
        raise BitstreamError(f"tile size {tile_px} px is not a multiple of {16 * alignment} in "
                             f"[{MIN_TILE_PX}, {MAX_TILE_PX}]")
    t1 = tile_px // 16
    return math.ceil(math.ceil(width / 16) / t1), math.ceil(math.ceil(height / 16) / t1)


def pack_metadata(metadata: dict) -> bytes:
    return b"".join(META_ENTRY.pack(t, len(v)) + v for t, v in sorted(metadata.items()) if v)


def unpack_metadata(block: bytes) -> dict:
    out, pos = {}, 0
    while pos < len(block):
        if pos + META_ENTRY.size > len(block):
            raise BitstreamError("metadata block ends inside an entry header")
        kind, length = META_ENTRY.unpack_from(block, pos)
        pos += META_ENTRY.size
        if length > len(block) - pos:
            raise BitstreamError(f"metadata entry of {length} bytes overruns its block")
        if kind in out:
            raise BitstreamError(f"metadata entry type {kind} appears twice")
        out[kind] = bytes(block[pos:pos + length])
        pos += length
    return out


def write(c: Container) -> bytes:
    h = c.header
    meta = pack_metadata(c.metadata)
    if len(meta) > MAX_META:
        raise BitstreamError(f"metadata is {len(meta)} bytes, more than {MAX_META}")
    fixed = FIXED.pack(MAGIC, VERSION, h.flags, h.levels, h.lambda_index, h.model_id, h.width, h.height,
                       h.tile_px, h.tiles_x, h.tiles_y, 0, len(meta), crc32c(meta))
    table = b"".join(TILE_ENTRY.pack(len(p), tile_crc(i, p)) for i, p in enumerate(c.tiles))
    head = fixed + table
    return b"".join([head, CRC.pack(crc32c(head)), meta, *c.tiles])


def parse_header(data: bytes, alignment_of) -> tuple[Header, list, int]:
    """Returns (header, [(length, crc)], offset of the metadata block). alignment_of(levels) -> int."""
    if len(data) < FIXED.size + CRC.size:
        raise BitstreamError(f"file is {len(data)} bytes, shorter than a header")
    (magic, version, flags, levels, lam, model_id, width, height, tile_px, tiles_x, tiles_y, reserved,
     meta_len, _meta_crc) = FIXED.unpack_from(data, 0)
    if magic != MAGIC:
        raise BitstreamError("not an NLIC bitstream (bad magic)")
    if version != VERSION:
        raise BitstreamError(f"bitstream version {version} is not supported (this decoder reads {VERSION})")
    if flags or reserved:
        raise BitstreamError("reserved header fields are not zero")
    if not 2 <= levels <= 4:
        raise BitstreamError(f"level count {levels} outside 2..4")
    if lam >= GRID_SIZE:
        raise BitstreamError(f"λ index {lam} outside 0..{GRID_SIZE - 1}")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE) or width * height > MAX_PIXELS:
        raise BitstreamError(f"declared image size {width}x{height} is outside the limits "
                             f"(1..{MAX_SIDE} per side, {MAX_PIXELS} pixels)")
    expect = tile_grid(width, height, tile_px, alignment_of(levels))
    if (tiles_x, tiles_y) != expect:
        raise BitstreamError(f"tile grid {tiles_x}x{tiles_y} does not match a {width}x{height} image "
                             f"in {tile_px} px tiles ({expect[0]}x{expect[1]})")
    n = tiles_x * tiles_y
    table_end = FIXED.size + n * TILE_ENTRY.size
    if len(data) < table_end + CRC.size:
        raise BitstreamError("file ends inside the tile table (truncated)")
    (stored,) = CRC.unpack_from(data, table_end)
    if crc32c(data[:table_end]) != stored:
        raise BitstreamError("header CRC mismatch (corrupt header)")
    if meta_len > MAX_META:
        raise BitstreamError(f"metadata length {meta_len} exceeds {MAX_META}")
    entries = [TILE_ENTRY.unpack_from(data, FIXED.size + i * TILE_ENTRY.size) for i in range(n)]
    header = Header(levels, lam, model_id, width, height, tile_px, tiles_x, tiles_y)
    return header, entries, table_end + CRC.size


def read(data: bytes, alignment_of) -> Container:
    data = memoryview(data)
    header, entries, pos = parse_header(data, alignment_of)
    meta_len, meta_crc = FIXED.unpack_from(data, 0)[-2:]
    if pos + meta_len > len(data):
        raise BitstreamError("file ends inside the metadata block (truncated)")
    meta = bytes(data[pos:pos + meta_len])
    if crc32c(meta) != meta_crc:
        raise BitstreamError("metadata CRC mismatch (corrupt metadata)")
    pos += meta_len
    total = sum(length for length, _ in entries)
    if pos + total != len(data):
        state = "truncated" if pos + total > len(data) else "has trailing bytes"
        raise BitstreamError(f"tile data is {len(data) - pos} bytes but the table says {total} ({state})")
    tiles = []
    for i, (length, crc) in enumerate(entries):
        payload = bytes(data[pos:pos + length])
        if tile_crc(i, payload) != crc:
            raise BitstreamError(f"tile {i} CRC mismatch (corrupt or misplaced tile)")
        tiles.append(payload)
        pos += length
    return Container(header, tiles, unpack_metadata(meta))
