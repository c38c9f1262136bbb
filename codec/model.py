"""The generalized nested latent model: x -> z1 -> ... -> zL (a Markov chain of strided analysis blocks).

Shapes: z1 has stride 16, each further level halves the resolution again. Every level has the same
channel count. zL has a zero-mean Gaussian prior with one learned scale per channel (an index into the
scale table; models before it used a fixed standard logistic); z_l (l < L) is Gaussian with mean and
scale predicted from the decoded z_{l+1} by a small prior network that is later converted to an integer
network (see integer_prior.py), so that encoder and decoder agree bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict

import torch
from torch import nn
import torch.nn.functional as F

from .lambdas import normalised_log_lambda
from .layers import LambdaFiLM, ResidualBlock, SimplifiedGDN, down, rate_gain, up

LOG2 = math.log(2.0)
TOP_PRIORS = ("gaussian", "logistic")


@dataclass(frozen=True)
class ModelConfig:
    levels: int = 4            # L, 2..4
    channels: int = 128        # N, width of the image transforms
    latent_channels: int = 128  # C, of z2..zL (and of z1 unless z1_channels says otherwise)
    z1_channels: int = 0       # C1, of z1 (0: latent_channels). z1 alone feeds the synthesis: with C1 values
                               # per 16x16x3 pixels it caps the PSNR (C1 = 128 keeps Kodak near 33 dB)
    prior_channels: int = 128  # width of the prior networks
    num_scales: int = 64       # size of the fixed scale table
    scale_min: float = 0.11
    scale_max: float = 256.0
    mean_grid: int = 8         # means live on multiples of 1/mean_grid
    top_prior: str = "gaussian"  # zL: "gaussian" (learned scale per channel) or "logistic" (fixed)
    prior_lambda: bool = False  # the prior networks see λ (per-channel shifts of every layer; PriorLambda)
    context: bool = False      # z1 is coded in two checkerboard halves, the second seeing the first
    synthesis_blocks: int = 0  # residual blocks in the synthesis at 1/8 resolution (ResidualBlock): decoder
                               # depth, which the drone never runs

    def __post_init__(self):
        if not 2 <= self.levels <= 4:   # the container codes 2..4 levels
            raise ValueError(f"levels must be 2, 3 or 4, got {self.levels}")
        if self.synthesis_blocks < 0:
            raise ValueError(f"synthesis_blocks must be >= 0, got {self.synthesis_blocks}")
        if self.top_prior not in TOP_PRIORS:
            raise ValueError(f"top_prior must be one of {', '.join(TOP_PRIORS)}, got {self.top_prior!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Model files and checkpoints written before top_prior existed used the fixed logistic."""
        return cls(**{"top_prior": "logistic", **d})

    @property
    def stride(self) -> int:
        """Pixels per position of z1."""
        return 16

    @property
    def alignment(self) -> int:
        """z1 positions per position of zL: tile sizes must be multiples of it."""
        return 2 ** (self.levels - 1)

    @property
    def c1(self) -> int:
        return self.z1_channels or self.latent_channels

    def level_channels(self, level: int) -> int:
        """Channels of z_{level + 1} (level 0 is z1)."""
        return self.c1 if level == 0 else self.latent_channels

    def to_dict(self):
        return asdict(self)


def scale_table(cfg: ModelConfig):
    """The fixed, log-spaced scale table indexed by the prior's integer output."""
    step = math.log(cfg.scale_max / cfg.scale_min) / (cfg.num_scales - 1)
    return [cfg.scale_min * math.exp(i * step) for i in range(cfg.num_scales)]


def ste_round(x):
    """Rounding whose gradient is the identity (straight-through)."""
    return x + (torch.round(x) - x).detach()


def rounding_quantiser(v):
    r = ste_round(v)
    return r, r


def noisy_quantiser(v):
    """Decoder sees rounded values (straight-through), the rate sees v + U(-1/2, 1/2) (Ballé et al.)."""
    return ste_round(v), v + torch.empty_like(v).uniform_(-0.5, 0.5)


def relaxed_quantiser(v):
    """Uniform noise for decoder and rate alike: no rounding anywhere."""
    n = v + torch.empty_like(v).uniform_(-0.5, 0.5)
    return n, n


