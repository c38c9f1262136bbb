"""The archive: per photo a reconstruction, the bitstream and a JSON sidecar, each written atomically.

Layout: <archive>/<site>/<drone>/<YYYY-MM-DD>/<image_id>.{png|tif,nlic,json}. Files land first, the catalog
row after, the ack last; a crash in between leaves files that the resend overwrites with identical bytes.
"""
from __future__ import annotations

import json
from pathlib import Path

from codec.imageio import write_photo

from codec.service.atomic_files import commit_written, temp_name, write_bytes
from .wire import Rejected


class Archive:
    def __init__(self, root, recon_format: str = "png"):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.recon_format = recon_format

    def folder(self, site: str, drone: str, day: str) -> Path:
        folder = (self.root / site / drone / day).resolve()
        # Ids are checked upstream; this is the last line of defence against escaping the archive.
        if self.root not in folder.parents:
            raise Rejected(f"archive path {folder} would lie outside {self.root}")
        return folder

    def write(self, folder: Path, image_id: str, bitstream: bytes, photo, sidecar: dict) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f".{image_id}.*.tmp*"):
            # Left by a daemon killed mid-write. Only the holder of this photo's lock writes it, so any
            # temporary file of it now is stale.
            stale.unlink(missing_ok=True)
        paths = {"bitstream_path": folder / f"{image_id}.nlic",
                 "recon_path": folder / f"{image_id}.{self.recon_format}",
                 "sidecar_path": folder / f"{image_id}.json"}
        write_bytes(paths["bitstream_path"], bitstream)
        tmp = temp_name(paths["recon_path"])
        write_photo(tmp, photo)   # 8-bit RGB; TIFF output is lossless as well
        commit_written(tmp, paths["recon_path"])
        sidecar = {**sidecar, "files": {k: p.name for k, p in paths.items()}}
        write_bytes(paths["sidecar_path"], json.dumps(sidecar, indent=2, sort_keys=True).encode())
        return {k: str(p) for k, p in paths.items()}
