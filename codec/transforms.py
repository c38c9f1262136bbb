"""The float transforms behind a numpy interface, so tiling works the same for every backend
(PyTorch here; ONNX Runtime and TensorRT on the edge)."""
from __future__ import annotations

import numpy as np
import torch


class TorchTransforms:
    def __init__(self, net, lam: float):
        self.net = net
        self.lam = torch.tensor([float(lam)])

    @torch.no_grad()
    def image(self, x: np.ndarray) -> np.ndarray:
        return self.net.analysis.image(torch.from_numpy(x), self.lam).numpy()

    @torch.no_grad()
    def latent(self, y1: np.ndarray) -> list:
        ys, y = [], torch.from_numpy(y1)
        for block in self.net.analysis.latent:
            y = block(y, self.lam)
            ys.append(y.numpy())
        return ys

    @torch.no_grad()
    def synth(self, z1: np.ndarray) -> np.ndarray:
        return self.net.synthesis(torch.from_numpy(z1), self.lam).numpy()
