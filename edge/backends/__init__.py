"""Encoder backends for the analysis transform, chosen by configuration with a fallback order.

A backend turns a loaded codec model into `transforms(lam)`: an object with `image(x)` and `latent(y1)`
(numpy in, numpy out) that `codec.api.compress(..., transforms=...)` tiles over. Backends whose native
library is missing are logged and skipped, never fatal.

One module per backend (torch_backend, onnxruntime_backend, tensorrt_backend); each registers itself
with `register` when imported. None of them imports its native library at import time, so importing
this package never fails on a machine without onnxruntime or tensorrt.
"""
from __future__ import annotations

import logging

from codec.errors import CodecError

log = logging.getLogger("edge.backends")

BACKENDS: dict = {}
DEFAULT_ORDER = ("tensorrt", "onnxruntime", "torch")


class BackendError(CodecError):
    """A backend cannot run: missing library or device, missing/corrupt/mismatched model file."""


def register(name: str, factory):
    """factory(model, **options) -> backend with .name and .transforms(lam); unknown options ignored."""
    BACKENDS[name] = factory
    return factory


def select_backend(model, order=DEFAULT_ORDER, **options):
    """The first backend in `order` that loads; logs which one runs and why others were skipped."""
    errors = []
    for name in order:
        factory = BACKENDS.get(name)
        if factory is None:
            errors.append(f"{name}: not available in this build")
            continue
        try:
            backend = factory(model, **options)
        except Exception as e:  # a missing native library or device must not stop the drone
            errors.append(f"{name}: {e}")
            log.warning("encoder backend %s skipped: %s", name, e)
            continue
        log.info("encoder backend: %s", backend.describe() if hasattr(backend, "describe") else backend.name)
        return backend
    raise BackendError("no encoder backend could be loaded: " + "; ".join(errors))


# Registration happens on import; the order here does not matter (DEFAULT_ORDER decides preference).
from . import torch_backend, onnxruntime_backend, tensorrt_backend  # noqa: E402,F401
from .torch_backend import TorchBackend  # noqa: E402,F401  (kept importable from here, as before)