class ImageAnalysis(nn.Module):
    """x (B,3,H,W in [0,1]) -> y1 (B,C,H/16,W/16)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n, c = cfg.channels, cfg.c1
        self.convs = nn.ModuleList([down(3, n), down(n, n), down(n, n), down(n, c)])
        self.gdns = nn.ModuleList([SimplifiedGDN(n) for _ in range(3)])
        self.films = nn.ModuleList([LambdaFiLM(n) for _ in range(3)])

    def forward(self, x, lam):
        h = x - 0.5
        for conv, gdn, film in zip(self.convs[:-1], self.gdns, self.films):
            h = film(gdn(conv(h)), lam)
        return self.convs[-1](h) * rate_gain(lam, h.dtype)


class LatentAnalysis(nn.Module):
    """y_l -> y_{l+1}: one more strided block of the Markov chain."""

    def __init__(self, cfg: ModelConfig, level: int):
        super().__init__()
        c = cfg.latent_channels
        self.conv1 = nn.Conv2d(cfg.level_channels(level), c, 3, padding=1)
        self.film = LambdaFiLM(c)
        self.conv2 = down(c, c)

    def forward(self, y, lam):
        return self.conv2(self.film(F.leaky_relu(self.conv1(y), 0.1), lam))


class Analysis(nn.Module):
    """Everything the drone runs: image -> [y1, ..., yL] (continuous, unquantised)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.image = ImageAnalysis(cfg)
        self.latent = nn.ModuleList([LatentAnalysis(cfg, level) for level in range(cfg.levels - 1)])

    def forward(self, x, lam):
        ys = [self.image(x, lam)]
        for block in self.latent:
            ys.append(block(ys[-1], lam))
        return ys


