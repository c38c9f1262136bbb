"""Training and validation images: loaded once into memory, random crops with flips."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .imageio import read_rgb

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


def list_images(folder) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def spread(paths: list, n: int) -> list:
    """n items evenly spaced over a sorted list: neighbouring video frames are near-duplicates of one scene."""
    if n <= 0 or not paths:
        return []
    picks = np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int)
    return [paths[i] for i in picks]


class CropSampler:
    """Draws random crops from several folders, each with its own sampling weight."""

    def __init__(self, sources: list[tuple[str, float]], crop: int, seed: int = 0):
        self.crop = crop
        self.pools, weights = [], []
        for folder, weight in sources:
            images = [read_rgb(p) for p in list_images(folder)]
            images = [im for im in images if min(im.shape[:2]) >= crop]
            if not images:
                raise ValueError(f"no image of at least {crop} px in {folder}")
            self.pools.append(images)
            weights.append(weight)
        self.weights = np.asarray(weights, float) / sum(weights)
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> np.ndarray:
        """(size, 3, crop, crop) float32 in [0, 1]."""
        out = np.empty((size, 3, self.crop, self.crop), np.float32)
        for i in range(size):
            pool = self.pools[self.rng.choice(len(self.pools), p=self.weights)]
            im = pool[self.rng.integers(len(pool))]
            y = self.rng.integers(im.shape[0] - self.crop + 1)
            x = self.rng.integers(im.shape[1] - self.crop + 1)
            patch = im[y:y + self.crop, x:x + self.crop]
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            if self.rng.random() < 0.5:
                patch = patch[::-1]
            out[i] = patch.transpose(2, 0, 1) / 255.0
        return out
