"""Reading and writing photos with their camera metadata (EXIF, XMP) kept as opaque bytes."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import CodecError
from .service.atomic_files import commit_written

MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS   # Pillow refuses files above twice this before decoding them


@dataclass
class Photo:
    pixels: np.ndarray                  # (H, W, 3) uint8, RGB
    exif: bytes = b""
    xmp: bytes = b""
    extra: dict = field(default_factory=dict)


def _to_rgb(im: Image.Image, path) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        # Inspection photos have no meaningful alpha; composite on black would hide that, so refuse clearly
        # only if alpha is actually used.
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:
            raise CodecError(f"{path}: image has a transparent alpha channel, which this codec does not keep")
        return rgba.convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 / 65535.0 if arr.max() > 255 else 1.0
        return Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def read_photo(path) -> Photo:
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x the limit Pillow only warns, then decodes (a 150 MP photo took 1.25 GB before
            # the codec refused it): the size check below refuses it from its header instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise CodecError(f"{path}: image is {im.size[0]}x{im.size[1]}, larger than {MAX_PIXELS} pixels")
            im.load()
            exif, xmp = _metadata(im)
            rgb = _to_rgb(im, path)
            pixels = np.asarray(rgb, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise CodecError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise CodecError(f"{path}: not an image file Pillow can read") from None
    except Image.DecompressionBombError:
        raise CodecError(f"{path}: image larger than {MAX_PIXELS} pixels") from None
    except OSError as e:
        raise CodecError(f"{path}: cannot read image ({e})") from None
    return Photo(pixels, bytes(exif), bytes(xmp))


def _metadata(im: Image.Image) -> tuple[bytes, bytes]:
    """EXIF as the camera's APP1 payload ("Exif\\0\\0" + TIFF structure), XMP as its XML packet."""
    exif = im.info.get("exif") or b""
    if not exif and im.format == "TIFF":  # TIFF keeps EXIF as tags, not as a block
        tags = im.getexif()
        tags.pop(700, None)
        exif = tags.tobytes() if len(tags) else b""
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or b""
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    return bytes(exif), bytes(xmp)


def read_rgb(path) -> np.ndarray:
    return read_photo(path).pixels


def write_photo(path, photo: Photo):
    """PNG, TIFF or JPEG by extension; EXIF and XMP are written back where the format holds them."""
    path = Path(path)
    ext = path.suffix.lower()
    im = Image.fromarray(photo.pixels, "RGB")
    if ext in (".jpg", ".jpeg"):
        fmt, kwargs = "JPEG", {"quality": 95, "subsampling": 0, "exif": photo.exif, "xmp": photo.xmp}
    elif ext == ".png":
        info = PngImagePlugin.PngInfo()
        if photo.xmp:
            info.add_itxt("XML:com.adobe.xmp", photo.xmp.decode("utf-8", "replace"), zip=False)
        fmt, kwargs = "PNG", {"exif": photo.exif, "pnginfo": info}
    elif ext in (".tif", ".tiff"):
        tags = Image.Exif()
        if photo.exif:
            tags.load(photo.exif)
        if photo.xmp:
            tags[700] = photo.xmp  # the TIFF XMP tag; a separate tiffinfo would drop the EXIF tags
        fmt, kwargs = "TIFF", {"exif": tags}
    else:
        raise CodecError(f"{path}: output format '{ext}' not supported (use .png, .tif or .jpg)")
    kwargs = {k: v for k, v in kwargs.items() if v or k not in ("exif", "xmp")}
    tmp = path.with_name(path.name + ".part")
    try:
        im.save(tmp, format=fmt, **kwargs)
        commit_written(tmp, path)   # fsynced before the rename: a crash never leaves an empty photo
    except (OSError, ValueError) as e:   # ValueError: e.g. EXIF over JPEG's 64 KB segment
        tmp.unlink(missing_ok=True)
        raise CodecError(f"{path}: cannot write image ({getattr(e, 'strerror', None) or e})") from None
