"""Test-time latent refinement: SGA+ (Perugachi-Diaz, Gansekoele & Bhulai 2024) and its baselines.

All latent levels of the nested model are optimised for one photo's own rate-distortion objective
R + λ·MSE. Rates come from the float prior (the differentiable twin of the integer prior); the final
latents go through the standard integer path, so the result is an ordinary bitstream.

Quantisers (all act on residuals v = y - mean, or on y itself at the top level):
- ste: straight-through rounding; noise: v + U(-1/2, 1/2);
- SGA (atanh) and SGA+ (linear, cosine, ssl): a Gumbel-softmax sample over candidate integers, whose
  logits are log-probabilities from the distance d of v to each candidate:
    linear  p = 1 - d,  cosine  p = cos²(πd/2),  ssl  p = σ(-a·σ⁻¹(d)),  atanh  logit = -atanh(d).
  Two classes: floor and ceil (d in [0, 1]). Three classes: round(v) - 1, round(v), round(v) + 1 with
  distances divided by r = 1.5 (so the far candidate keeps mass while |v - k| < 1.5), our reading of
  the paper's clipped three-class extension.
Temperature τ(t) = min(exp(-c·t), τmax); Adam on the continuous latents; hard rounding at the end.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .model import LOG2, ste_round

METHODS = ("ssl", "linear", "cosine", "atanh", "ste", "noise")
EPS = 1e-5
THREE_CLASS_RADIUS = 1.5


@dataclass
class RefineConfig:
    method: str = "ssl"
    classes: int = 2
    steps: int = 500
    lr: float = 5e-3
    a: float = 2.3            # SSL sharpness
    tau_max: float = 0.5
    decay: float = 0.0        # c in τ(t); 0 means 5 / steps, so τ ends near exp(-5)
    time_budget: float = 0.0  # seconds for the optimisation loop; 0 means no limit
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.classes not in (2, 3):
            raise ValueError(f"classes must be 2 or 3, got {self.classes}")
        if self.steps < 0 or self.lr <= 0 or self.tau_max <= 0 or self.a <= 0:
            raise ValueError("steps must be >= 0 and lr, tau_max, a positive")

    def temperature(self, step: int) -> float:
        c = self.decay or 5.0 / max(self.steps, 1)
        return min(math.exp(-c * step), self.tau_max)


def candidate_logits(method: str, d: torch.Tensor, a: float) -> torch.Tensor:
    """Unnormalised log-probability of a candidate at distance d in [0, 1] (d = 1: no mass)."""
    d = d.clamp(EPS, 1 - EPS)
    if method == "linear":
        return torch.log(1 - d)
    if method == "cosine":
        return torch.log(torch.cos(math.pi * d / 2).square().clamp_min(EPS))
    if method == "ssl":
        return torch.nn.functional.logsigmoid(-a * torch.logit(d))
    if method == "atanh":
        return -torch.atanh(d)
    raise ValueError(method)


def candidates(v: torch.Tensor, classes: int) -> torch.Tensor:
    """Candidate integers (K, ...): floor and ceil, or round(v) and its two neighbours."""
    v = v.detach()
    if classes == 2:
        lo = torch.floor(v)
        return torch.stack([lo, lo + 1])
    mid = torch.round(v)
    return torch.stack([mid - 1, mid, mid + 1])


def sga_round(v, method: str, classes: int, tau: float, a: float, generator=None):
    """Gumbel-softmax soft rounding: a differentiable sample that hardens as τ falls."""
    cands = candidates(v, classes)
    d = (v - cands).abs()
    if classes == 3:
        d = (d / THREE_CLASS_RADIUS).clamp(max=1.0)
    logits = candidate_logits(method, d, a)
    u = torch.rand(logits.shape, generator=generator).clamp(EPS, 1 - EPS)
    gumbel = -torch.log(-torch.log(u))
    weights = torch.softmax((logits + gumbel) / tau, dim=0)
    return (weights * cands).sum(dim=0)


def make_quantiser(cfg: RefineConfig, tau: float, generator=None):
    if cfg.method == "ste":
        return lambda v: (ste_round(v),) * 2
    if cfg.method == "noise":
        def noisy(v):
            n = v + (torch.rand(v.shape, generator=generator) - 0.5)
            return n, n
        return noisy

    def soft(v):
        s = sga_round(v, cfg.method, cfg.classes, tau, cfg.a, generator)
        return s, s
    return soft


def objective(net, ys, x, lam: torch.Tensor, quantiser):
    """(loss, bpp, mse) of latents ys for image x under the given quantiser."""
    z_hat, likelihoods = net.top_down(ys, quantiser=quantiser, lam=lam)
    x_hat = net.synthesis(z_hat[0], lam)
    bits = sum(-(lk.log().sum()) / LOG2 for lk in likelihoods)
    bpp = bits / (x.shape[-2] * x.shape[-1])
    mse = (x_hat - x).square().mean()
    return bpp + lam[0] * mse, bpp, mse


def refine(net, x: torch.Tensor, lam: float, cfg: RefineConfig, ys=None, on_step=None, snapshots=()):
    """Optimise the latents of x (1,3,H,W in [0,1], H and W multiples of 16). Returns (latents, steps run).

    on_step(step, loss, bpp, mse) is called after every step (progress bars, logs); snapshots is a
    collection of step counts at which a copy of the latents is passed as on_step(..., latents=...).
    """
    lam_t = torch.tensor([float(lam)])
    freeze(net)
    if ys is None:
        with torch.no_grad():
            ys = net.analysis(x, lam_t)
    params = [y.detach().clone().requires_grad_(True) for y in ys]
    steps = optimise(params, lambda q: objective(net, params, x, lam_t, q), cfg, on_step, snapshots)
    return [p.detach() for p in params], steps


def freeze(net):
    for p in net.parameters():
        p.requires_grad_(False)


def optimise(params: list, loss_of, cfg: RefineConfig, on_step=None, snapshots=()) -> int:
    """Adam on params against loss_of(quantiser) -> (loss, bpp, mse), annealing τ; returns the steps run."""
    opt = torch.optim.Adam(params, lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    start, step = time.monotonic(), 0
    while step < cfg.steps:
        if cfg.time_budget and time.monotonic() - start >= cfg.time_budget:
            break
        loss, bpp, mse = loss_of(make_quantiser(cfg, cfg.temperature(step), generator))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if on_step and step in snapshots:
            on_step(step, loss.item(), bpp.item(), mse.item(), latents=[p.detach().clone() for p in params])
        elif on_step:
            on_step(step, loss.item(), bpp.item(), mse.item())
    return step
