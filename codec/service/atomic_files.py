"""Durable file writes: write to a temporary name, fsync, rename, fsync the directory.

A crash leaves either the old state or the complete new file, never a torn one.
"""
from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    # Same directory (rename must not cross filesystems); dot-prefixed so scanners skip it; keeps the suffix
    # so writers that choose a format by extension still work.
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def write_bytes(path, data: bytes, sync: bool = True) -> None:
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)   # a full disk must not also keep the half-written copy
        raise
    if sync:
        fsync_dir(path.parent)


def commit_written(tmp: Path, path: Path) -> None:
    """Finish a write another library made to `tmp` (e.g. an image writer): fsync, rename, fsync dir."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
