"""Give a trained model wider image transforms (more channels N in the analysis and synthesis) without losing
what it has learned: Net2WiderNet (Chen, Goodfellow and Shlens, "Net2Net", ICLR 2016).

Each new channel of a hidden layer is a copy of a trained one: the same incoming weights, bias, GDN β and γ
and λ-FiLM rows, so it computes the same value, and the layer after it reads the original and its copies
with that channel's weights divided among them, so the sum is unchanged. The widened model is the same
function up to float rounding. A copy and its original would get the same gradients for good (their outgoing
weights are equal), so `noise` adds a little Gaussian noise to the copies' incoming weights (that fraction
of the layer's weight spread), as the paper does, which sets them apart.

Copies barely part in practice: after lineage D's 10,000 steps (noise 0.01, Adam, lr 5e-5 to 1e-5) every new
channel's incoming weights still had a cosine of at least 0.998 with its original's (session 50): the wider
model went on computing the narrow one. A copy's gradient is its original's (they compute the same value and
are read with the same weights), so the two take the same steps; the noise makes the gradients differ only as
little as it makes the values differ. Hence `fresh=True`: the new channels get random incoming weights (the
layer's weight spread), a zero bias, their source's GDN and FiLM rows, and zero weights in the layer that reads
them. The model is still the same function (the new channels are read with weight 0), and the reader's
weights for them get a gradient at once (the new channels' values times the gradient at the reader's
output), different for every new channel.

Only the hidden channels grow: the latents (z1 and the chain) keep their widths, so the rate side, the
priors and the container are untouched. A wider z1 is z1_widening.py's job.

Why grow rather than train a wide model from scratch: lineage C's wider z1 needed 85,000 steps to reach the
main line from random weights (sessions 29-35); a grown model starts where the trained one is. Whether the
new channels then pay is a measurement (model card).

The GDNs: β + Γ|x| per channel. A copy's row of Γ is its original's, except that the weight the original puts
on its own |x| the copy puts on its own |x| (the same value), so a diagonal Γ stays diagonal, as the INT8
graph's folding needs. Entries that start at exactly 0 (the copies' columns) have no gradient through Γ's
square-root parameter and stay 0: a copy's |x| only ever enters its own normalisation.
"""
from __future__ import annotations

import torch

# The hidden layers between the transforms' convolutions: (prefix, the conv that writes it and its output
# axis, the conv that reads it and its input axis). Conv2d weights are (out, in, k, k), ConvTranspose2d
# weights (in, out, k, k).
HIDDEN = [(f"analysis.image.{{}}.{k}", (f"analysis.image.convs.{k}", 0), (f"analysis.image.convs.{k + 1}", 1))
          for k in range(3)] + \
         [(f"synthesis.{{}}.{k}", (f"synthesis.convs.{k}", 1), (f"synthesis.convs.{k + 1}", 0)) for k in range(3)]


def widen_transforms(state: dict, old_n: int, new_n: int, seed: int = 0, noise: float = 0.0,
                     fresh: bool = False) -> dict:
    """A state dict with old_n channels in the image analysis and synthesis -> one with new_n (> old_n): the new
    channels copies of trained ones, or (fresh) random ones the next layer does not read yet."""
    if new_n <= old_n:
        raise ValueError(f"the transforms can only grow: {old_n} -> {new_n} channels")
    if any(name.startswith("synthesis.blocks.") for name in state):
        raise ValueError("widening a synthesis with residual blocks is not supported")
    generator = torch.Generator().manual_seed(seed)
    noise_generator = torch.Generator().manual_seed(seed + 1)   # apart: the noise does not change what is copied
    out = dict(state)
    for prefix, (writer, out_axis), (reader, in_axis) in HIDDEN:
        source = sources(old_n, new_n, generator)
        gdn, film = prefix.format("gdns"), prefix.format("films")
        w = out[writer + ".weight"].index_select(out_axis, source)
        if fresh:   # the new channels' bias 0, and the reader's weights on them 0
            out[writer + ".weight"] = _random_new(w, out_axis, old_n, noise_generator)
            out[writer + ".bias"] = _zero_padded(out[writer + ".bias"], 0, new_n)
            out[reader + ".weight"] = _zero_padded(out[reader + ".weight"], in_axis, new_n)
        else:
            out[writer + ".weight"] = _with_noise(w, out_axis, old_n, noise, noise_generator)
            out[writer + ".bias"] = out[writer + ".bias"].index_select(0, source)
            out[reader + ".weight"] = _divided(out[reader + ".weight"], in_axis, source, old_n)
        out[gdn + ".beta_param"] = out[gdn + ".beta_param"].index_select(0, source)
        out[gdn + ".gamma_param"] = _widened_gamma(out[gdn + ".gamma_param"], source)
        pair = torch.cat([source, source + old_n])   # FiLM rows: [scale of each channel, shift of each channel]
        for name in (film + ".net.2.weight", film + ".net.2.bias"):
            out[name] = out[name].index_select(0, pair)
    return out


def sources(old_n: int, new_n: int, generator) -> torch.Tensor:
    """The channel each of new_n channels copies: itself for the first old_n, then trained channels at
    random, each once before any twice."""
    extra = new_n - old_n
    rounds = [torch.randperm(old_n, generator=generator) for _ in range(-(-extra // old_n))]
    return torch.cat([torch.arange(old_n), torch.cat(rounds)[:extra]])


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


def _random_new(w: torch.Tensor, axis: int, old_n: int, generator) -> torch.Tensor:
    """The new channels' incoming weights (past old_n along axis) drawn afresh, with the layer's weight spread."""
    new = w.narrow(axis, old_n, w.shape[axis] - old_n)
    new.copy_(torch.randn(new.shape, generator=generator).to(w.dtype) * float(w.narrow(axis, 0, old_n).std()))
    return w


def _zero_padded(t: torch.Tensor, axis: int, new_n: int) -> torch.Tensor:
    """t with zeros for the new channels along axis: the trained channels keep theirs whole."""
    shape = list(t.shape)
    shape[axis] = new_n - t.shape[axis]
    return torch.cat([t, torch.zeros(shape, dtype=t.dtype)], dim=axis)


def _widened_gamma(param: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Γ's square-root parameter (n, n, 1, 1) for the widened channels: row a is its source s's over the trained
    channels, except that the entry s puts on its own |x| (column s) row a puts on column a."""
    old_n, new_n = param.shape[0], source.numel()
    g = param[..., 0, 0]
    rows = g.index_select(0, source)                       # (new_n, old_n): each channel's source row
    out = torch.zeros(new_n, new_n, dtype=param.dtype)
    out[:, :old_n] = rows
    idx = torch.arange(new_n)
    out[idx[old_n:], source[old_n:]] = 0                   # a copy reads its source's |x| on its own diagonal
    out[idx, idx] = g[source, source]
    return out.view(new_n, new_n, 1, 1)
