import struct

import pytest

from codec import container
from codec.errors import BitstreamError

ALIGN = lambda levels: 2 ** (levels - 1)


def make(width=300, height=200, tile_px=128, tiles=None, meta=None):
    tx, ty = container.tile_grid(width, height, tile_px, ALIGN(4))
    tiles = tiles if tiles is not None else [bytes([i]) * (4 * (i + 1)) for i in range(tx * ty)]
    header = container.Header(4, 100, b"\x11" * 16, width, height, tile_px, tx, ty)
    return container.Container(header, tiles, meta if meta is not None else {container.META_EXIF: b"Exif\0\0abc"})


def test_round_trip():
    c = make(meta={container.META_EXIF: b"Exif\0\0GPS", container.META_XMP: b"<x:xmpmeta/>"})
    back = container.read(container.write(c), ALIGN)
    assert back.header == c.header
    assert back.tiles == c.tiles
    assert back.metadata == c.metadata


@pytest.mark.parametrize("cut", [0, 10, 47, 52, 60, -1])
def test_truncation_is_an_error(cut):
    data = container.write(make())
    with pytest.raises(BitstreamError):
        container.read(data[:cut], ALIGN)


def _rewrite_fixed(data: bytes, **changes) -> bytes:
    """Change header fields and fix the header CRC, so only the field check can catch it."""
    names = ["magic", "version", "flags", "levels", "lam", "model_id", "width", "height", "tile_px",
             "tiles_x", "tiles_y", "reserved", "meta_len", "meta_crc"]
    fields = dict(zip(names, container.FIXED.unpack_from(data, 0)))
    fields.update(changes)
    n = fields["tiles_x"] * fields["tiles_y"]
    old_n = len(make().tiles)
    table = data[container.FIXED.size: container.FIXED.size + 8 * min(n, old_n)]
    head = container.FIXED.pack(*[fields[k] for k in names]) + table
    rest = data[container.FIXED.size + 8 * old_n + 4:]
    return head + struct.pack("<I", container.crc32c(head)) + rest


@pytest.mark.parametrize("changes, message", [
    ({"magic": b"XXXX"}, "magic"),
    ({"version": 9}, "version"),
    ({"levels": 7}, "level"),
    ({"lam": 255}, None),
    ({"width": 60000, "height": 60000}, "outside the limits"),
    ({"width": 0}, "outside the limits"),
    ({"tiles_x": 50}, "tile grid"),
    ({"tile_px": 100}, "tile size"),
    ({"meta_len": 1 << 30}, "metadata length"),
])
def test_bad_header_fields(changes, message):
    data = _rewrite_fixed(container.write(make()), **changes)
    if message is None:  # index 255 is valid on a 256-point grid: the rest of the file still parses
        container.read(data, ALIGN)
        return
    with pytest.raises(BitstreamError, match=message):
        container.read(data, ALIGN)


def test_header_crc_catches_a_flip_in_the_model_id():
    data = bytearray(container.write(make()))
    data[10] ^= 1
    with pytest.raises(BitstreamError, match="header CRC"):
        container.read(bytes(data), ALIGN)


def test_swapped_tiles_are_detected():
    """Two tiles swapped with their table entries (as a buggy muxer would) fail their CRC."""
    c = make(tiles=[b"A" * 8, b"B" * 12, b"C" * 4, b"D" * 4, b"E" * 4, b"F" * 4])
    data = container.write(c)
    at = container.FIXED.size
    n = len(c.tiles)
    table = [data[at + 8 * i: at + 8 * i + 8] for i in range(n)]
    table[0], table[1] = table[1], table[0]
    payload_at = at + 8 * n + 4 + len(container.pack_metadata(c.metadata))
    payload = data[payload_at:]
    swapped = payload[8:20] + payload[0:8] + payload[20:]
    head = data[:at] + b"".join(table)
    forged = head + struct.pack("<I", container.crc32c(head)) + data[at + 8 * n + 4: payload_at] + swapped
    with pytest.raises(BitstreamError, match="tile 0 CRC"):
        container.read(forged, ALIGN)


def test_trailing_bytes_are_an_error():
    with pytest.raises(BitstreamError, match="trailing"):
        container.read(container.write(make()) + b"\0", ALIGN)


def test_metadata_entry_overrun():
    with pytest.raises(BitstreamError, match="overruns"):
        container.unpack_metadata(container.META_ENTRY.pack(1, 100) + b"abc")
