"""PyTorch backend: the float model as trained; the last resort of the fallback order."""
from __future__ import annotations

from . import register


class TorchBackend:
    name = "torch"

    def __init__(self, model, threads: int = 0, **_):
        self.model = model
        if threads:
            import torch
            torch.set_num_threads(threads)
        self.model.torch_model  # load the float weights now, not on the first photo

    def describe(self) -> str:
        return "torch (CPU, FP32)"

    def transforms(self, lam: float):
        from codec.transforms import TorchTransforms
        return TorchTransforms(self.model.torch_model, lam)


register("torch", TorchBackend)
