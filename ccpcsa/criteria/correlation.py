"""CCPCSA's channel score and its two ablations (Zhao, Luo, Peng, Tan, Electronics 2023, 12(7):1683).

For layer l with channels c = 1..C (feature map F_c over all images and positions of the epoch):

- ρ_c = mean_{j≠c} |corr(F_c, F_j)|               — channel correlation (Pearson, from moments)
- a_c = mean σ(Mc) of the BAM consuming channel c  — channel attention (1 where no BAM does)
- ``ccpcsa``:    score_c = a_c · (1 − ρ_c)
- ``corr``:      score_c = 1 − ρ_c
- ``attention``: score_c = a_c  (PCAS-like)

Channels that other channels already explain, and that attention ranks low, go first. Scores are
normalized per layer, then averaged over a coupled group's members (see :mod:`.base`).
"""

from __future__ import annotations

import numpy as np

from ..attention import BAM
from .base import Criterion, ScoreContext, combine_members, feature_members


class CorrelationAttentionCriterion(Criterion):
    """score = a^use_attention · (1 − ρ)^use_correlation, from statistics of the training epoch."""

    collects_training_stats = True

    def __init__(self, use_correlation: bool = True, use_attention: bool = True, name: str = "ccpcsa") -> None:
        self.use_correlation = use_correlation
        self.use_attention = use_attention
        self.name = name

    def score(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        if ctx.stats is None:
            raise ValueError(f"criterion '{self.name}' needs channel statistics from a training epoch")
        modules = dict(ctx.model.named_modules())
        out: dict[str, np.ndarray] = {}
        for g in ctx.pruner.groups:
            bams = [n for n in g.members if isinstance(modules.get(n), BAM)]
            att_root = np.ones(g.size)
            for b in bams:
                a = ctx.stats.attention(b)
                if a is not None:
                    idx = np.asarray(g.member_channel_index[b])
                    att_root = np.where(idx >= 0, a[np.maximum(idx, 0)], att_root)
            member_scores = {}
            for name in feature_members(g, ctx.model):
                mom = ctx.stats.moments.get(name)
                if mom is None or mom.n == 0:
                    continue
                idx = np.asarray(g.member_channel_index[name])
                c = len(mom.s1)
                s = (1.0 - mom.redundancy()) if self.use_correlation else np.ones(c)
                if self.use_attention:
                    att_member = np.ones(c)
                    att_member[idx[idx >= 0]] = att_root[idx >= 0]
                    s = s * att_member
                member_scores[name] = s
            combined = combine_members(g, member_scores)
            if combined is not None:
                out[g.key] = combined
        return out
