"""The INT8 calibration set of the image-analysis graph, and an ONNX Runtime CalibrationDataReader over it.

Which photos: `blades/dtu_nordtank` (DTU NTK-500 inspection frames: blades against grass and sky, the
drone's real subject matter). `blades/drone_frames` is deliberately NOT used: it is the held-out set the
INT8-vs-FP32 rate-distortion cost is measured on.
How many: 32, evenly spaced through the sorted file list (the 75 crops come from four DJI frames in
order, so even spacing covers all four frames rather than the first one or two).
Crop/resize policy: no resizing (the encoder sees native-resolution pixels, and downscaling would hide
the fine-detail activation peaks that set the ranges); a centred crop of 368x576, the largest multiple
of 16 inside the 371x586 photos, i.e. what one analysis window sees.
λ: activations depend on λ through the FiLM layers, so photo i runs at CALIBRATION_LAMBDAS[i % 8],
eight log-spaced values over the whole range 64..8192; every rate the drone may use is covered.
Varied photos (`train/`, 32, the same crop and λ cycle) are pooled with these for the ranges of the inner Conv
inputs only (pooled_ranges.py): Nordtank's four DJI frames do not span what those channels meet in the field.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codec.data import list_images, spread
from codec.errors import CodecError
from codec.imageio import read_rgb

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = PROJECT_ROOT.parent / "shared" / "data" / "blades" / "dtu_nordtank"
COUNT = 32
CROP = (368, 576)   # height, width; multiples of 16
VARIED_DIR = PROJECT_ROOT.parent / "shared" / "data" / "train"
CALIBRATION_LAMBDAS = tuple(64.0 * 2 ** i for i in range(8))  # 64, 128, ..., 8192: the whole λ range


@dataclass(frozen=True)
class CalibrationSet:
    folder: Path = DEFAULT_DIR
    count: int = COUNT
    crop: tuple = CROP
    varied: Path | None = VARIED_DIR   # photos pooled in for the inner Conv inputs' ranges; None: none

    def varied_set(self) -> CalibrationSet | None:
        """The varied photos as a calibration set of their own (COUNT of them, this set's crop), or None."""
        return None if self.varied is None else CalibrationSet(self.varied, COUNT, self.crop, None)

    def paths(self) -> list:
        if not Path(self.folder).is_dir():
            raise CodecError(f"{self.folder}: calibration photo folder not found")
        paths = list_images(self.folder)
        if not paths:
            raise CodecError(f"{self.folder}: no photos to calibrate on")
        return spread(paths, self.count)

    def describe(self) -> dict:
        return {"folder": str(self.folder), "photos": [p.name for p in self.paths()],
                "crop_hw": list(self.crop), "resize": "none (native resolution, centred crop)",
                "lambdas": list(CALIBRATION_LAMBDAS),
                "varied": varied.describe() if (varied := self.varied_set()) else None}

    def samples(self):
        """(x (1,3,h,w) float32 in [0,1], lam (1,) float32) per photo."""
        for i, path in enumerate(self.paths()):
            yield centre_crop(read_rgb(path), self.crop), np.array([CALIBRATION_LAMBDAS[i % 8]], np.float32)


def varied_option(varied: bool, folder) -> dict:
    """CalibrationSet's `varied` keyword from the command lines' --no-varied / --varied-dir (neither: the
    default folder)."""
    if not varied:
        return {"varied": None}
    return {"varied": folder} if folder else {}


def centre_crop(pixels: np.ndarray, crop) -> np.ndarray:
    """Centred crop (smaller photos are cropped to a multiple of 16 instead), as (1,3,h,w) in [0,1]."""
    h, w = pixels.shape[:2]
    ch, cw = min(crop[0], h // 16 * 16), min(crop[1], w // 16 * 16)
    if ch < 16 or cw < 16:
        raise CodecError(f"calibration photo of {w}x{h} is smaller than 16 px")
    y, x = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(pixels[y:y + ch, x:x + cw].transpose(2, 0, 1)[None], np.float32) / 255.0


def make_reader(calibration_set: CalibrationSet):
    """An onnxruntime CalibrationDataReader (imported lazily: the drone does not need it)."""
    from onnxruntime.quantization import CalibrationDataReader

    class BladeCalibrationReader(CalibrationDataReader):
        def __init__(self):
            self.data = [{"x": x, "lam": lam} for x, lam in calibration_set.samples()]
            self.rewind()

        def get_next(self):
            return next(self._it, None)

        def rewind(self):
            self._it = iter(self.data)

        def __len__(self):
            return len(self.data)

    return BladeCalibrationReader()