class Synthesis(nn.Module):
    """z1 (B,C,h,w) -> x_hat (B,3,16h,16w)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n, c = cfg.channels, cfg.c1
        self.convs = nn.ModuleList([up(c, n), up(n, n), up(n, n), up(n, 3)])
        self.gdns = nn.ModuleList([SimplifiedGDN(n, inverse=True) for _ in range(3)])
        self.films = nn.ModuleList([LambdaFiLM(n) for _ in range(3)])
        self.blocks = nn.Sequential(*[ResidualBlock(n) for _ in range(cfg.synthesis_blocks)])

    def forward(self, z, lam):
        h = z / rate_gain(lam, z.dtype)
        for i, (conv, gdn, film) in enumerate(zip(self.convs[:-1], self.gdns, self.films)):
            h = film(gdn(conv(h)), lam)
            if i == 0:   # at 1/8 resolution: a 3x3 there sees 24 px and costs 1/16 of one at 1/2
                h = self.blocks(h)
        return self.convs[-1](h).float() + 0.5   # the distortion in float32 under bf16 autocast


class PriorNet(nn.Module):
    """z_{l+1} (decoded) -> (scale index u, mean) of z_l.

    Plain conv + ReLU layers only, so the trained network converts to an integer network.
    """

    def __init__(self, cfg: ModelConfig, level: int):
        """The prior of z_{level + 1}, computed from z_{level + 2}."""
        super().__init__()
        c, h = cfg.level_channels(level), cfg.prior_channels
        self.layers = nn.ModuleList([
            nn.ConvTranspose2d(cfg.level_channels(level + 1), h, 4, stride=2, padding=1),
            nn.Conv2d(h, h, 3, padding=1),
            nn.Conv2d(h, 2 * c, 3, padding=1),
        ])
        self.num_scales = cfg.num_scales
        # Start near the middle of the scale table, not at its floor.
        nn.init.constant_(self.layers[-1].bias[:c], cfg.num_scales / 2)
        nn.init.zeros_(self.layers[-1].bias[c:])

    def forward(self, z_next, out_hw, shifts=None):
        """shifts: per-layer (B, width, 1, 1) tensors added after each layer (PriorLambda), or None."""
        h = z_next
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if shifts is not None:
                h = h + shifts[i]
            if i < last:
                h = F.relu(h)
        out = h[:, :, : out_hw[0], : out_hw[1]].float()   # rates in float32 under bf16
        u, mean = out.chunk(2, dim=1)
        return u, mean

    def widths(self) -> list:
        return [layer.out_channels for layer in self.layers]


class PriorLambda(nn.Module):
    """Per-channel shifts of every layer of one prior network, computed from log λ.

    Without them the priors must infer the rate from the decoded latents, and the encoder pays for telling
    them: at λ 64 the step-20,000 model spent half its bits on z3 (stride 64), against 3 % at λ 1024. The
    decoder knows λ exactly (its index is in the header), so the integer prior takes these shifts as one
    bias table row per λ index (integer_prior.convert). Starts at zero: the same function as without.
    """

    GAIN = 8.0   # Adam moves each weight ~lr per step whatever its gradient: at lr 1e-4 an ungained shift
                 # would need thousands of steps to move a scale index by one

    def __init__(self, widths: list, hidden: int = 32):
        super().__init__()
        self.widths = list(widths)
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, sum(self.widths)))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, lam) -> list:
        lam = lam if torch.is_tensor(lam) else torch.tensor([float(lam)])
        t = normalised_log_lambda(lam.float()).view(-1, 1)
        return [s[:, :, None, None] for s in (self.GAIN * self.net(t)).split(self.widths, dim=1)]


class CheckerboardContext(nn.Module):
    """Spatial context for z1 (He et al., CVPR 2021; the local context of the multi-context paper):
    z1 is coded in two halves, the anchors ((i + j) even) with the prior from z2 alone, then the rest with
    that prior corrected by what the decoded anchors around them say. The correction is additive:
    u += du, mean += dmean, from the four adjacent anchors (a 3x3 kernel masked to a cross: the other
    taps would see only non-anchors, which are zero) through one hidden layer and a 1x1 convolution.
    Both halves decode in parallel, so decoding stays one pass of two steps. The output layer starts at
    zero: a model switched to it starts as the same function. Integer form: spatial_context.py.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, h = cfg.c1, cfg.prior_channels
        self.hidden = nn.Conv2d(c, h, 3, padding=1)
        self.out = nn.Conv2d(h, 2 * c, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("cross", cross_mask(), persistent=False)

    def forward(self, z_anchors):
        """z_anchors: decoded z1 at the anchors, 0 elsewhere -> (du, dmean), used at the non-anchors."""
        du, dmean = self.out(self.hidden_activations(z_anchors)).float().chunk(2, dim=1)
        return du, dmean

    def hidden_activations(self, z_anchors):
        return F.relu(F.conv2d(z_anchors, self.masked_weight(), self.hidden.bias, padding=1))

    def masked_weight(self):
        """The hidden layer's kernel with only the cross taps (what the integer form converts)."""
        return self.hidden.weight * self.cross


def cross_mask():
    """The taps of a 3x3 kernel that fall on anchors when centred on a non-anchor."""
    return torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def anchor_mask(h: int, w: int):
    """(1, 1, h, w): 1 at the anchors, (i + j) even in the tile's own z1 coordinates."""
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((i + j) % 2 == 0).float().view(1, 1, h, w)


class TopPrior(nn.Module):
    """One scale per channel of zL, as an index into the scale table.

    The fixed standard logistic costs at least 2 bits per zL element even when a channel is always 0
    (0.016 bpp of a 0.16 bpp blade frame at λ 64); a learned scale lets an unused channel cost nearly
    nothing. The index is rounded when the model is exported, so the coder sees integers only.
    """
    GAIN = 1024.0   # Adam moves a parameter ~lr per step: at lr 1e-4 the index crosses the table in ~600
                    # steps (gain 64 moved it 1.7 of 64 steps in 400 training steps)
    INIT_SCALE = 1.8   # about the spread of the standard logistic it replaces

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        step = math.log(cfg.scale_max / cfg.scale_min) / (cfg.num_scales - 1)
        start = math.log(self.INIT_SCALE / cfg.scale_min) / step
        self.num_scales = cfg.num_scales
        self.index_param = nn.Parameter(torch.full((cfg.latent_channels,), start / self.GAIN))

    def index(self):
        """(C,) index; clamped to the table, with the gradient passed through so that no channel can get
        stuck outside it (a hard clamp's gradient there is 0)."""
        u = self.index_param * self.GAIN
        return u + (u.clamp(0.0, self.num_scales - 1) - u).detach()

    @torch.no_grad()
    def set_index(self, index):
        self.index_param.copy_(torch.as_tensor(index, dtype=self.index_param.dtype) / self.GAIN)


def logistic_likelihood(z):
    """P(round(z)) under the fixed standard logistic prior, for noisy or rounded z."""
    upper = torch.sigmoid(z + 0.5)
    lower = torch.sigmoid(z - 0.5)
    return (upper - lower).clamp_min(1e-9)


def gaussian_likelihood(r, scale):
    """P(r) for a zero-mean Gaussian convolved with a unit box, r = z - mean."""
    r = r.abs()  # the symmetric form is numerically safer in the tails
    upper = torch.special.ndtr((0.5 - r) / scale)
    lower = torch.special.ndtr((-0.5 - r) / scale)
    return (upper - lower).clamp_min(1e-9)


class NestedLatentCodec(nn.Module):
    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        self.cfg = cfg or ModelConfig()
        self.analysis = Analysis(self.cfg)
        self.synthesis = Synthesis(self.cfg)
        self.priors = nn.ModuleList([PriorNet(self.cfg, level) for level in range(self.cfg.levels - 1)])
        # Registered last, so that optimiser states saved before it existed still line up (train.py).
        self.top_prior = TopPrior(self.cfg) if self.cfg.top_prior == "gaussian" else None
        self.prior_lambda = nn.ModuleList([PriorLambda(p.widths()) for p in self.priors]) \
            if self.cfg.prior_lambda else None   # after top_prior, for the same reason
        self.context = CheckerboardContext(self.cfg) if self.cfg.context else None   # last, likewise
        self.log_scale_min = math.log(self.cfg.scale_min)
        self.log_scale_step = math.log(self.cfg.scale_max / self.cfg.scale_min) / (self.cfg.num_scales - 1)

    def scale_from_index(self, u):
        u = u.clamp(0.0, self.cfg.num_scales - 1)
        return torch.exp(self.log_scale_min + u * self.log_scale_step)

    def quantise_mean(self, mean):
        q = self.cfg.mean_grid
        return ste_round(mean * q) / q

    def top_likelihood(self, z):
        if self.top_prior is None:
            return logistic_likelihood(z)
        return gaussian_likelihood(z, self.scale_from_index(self.top_prior.index()).view(1, -1, 1, 1))

    def prior_shifts(self, level: int, lam):
        """PriorLambda shifts for the prior of this level, or None for a model without them."""
        if self.prior_lambda is None:
            return None
        if lam is None:
            raise ValueError("this model's priors are conditioned on λ: top_down needs lam")
        return self.prior_lambda[level](lam)

    def top_down(self, ys, noisy: bool = False, quantiser=None, grid_means: bool = True, lam=None):
        """Quantise the latents from zL down to z1.

        quantiser(v) -> (value the decoder sees, value the rate is measured at); by default
        straight-through rounding for both, with uniform noise for the rate in training (noisy).
        Residuals v = y - mean are quantised for every level but the top, whose mean is 0.
        grid_means=False leaves means continuous (the unconstrained "bound" model of BG-VAE).
        lam: the λ of each image (B,), which models with prior_lambda need.
        Returns the decoded latents and the likelihood of each level.
        """
        quantiser = quantiser or (noisy_quantiser if noisy else rounding_quantiser)
        levels = len(ys)
        z_hat = [None] * levels
        likelihoods = [None] * levels
        z_hat[-1], z_rate = quantiser(ys[-1])
        likelihoods[-1] = self.top_likelihood(z_rate)
        for level in range(levels - 2, -1, -1):
            y = ys[level]
            u, mean = self.priors[level](z_hat[level + 1], y.shape[-2:], self.prior_shifts(level, lam))
            mean = self.quantise_mean(mean) if grid_means else mean
            residual, r_rate = quantiser(y - mean)
            z_hat[level] = residual + mean
            likelihoods[level] = gaussian_likelihood(r_rate, self.scale_from_index(u))
            if level == 0 and self.context is not None:
                z_hat[0], likelihoods[0] = self._second_half(y, u, mean, z_hat[0], likelihoods[0],
                                                             quantiser, grid_means)
        return z_hat, likelihoods

    def _second_half(self, y, u, mean, z_first, lk_first, quantiser, grid_means):
        """Checkerboard context: keep the anchors of the first pass, recode the rest with the corrected
        prior. The corrections are quantised on their own, as the integer path adds them."""
        anchors = anchor_mask(*y.shape[-2:]).to(y.device)
        du, dmean = self.context(z_first * anchors)
        mean2 = mean + (self.quantise_mean(dmean) if grid_means else dmean)
        residual, r_rate = quantiser(y - mean2)
        z_second = residual + mean2
        lk_second = gaussian_likelihood(r_rate, self.scale_from_index(u + du))
        return (anchors * z_first + (1 - anchors) * z_second,
                anchors * lk_first + (1 - anchors) * lk_second)

    def forward(self, x, lam, noisy: bool = True, bound: bool = False):
        """bound=True: the relaxed model (noise instead of rounding everywhere, free means), whose
        rate-distortion cost bounds what the practical codec can reach; used as a BG-VAE teacher."""
        ys = [y.float() for y in self.analysis(x, lam)]   # bf16 autocast (training): rates in float32
        if bound:
            z_hat, likelihoods = self.top_down(ys, quantiser=relaxed_quantiser, grid_means=False, lam=lam)
        else:
            z_hat, likelihoods = self.top_down(ys, noisy, lam=lam)
        x_hat = self.synthesis(z_hat[0], lam)
        num_pixels = x.shape[-2] * x.shape[-1]
        bits = [-(lk.log().sum(dim=(1, 2, 3))) / LOG2 for lk in likelihoods]
        bpp = sum(bits) / num_pixels
        return {"x_hat": x_hat, "bpp": bpp, "bits": bits, "ys": ys, "z_hat": z_hat}
