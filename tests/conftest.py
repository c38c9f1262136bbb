"""Shared fixtures: the bundled model, a tiny model built here, real photos when ../shared/data exists."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA = PROJECT_ROOT.parent / "shared" / "data"
BLADES = DATA / "blades" / "drone_frames"


def need_data(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the shared photo folder is not next to this checkout)")
    return path


def config_error(load, path: Path, text: str) -> str:
    """Write a config, load it, and return the error, which must be one line naming the file."""
    from codec.service.config_file import ConfigError
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def synthetic_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like test image: smooth shading, a hard edge, fine texture and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 120 + 60 * np.sin(xx / max(w, 1) * 3.0)[..., None] * np.array([1.0, 0.8, 0.6])
    base = base + 40 * np.cos(yy / max(h, 1) * 2.0)[..., None]
    base[(xx > w / 2) & (yy > h / 3)] += 50
    base += 12 * np.sin(xx * 1.3 + yy * 0.7)[..., None]
    base += rng.normal(0, 4, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def default_model():
    from codec.runtime import CodecModel
    return CodecModel.load()


def build_tiny_model(path, levels: int = 3, top_prior: str = "gaussian", prior_lambda: bool = False,
                     context: bool = False, z1_channels: int = 0):
    """A small, untrained (random) model exported with the real export code: fast enough for fuzzing.
    prior_lambda: priors conditioned on λ, with random (not zero) shifts so that λ changes them.
    context: the checkerboard context of z1, with a random (not zero) output layer.
    z1_channels: z1 wider than the other levels (0: as wide)."""
    from codec import weights
    from codec.export_model import build_model_arrays
    from codec.model import ModelConfig, NestedLatentCodec
    from codec.runtime import CodecModel

    torch.manual_seed(0)
    net = NestedLatentCodec(ModelConfig(levels=levels, channels=16, latent_channels=8, prior_channels=8,
                                        top_prior=top_prior, prior_lambda=prior_lambda, context=context,
                                        z1_channels=z1_channels))
    net.eval()
    with torch.no_grad():
        for p in net.prior_lambda.parameters() if prior_lambda else []:
            p.normal_(0.0, 0.5)
        for p in net.context.out.parameters() if context else []:
            p.normal_(0.0, 2.0)
    images = [torch.from_numpy(synthetic_image(64, 96, s).transpose(2, 0, 1).copy()).float().div(255)[None]
              for s in range(3)]
    weights.save_arrays(path, build_model_arrays(net, images), {"config": net.cfg.to_dict()})
    return CodecModel.load(path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.npz")


@pytest.fixture(scope="session")
def context_model(tmp_path_factory):
    """A tiny model with λ-conditioned priors, the checkerboard context of z1, and z1 wider than z2, z3."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_context") / "tiny.npz", prior_lambda=True, context=True,
                            z1_channels=12)


@pytest.fixture
def folders(tmp_path):
    """A training folder of 3 and a validation folder of 2 small synthetic photos (training tests)."""
    from PIL import Image

    train_dir, val_dir = tmp_path / "train", tmp_path / "val"
    for d, n in ((train_dir, 3), (val_dir, 2)):
        d.mkdir()
        for i in range(n):
            Image.fromarray(synthetic_image(80, 96, seed=i + 10 * n)).save(d / f"{i}.png")
    return train_dir, val_dir


def blade_photos(n: int):
    from codec.data import list_images
    return list_images(need_data(BLADES))[:n]
