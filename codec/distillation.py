"""Bound-guided distillation (BG-VAE, Zhang et al. 2024): a teacher "bound" model of the same architecture,
trained without the practical constraints (noise instead of rounding, free means), guides the practical
student through affinity-matrix feature alignment and reconstruction supervision.

Affinity of a feature map: pool to at most POOL x POOL positions, L2-normalise every position's channel
vector, and take all pairwise cosine similarities (N x N). Alignment loss: L1 between the student's and
teacher's affinity matrices plus (1 - cosine similarity) of their rows. Channel counts may differ,
since affinity matrices compare positions, not channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOL = 16


class FeatureTap:
    """Collects the outputs of chosen modules on every forward pass (forward hooks; no model change)."""

    def __init__(self, modules):
        self.features = []
        self.handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module, args, out):
        self.features.append(out)

    def take(self) -> list:
        out, self.features = self.features, []
        return out

    def close(self):
        for h in self.handles:
            h.remove()


def tapped_modules(net: nn.Module) -> list:
    """The FiLM outputs of every analysis and synthesis stage: one feature map per scale."""
    return list(net.analysis.image.films) + list(net.synthesis.films)


def affinity(f: torch.Tensor, pool: int = POOL) -> torch.Tensor:
    """(B,C,H,W) -> (B,N,N) cosine similarities between the N <= pool*pool positions (in float32: under
    bf16 autocast the features arrive in bfloat16, whose 8-bit mantissa would blur the similarities)."""
    f = f.float()
    if f.shape[-1] > pool or f.shape[-2] > pool:
        f = F.adaptive_avg_pool2d(f, (min(pool, f.shape[-2]), min(pool, f.shape[-1])))
    v = F.normalize(f.flatten(2), dim=1)
    return v.transpose(1, 2) @ v


def affinity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    a_s, a_t = affinity(student), affinity(teacher.detach())
    l1 = (a_s - a_t).abs().mean()
    cos = F.cosine_similarity(a_s, a_t, dim=-1).mean()
    return l1 + (1 - cos)


def distillation_terms(student_feats, teacher_feats, student_xhat, teacher_xhat):
    """(feature alignment, reconstruction supervision), both averaged over the batch."""
    if len(student_feats) != len(teacher_feats):
        raise ValueError("student and teacher expose different numbers of feature maps")
    align = sum(affinity_loss(s, t) for s, t in zip(student_feats, teacher_feats)) / max(len(student_feats), 1)
    recon = (student_xhat - teacher_xhat.detach()).square().mean()
    return align, recon
