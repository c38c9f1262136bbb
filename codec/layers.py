"""Building blocks of the float transforms: simplified GDN, λ-conditioned FiLM, residual blocks."""
import math

import torch
from torch import nn
import torch.nn.functional as F

from .lambdas import LAMBDA_MAX, LAMBDA_MIN, normalised_log_lambda


class SimplifiedGDN(nn.Module):
    """y = x / (β + Γ|x|) (Johnston et al. 2019); the inverse multiplies instead of divides.

    β and Γ are kept positive by squaring a free parameter, so training cannot flip their sign. A squared
    parameter at exactly 0 has zero gradient and never moves, so Γ's off-diagonal starts at PEDESTAL² instead.
    """
    PEDESTAL = 1e-3

    def __init__(self, channels: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.elementwise = False   # see use_elementwise_if_diagonal
        self.beta_param = nn.Parameter(torch.ones(channels))
        gamma = torch.eye(channels).mul(0.1) + self.PEDESTAL ** 2
        self.gamma_param = nn.Parameter(gamma.sqrt().view(channels, channels, 1, 1))

    @torch.no_grad()
    def lift_stuck_zeros(self) -> int:
        """Models trained before the pedestal have exact zeros that can never learn: lift them. Returns
        how many were lifted (Γ changes by at most PEDESTAL² per entry)."""
        stuck = self.gamma_param == 0
        self.gamma_param[stuck] = self.PEDESTAL
        self.elementwise = self.elementwise and not stuck.any()   # Γ is no longer diagonal
        return int(stuck.sum())

    def is_diagonal(self) -> bool:
        off = self.gamma_param[..., 0, 0].detach().clone().fill_diagonal_(0)
        return not off.any()

    def use_elementwise_if_diagonal(self) -> bool:
        """When Γ is exactly diagonal, compute β + Γ|x| per element instead of as a 1x1 convolution.

        Γ's off-diagonal zeros of every model trained without the pedestal have zero gradient and stay
        zero for good, so the C x C convolution (4 k multiply-accumulates per pixel at half resolution,
        ~10 % of the analysis) adds nothing but time. Returns whether the switch was made.
        """
        self.elementwise = self.is_diagonal()
        return self.elementwise

    def beta(self):
        return self.beta_param.square() + 1e-6

    def gamma_diagonal(self):
        """Γ's diagonal (C,): every (C+1)-th entry of the flattened matrix (a slice ONNX export keeps)."""
        return self.gamma_param.reshape(-1)[:: self.gamma_param.shape[0] + 1].square()

    def forward(self, x):
        beta = self.beta()
        if self.elementwise:
            norm = torch.addcmul(beta.view(1, -1, 1, 1), self.gamma_diagonal().view(1, -1, 1, 1), x.abs())
        else:
            norm = F.conv2d(x.abs(), self.gamma_param.square(), beta)
        return x * norm if self.inverse else x / norm


def use_elementwise_gdns(net: nn.Module) -> int:
    """Switch every GDN with an exactly diagonal Γ to the per-element form; returns how many switched."""
    return sum(m.use_elementwise_if_diagonal() for m in net.modules() if isinstance(m, SimplifiedGDN))


class LambdaFiLM(nn.Module):
    """Per-channel scale and shift computed from log λ: one model serves every rate."""

    def __init__(self, channels: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 2 * channels))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def affine(self, lam, dtype=torch.float32):
        """(gain, shift), each (B, C, 1, 1): the map x -> x * gain + shift for this λ."""
        t = normalised_log_lambda(lam).view(-1, 1).to(dtype)
        scale, shift = self.net(t).chunk(2, dim=1)
        return (1.0 + scale)[:, :, None, None], shift[:, :, None, None]

    def forward(self, x, lam):
        gain, shift = self.affine(lam, x.dtype)
        return x * gain + shift


LAMBDA_REF = math.sqrt(LAMBDA_MIN * LAMBDA_MAX)


def rate_gain(lam, dtype=torch.float32):
    """Fixed latent gain sqrt(λ / λ_ref), shape (B,1,1,1).

    The best uniform quantiser step for rate + λ·MSE shrinks like 1/sqrt(λ); scaling y1 by this gain
    before rounding (and z1 back by its inverse before synthesis) gives the model that rate dependence from
    the first step, leaving the learned FiLM layers to refine it (gain units as in Cui et al., CVPR 2021).
    """
    lam = lam if torch.is_tensor(lam) else torch.tensor(lam)
    return torch.sqrt(lam.to(dtype).reshape(-1, 1, 1, 1) / LAMBDA_REF)


def down(cin: int, cout: int, kernel: int = 5):
    """Strided convolution: output size is ceil(input / 2) for any input size."""
    return nn.Conv2d(cin, cout, kernel, stride=2, padding=kernel // 2)


def up(cin: int, cout: int, kernel: int = 5):
    """Transposed convolution that exactly doubles the spatial size."""
    return nn.ConvTranspose2d(cin, cout, kernel, stride=2, padding=kernel // 2, output_padding=1)


class ResidualBlock(nn.Module):
    """h + conv(relu(conv(h))), 3x3 both. The second convolution starts at zero, so the block starts as the
    identity: blocks can be added to a trained synthesis without changing a single decoded pixel, and train
    from there (its first convolution gets a gradient once the second has moved off zero)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h):
        return h + self.conv2(torch.relu(self.conv1(h)))
