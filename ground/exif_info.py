"""The camera metadata a sidecar needs (capture time, GPS, camera), read from the EXIF bytes the photo kept."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from PIL import Image, TiffImagePlugin

log = logging.getLogger("ground.exif")

GPS_IFD, EXIF_IFD = 0x8825, 0x8769
DATETIME_ORIGINAL, DATETIME, MAKE, MODEL = 36867, 306, 271, 272
GPS_NAMES = {0: "version", 1: "lat_ref", 2: "lat", 3: "lon_ref", 4: "lon", 5: "alt_ref", 6: "alt",
             7: "timestamp", 29: "datestamp"}


def _plain(value):
    """EXIF values (rationals, tuples, bytes) as JSON values."""
    if isinstance(value, TiffImagePlugin.IFDRational):
        return float(value) if value.denominator else None
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex() if len(value) <= 64 else f"<{len(value)} bytes>"
    if isinstance(value, str):
        return value.strip("\x00").strip()
    return value


def _degrees(dms, ref):
    try:
        d, m, s = (float(x) for x in dms)
    except (TypeError, ValueError):
        return None
    deg = d + m / 60 + s / 3600
    return -deg if ref in ("S", "W") else deg


def read(exif: bytes) -> dict:
    """{'capture_time', 'camera', 'gps'}; empty values when the EXIF is absent or unreadable."""
    out = {"capture_time": None, "camera": None, "gps": None}
    if not exif:
        return out
    try:
        e = Image.Exif()
        e.load(exif)
        sub = e.get_ifd(EXIF_IFD)
        stamp = sub.get(DATETIME_ORIGINAL) or e.get(DATETIME)
        if stamp:
            out["capture_time"] = datetime.strptime(str(stamp).strip("\x00 "), "%Y:%m:%d %H:%M:%S").isoformat()
        if e.get(MAKE) or e.get(MODEL):
            out["camera"] = " ".join(str(_plain(e.get(t))) for t in (MAKE, MODEL) if e.get(t))
        gps = e.get_ifd(GPS_IFD)
        if gps:
            raw = {GPS_NAMES.get(k, str(k)): _plain(v) for k, v in gps.items()}
            raw["latitude"] = _degrees(gps.get(2), _plain(gps.get(1)))
            raw["longitude"] = _degrees(gps.get(4), _plain(gps.get(3)))
            out["gps"] = raw
    except Exception as err:  # camera EXIF is often malformed; the photo still archives
        log.warning("unreadable EXIF (%s); sidecar keeps no camera metadata", err)
    return out


def date_folder(capture_time: str | None, fallback_epoch: float) -> str:
    if capture_time:
        return capture_time[:10]
    try:
        return datetime.fromtimestamp(fallback_epoch, timezone.utc).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):   # a nonsense timestamp from the edge: file it under today
        return datetime.now(timezone.utc).strftime("%Y-%m-%d")
