"""The camera's drop folder. A photo is taken only once its `NAME.done` marker exists.

Why a marker: a camera (or a copy) writes a file in many steps and the service cannot tell a pause from
the end. The writer creates the empty `IMG_0001.jpg.done` after `IMG_0001.jpg` is complete. Hidden files
and files without a marker are never touched.
"""
from __future__ import annotations

from pathlib import Path

MARKER = ".done"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}


def ready_photos(inbox: Path) -> list[Path]:
    """Complete photos, oldest marker first (the capture order, as near as the folder can tell)."""
    found = []
    for marker in inbox.glob("*" + MARKER):
        photo = marker.with_name(marker.name[:-len(MARKER)])
        if photo.name.startswith("."):
            continue
        try:
            found.append((marker.stat().st_mtime_ns, photo.name, photo))
        except FileNotFoundError:
            continue
    return [p for _, _, p in sorted(found)]


def marker_of(photo: Path) -> Path:
    return photo.with_name(photo.name + MARKER)


def is_photo(path: Path) -> bool:
    return path.suffix.lower() in PHOTO_SUFFIXES


def drop(photo: Path, marker_only: bool = False) -> None:
    """Remove a handled photo's marker (and the photo unless it was moved elsewhere)."""
    if not marker_only:
        photo.unlink(missing_ok=True)
    marker_of(photo).unlink(missing_ok=True)
