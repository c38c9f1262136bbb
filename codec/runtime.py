"""A loaded model: the exact parts (integer priors, CDF tables, model id) and, on demand, the float
transforms. The exact parts need only numpy, so a drone running the analysis in TensorRT or ONNX
Runtime never needs the float decoder.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from . import weights
from .cdf_tables import check_tables
from .errors import CodecError
from .integer_prior import IntegerPrior
from .model import ModelConfig
from .rate_aware_rounding import symbol_bits
from .spatial_context import IntegerContext

TABLE_KEYS = ("cdfs", "lengths", "offsets")
TOP_INDEX_KEY = "top/index"
CONTEXT_PREFIX = "context/"
IMAGE_ANALYSIS = "analysis.image."   # the float weights of the image analysis (what the drone runs per window)


def prior_prefix(level: int) -> str:
    return f"prior/{level}/"


class CodecModel:
    def __init__(self, arrays: dict, meta: dict, path: Path):
        self.path = path
        self.meta = meta
        try:
            self.cfg = ModelConfig.from_dict(meta["config"])
            self.tables = {k: arrays["tables/" + k] for k in TABLE_KEYS}
            check_tables(**self.tables)
            self.priors = [IntegerPrior.from_arrays(arrays, prior_prefix(l), self.cfg.num_scales)
                           for l in range(self.cfg.levels - 1)]
            self.top_index = self._top_index(arrays)
            self.context = IntegerContext.from_arrays(arrays, CONTEXT_PREFIX) if self.cfg.context else None
        except (KeyError, TypeError, ValueError) as e:
            raise CodecError(f"{path}: not a complete codec model ({e}); "
                             "export one with `python -m codec export-model`") from None
        if self.tables["lengths"].size != self.cfg.num_scales + 1:
            raise CodecError(f"{path}: CDF tables do not match the scale table")
        self.model_id = weights.model_id_of(arrays)
        self._arrays = arrays

    def _top_index(self, arrays):
        """Table of each zL channel: learned Gaussian scales, or the logistic table (the last)."""
        logistic = self.cfg.num_scales
        if self.cfg.top_prior == "logistic":
            return np.full(self.cfg.latent_channels, logistic, np.int32)
        index = np.asarray(arrays[TOP_INDEX_KEY])
        if index.shape != (self.cfg.latent_channels,) or not np.issubdtype(index.dtype, np.integer) \
                or index.min() < 0 or index.max() >= logistic:
            raise ValueError(f"{TOP_INDEX_KEY} must hold {self.cfg.latent_channels} indices below {logistic}")
        return index.astype(np.int32)

    def top_tables(self, shape) -> np.ndarray:
        """Table index of every element of a (C,h,w) zL, in C order."""
        _, h, w = shape
        return np.repeat(self.top_index, h * w)

    @classmethod
    def load(cls, path=None) -> "CodecModel":
        path = Path(path) if path else weights.DEFAULT_MODEL
        arrays, meta = weights.load_arrays(path)
        return cls(arrays, meta, path)

    def alignment_of(self, levels: int) -> int:
        if levels != self.cfg.levels:
            raise CodecError(f"bitstream has {levels} latent levels, the model has {self.cfg.levels}")
        return self.cfg.alignment

    def _load_state(self, module, state: dict):
        """load_state_dict, with one line naming the file when its float weights do not fit its config."""
        try:
            module.load_state_dict(state)
        except RuntimeError as e:   # missing, unexpected or mis-shaped arrays: torch lists them over pages
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            detail = lines[1] if len(lines) > 1 else (lines or [""])[0]   # the first line only names the class
            raise CodecError(f"{self.path}: its float weights do not fit the model its config describes "
                             f"({detail[:200]})") from None

    @cached_property
    def torch_model(self):
        """The float network (analysis and synthesis), loaded on first use."""
        from .layers import use_elementwise_gdns
        from .model import NestedLatentCodec

        net = NestedLatentCodec(self.cfg)
        self._load_state(net, weights.float_state_dict(self._arrays))
        if net.top_prior is not None:   # the exact indices, not their float16 copy
            net.top_prior.set_index(self.top_index)
        use_elementwise_gdns(net)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    @cached_property
    def int8_image_analysis(self):
        """The image analysis fine-tuned for INT8 graphs (quantisation_aware.py; its float weights, which
        `calibration/quantize.py` quantises), or None when the model file has none."""
        from .layers import use_elementwise_gdns
        from .model import ImageAnalysis

        state = weights.float_state_dict(self._arrays, weights.INT8_PREFIX + IMAGE_ANALYSIS)
        if not state:
            return None
        image = ImageAnalysis(self.cfg)
        self._load_state(image, state)
        use_elementwise_gdns(image)
        for p in image.eval().parameters():
            p.requires_grad_(False)
        return image

    @cached_property
    def symbol_bits(self) -> np.ndarray:
        """What each symbol of each CDF table costs, in bits (the encoder's rate-aware rounding reads it)."""
        return symbol_bits(self.tables["cdfs"], self.tables["lengths"])

    def float_arrays(self) -> dict:
        return {k: v for k, v in self._arrays.items() if k.startswith(weights.FLOAT_PREFIX)}

    def level_shapes(self, h1: int, w1: int):
        """(C, h, w) of every level for a z1 grid of h1 x w1."""
        shapes, h, w = [], h1, w1
        for level in range(self.cfg.levels):
            shapes.append((self.cfg.level_channels(level), h, w))
            h, w = -(-h // 2), -(-w // 2)
        return shapes
