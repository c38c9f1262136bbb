"""Model files: one .npz holding the float weights, the integer prior and its CDF tables.

numpy's .npz is read with allow_pickle=False, so a model file can never run code. The model id written
into every bitstream is a hash of the arrays, so a decoder refuses a bitstream made by other weights.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from .errors import CodecError

DEFAULT_MODEL = Path(__file__).resolve().parent / "default_model" / "model.npz"
FLOAT_PREFIX = "float/"
INT8_PREFIX = "int8/"   # optional: the image analysis fine-tuned for the INT8 graph (quantisation_aware.py)
MAX_MODEL_BYTES = 64 * 1024 * 1024


def model_id_of(arrays: dict) -> bytes:
    """16-byte id: SHA-256 over every array's name, dtype, shape and bytes, in sorted order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.digest()[:16]


def save_arrays(path, arrays: dict, meta: dict):
    """Write atomically: a crash never leaves a half-written model behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(arrays)
    payload["meta.json"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **payload)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_arrays(path):
    """Returns (arrays, meta). Raises CodecError with one line for anything that is not a model file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CodecError(f"cannot read model {path}: {e.strerror}") from None
    if size > MAX_MODEL_BYTES:
        raise CodecError(f"model {path} is {size} bytes, larger than the {MAX_MODEL_BYTES} allowed")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta.json").tobytes().decode())
    except Exception as e:  # numpy raises many types for a bad zip; they all mean the same here
        raise CodecError(f"{path} is not a valid model file ({type(e).__name__}: {e})") from None
    return arrays, meta


def float_state_dict(arrays: dict, prefix: str = FLOAT_PREFIX):
    """The float network weights as torch tensors (stored as float16 to keep the file small)."""
    import torch

    return {k[len(prefix):]: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items() if k.startswith(prefix)}


def float_arrays(state_dict) -> dict:
    arrays = {}
    for key, tensor in state_dict.items():
        value = tensor.detach().cpu().numpy()
        arrays[FLOAT_PREFIX + key] = value.astype(np.float16)
        if not np.isfinite(arrays[FLOAT_PREFIX + key]).all():   # beyond float16's ±65504 a weight becomes inf
            raise CodecError(f"{FLOAT_PREFIX + key} does not fit float16 (largest |value| "
                             f"{float(np.abs(value).max()):.3g})")
    return arrays
