"""Photo files in and out: a header declaring too many pixels is refused before decoding, and a photo that
cannot be written leaves one line and no file."""
import struct
import zlib

import numpy as np
import pytest

from codec.errors import CodecError
from codec.imageio import MAX_PIXELS, Photo, read_photo, write_photo


def _png_header_only(path, width: int, height: int):
    """A PNG whose IHDR declares width x height and whose pixel data is missing: only the header is real."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(12_500, 12_000), (30_000, 30_000)])   # 1.5x and 9x the limit
def test_a_header_beyond_the_pixel_limit_is_refused_before_decoding(tmp_path, width, height):
    assert width * height > MAX_PIXELS
    _png_header_only(tmp_path / "bomb.png", width, height)
    with pytest.raises(CodecError, match=f"larger than {MAX_PIXELS} pixels"):
        read_photo(tmp_path / "bomb.png")


def test_exif_too_large_for_a_jpeg_is_one_line_and_leaves_no_file(tmp_path):
    photo = Photo(np.zeros((16, 16, 3), np.uint8), exif=b"Exif\0\0" + b"\0" * 70_000)
    with pytest.raises(CodecError, match="cannot write image"):
        write_photo(tmp_path / "out.jpg", photo)
    assert list(tmp_path.iterdir()) == []
    write_photo(tmp_path / "out.png", photo)   # PNG has room for it
    assert len(read_photo(tmp_path / "out.png").exif) > 70_000
