"""Give a trained model wider image transforms (more channels N in the analysis and synthesis) without losing
what it has learned: Net2WiderNet (Chen, Goodfellow and Shlens, "Net2Net", ICLR 2016).

Each new channel of a hidden layer is a copy of a trained one: the same incoming weights, bias, GDN β and γ
and λ-FiLM rows, so it computes the same value, and the layer after it reads the original and its copies
with that channel's weights divided among them, so the sum is unchanged. The widened model is the same
function, bits included. A copy and its original would get the same gradients for good (their outgoing
weights are equal), so `noise` adds a little Gaussian noise to the copies' incoming weights (that fraction
of the layer's weight spread), as the paper does, which sets them apart.

Only the hidden channels grow: the latents (z1 and the chain) keep their widths, so the rate side, the
priors and the container are untouched. A wider z1 is z1_widening.py's job.

Why grow rather than train a wide model from scratch: lineage C's wider z1 needed 85,000 steps to reach the
main line from random weights (sessions 29-35); a grown model starts where the trained one is. Whether the
new channels then pay is a measurement (model card).

The GDNs: β + Γ|x| per channel. A copy's row of Γ is its original's, with the diagonal entry on the copy's own
|x| (equal to the original's), so a diagonal Γ stays diagonal, as the INT8 graph's folding needs.
"""
from __future__ import annotations

import torch

# The hidden layers between the transforms' convolutions: (prefix, the conv that writes it and its output
# axis, the conv that reads it and its input axis). Conv2d weights are (out, in, k, k), ConvTranspose2d
# weights (in, out, k, k).
HIDDEN = [(f"analysis.image.{{}}.{k}", (f"analysis.image.convs.{k}", 0), (f"analysis.image.convs.{k + 1}", 1))
          for k in range(3)] + \
         [(f"synthesis.{{}}.{k}", (f"synthesis.convs.{k}", 1), (f"synthesis.convs.{k + 1}", 0)) for k in range(3)]


def widen_transforms(state: dict, old_n: int, new_n: int, seed: int = 0, noise: float = 0.0) -> dict:
    """A state dict with old_n channels in the image analysis and synthesis -> one with new_n (> old_n)."""
    if new_n <= old_n:
        raise ValueError(f"the transforms can only grow: {old_n} -> {new_n} channels")
    if any(name.startswith("synthesis.blocks.") for name in state):
        raise ValueError("widening a synthesis with residual blocks is not supported")
    generator = torch.Generator().manual_seed(seed)
    out = dict(state)
    for prefix, (writer, out_axis), (reader, in_axis) in HIDDEN:
        source = sources(old_n, new_n, generator)
        out[writer + ".weight"] = _with_noise(_copied(out[writer + ".weight"], out_axis, source), out_axis, old_n,
                                              noise, generator)
        out[writer + ".bias"] = _copied(out[writer + ".bias"], 0, source)
        out[reader + ".weight"] = _divided(out[reader + ".weight"], in_axis, source, old_n)
        out[prefix.format("gdns") + ".beta_param"] = _copied(out[prefix.format("gdns") + ".beta_param"], 0, source)
        gamma = prefix.format("gdns") + ".gamma_param"
        out[gamma] = _widened_gamma(out[gamma], source)
        for name in (prefix.format("films") + ".net.2.weight", prefix.format("films") + ".net.2.bias"):
            pair = torch.cat([source, source + old_n])   # [scale of each channel, shift of each channel]
            out[name] = out[name].index_select(0, pair)
    return out


def sources(old_n: int, new_n: int, generator) -> torch.Tensor:
    """The channel each of new_n channels copies: itself for the first old_n, then trained channels at
    random, each once before any twice."""
    extra = new_n - old_n
    rounds = [torch.randperm(old_n, generator=generator) for _ in range(-(-extra // old_n))]
    return torch.cat([torch.arange(old_n), torch.cat(rounds)[:extra]])


def _copied(t: torch.Tensor, axis: int, source: torch.Tensor) -> torch.Tensor:
    return t.index_select(axis, source)


def _divided(t: torch.Tensor, axis: int, source: torch.Tensor, old_n: int) -> torch.Tensor:
    """The reader's weights for each channel and its copies, divided among them."""
    shares = torch.bincount(source, minlength=old_n).to(t.dtype)[source]
    shape = [1] * t.dim()
    shape[axis] = -1
    return t.index_select(axis, source) / shares.view(shape)


def _with_noise(w: torch.Tensor, axis: int, old_n: int, noise: float, generator) -> torch.Tensor:
    """The copies' incoming weights (past old_n along axis) plus noise times the layer's weight spread."""
    if noise <= 0:
        return w
    copies = w.narrow(axis, old_n, w.shape[axis] - old_n)
    copies += torch.randn(copies.shape, generator=generator).to(w.dtype) * (noise * float(w.float().std()))
    return w


def _widened_gamma(param: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Γ's square-root parameter (n, n, 1, 1) for the widened channels: each row its source's, reading the
    trained channels off the diagonal and its own |x| on it (a copy's |x| equals its source's)."""
    old_n, new_n = param.shape[0], source.numel()
    g = param[..., 0, 0]
    rows = g.index_select(0, source)                       # (new_n, old_n): each channel's source row
    out = torch.zeros(new_n, new_n, dtype=param.dtype)
    out[:, :old_n] = rows
    idx = torch.arange(new_n)
    out[idx[old_n:], source[old_n:]] = 0                   # a copy reads its source's |x| on its own diagonal
    out[idx, idx] = g[source, source]
    return out.view(new_n, new_n, 1, 1)
