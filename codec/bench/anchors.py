"""The standard codecs the learned codec is measured against, each at a ladder of settings.

Each anchor maps (RGB uint8 array, setting) -> file bytes and back. Every byte of the file counts.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image


@dataclass
class Anchor:
    name: str
    settings: list
    encode: Callable
    decode: Callable


def _pil_encode(fmt: str, setting_key: str, **fixed):
    def encode(pixels, setting):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt, **{setting_key: setting}, **fixed)
        return buf.getvalue()
    return encode


def _pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _jpeg2000_encode(pixels, ratio):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[ratio],
                                 irreversible=True, mct=1)
    return buf.getvalue()


def _jxl(threads: int):
    import imagecodecs

    def encode(pixels, distance):
        return imagecodecs.jpegxl_encode(pixels, distance=distance, effort=7, numthreads=threads or None)

    def decode(data):
        return imagecodecs.jpegxl_decode(data, numthreads=threads or None)
    return encode, decode


def _heic_encoder(threads: int):
    import pillow_heif
    # x265 otherwise starts a thread pool over every core; a pool of n threads writes the same bytes
    params = {"x265:pools": str(threads)} if threads else {}

    def encode(pixels, quality):
        heif = pillow_heif.from_bytes(mode="RGB", size=(pixels.shape[1], pixels.shape[0]), data=pixels.tobytes())
        buf = io.BytesIO()
        heif.save(buf, quality=quality, enc_params=params)
        return buf.getvalue()
    return encode


def _heic_decode(data):
    import pillow_heif
    heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
    return np.asarray(heif[0]).reshape(heif.size[1], heif.size[0], -1)[..., :3]


def limit_decoder_threads(threads: int):
    """The HEIC and AVIF decoders take their thread count from module-wide defaults (4, and every core)."""
    import pillow_heif
    from PIL import AvifImagePlugin
    pillow_heif.options.DECODE_THREADS = threads
    AvifImagePlugin.DEFAULT_MAX_THREADS = threads


def anchors(threads: int = 0) -> list[Anchor]:
    """threads: how many threads each codec may use, so that its times compare with ours at the same count
    (0: the libraries' defaults, where x265 and libavif take every core). JPEG, WebP and JPEG 2000 run on
    one thread in Pillow whatever it is."""
    if threads:
        limit_decoder_threads(threads)
    jxl_encode, jxl_decode = _jxl(threads)
    avif = {"max_threads": threads} if threads else {}
    return [
        Anchor("JPEG", [10, 25, 40, 60, 80, 92], _pil_encode("JPEG", "quality"), _pil_decode),
        Anchor("WebP", [5, 20, 40, 60, 80, 95], _pil_encode("WEBP", "quality", method=6), _pil_decode),
        Anchor("JPEG2000", [200, 100, 50, 25, 12, 8], _jpeg2000_encode, _pil_decode),
        Anchor("AVIF", [15, 30, 45, 60, 75, 90], _pil_encode("AVIF", "quality", speed=6, **avif), _pil_decode),
        Anchor("JPEGXL", [12.0, 6.0, 3.0, 2.0, 1.0, 0.5], jxl_encode, jxl_decode),
        Anchor("HEIC", [5, 15, 25, 35, 50, 65, 80], _heic_encoder(threads), _heic_decode),
    ]
