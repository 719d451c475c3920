"""CCPCSA's channel score and its ablations (Zhao, Luo, Peng, Tan, Electronics 2023, 12(7):1683).

The paper's outline (§3): BAM channel-spatial attention (Park et al., BMVC 2018) is inserted and retrained;
during a training epoch a per-channel *channel correlation* is accumulated for every layer; channels are
sorted globally and the lowest go. The formula is ours (README "The channel score"). For a layer with
channels c = 1..C and feature map F_c over all images and positions of the epoch (moments only,
:mod:`.stats`), the components are

- redundancy ρ_c: ``mean`` — mean_{j≠c} |corr(F_c, F_j)|; ``max`` — max_{j≠c} |corr(F_c, F_j)| (the nearest twin);
  ``partial`` — R²_c, the share of F_c's variance a linear combination of all the other channels explains
  (``1 − 1/(P⁻¹)_cc``, P the correlation matrix); the score uses 1 − ρ_c (a channel the others already explain goes first);
- attention a_c of the BAM that consumes channel c (1 where none does): ``channel`` — mean σ(Mc);
  ``full`` — mean over positions of σ(Mc + Ms) (channel + spatial, BAM Eq. 1); ``gain`` — 1 + that mean, the factor by
  which BAM amplifies the channel (F' = F ⊗ (1 + M(F)));
- magnitude m_c: ``energy`` — RMS of F_c; ``l1`` — filter L1 norm (Li et al., ICLR 2017); ``bn`` — |γ| of its BN;
  ``none``.

``combine="product"``: score = a · (1 − ρ) · m (each term 1 when off); ``combine="rank"``: the mean of the
terms' per-layer ranks scaled to (0, 1]. Statistics are taken after BN (``features="bn"``), before BN
(``conv``; Pearson correlation is unchanged by BN's per-channel affine map, so only the magnitude differs) or
after BN + ReLU (``relu``). Scores are normalized per layer (divided by the layer mean), then a coupled group
(residual sum, depthwise conv, BAM input) combines its members by their ``mean`` or ``max`` (``group``).

Registered: ``ccpcsa`` (the benchmarks' winner, :data:`CCPCSA_DEFAULT`, README and bench/README say why),
``corr`` (1 − mean ρ), ``attention`` (channel attention only, PCAS-like); every option can be set through
``prune.criterion.options``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch_pruning as tp
from torch import nn

from ..errors import UserError
from ..models.attention import BAM
from .base import FEATURES, Criterion, ScoreContext, combine_members, feature_members, normalize_layer


@dataclass(frozen=True)
class CcpcsaOptions:
    """One point of the CCPCSA design space (module docstring)."""

    correlation: str = "mean"  # mean | max | partial | none
    attention: str = "channel"  # channel | full | gain | none
    magnitude: str = "none"  # none | energy | l1 | bn
    combine: str = "product"  # product | rank
    features: str = "bn"  # bn | conv | relu
    group: str = "mean"  # mean | max
    compensate: bool = False  # fold removed channels into the kept ones by least squares (ccpcsa.surgery.compensation)

    CHOICES = {"correlation": ("mean", "max", "partial", "none"), "attention": ("channel", "full", "gain", "none"),
               "magnitude": ("none", "energy", "l1", "bn"), "combine": ("product", "rank"), "features": FEATURES,
               "group": ("mean", "max"), "compensate": (False, True)}

    def validate(self) -> None:
        """UserError naming the option and its choices for a bad value."""
        for f in fields(self):
            v = getattr(self, f.name)
            if v not in self.CHOICES[f.name]:
                raise UserError(f"prune.criterion.options.{f.name} must be one of {', '.join(self.CHOICES[f.name])}, got {v!r}")

    @classmethod
    def from_dict(cls, base: CcpcsaOptions, options: dict[str, Any]) -> CcpcsaOptions:
        """``base`` with ``options`` applied; UserError for unknown keys."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(options) - known)
        if bad:
            raise UserError(f"unknown prune.criterion.options key(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        out = replace(base, **options)
        out.validate()
        return out


#: What ``ccpcsa`` means — the winner of the ablation (bench/README.md, "CCPCSA ablation"; README "The channel score"):
#: filter magnitude × decorrelation × BAM gain, with least-squares compensation of the removed channels.
CCPCSA_DEFAULT = CcpcsaOptions(correlation="mean", attention="gain", magnitude="l1", compensate=True)


def _rank01(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` scaled to (0, 1] (ties share the mean rank)."""
    order = np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)
    # mean rank over ties
    vals, inv = np.unique(x, return_inverse=True)
    sums = np.zeros(len(vals))
    cnt = np.zeros(len(vals))
    np.add.at(sums, inv, order)
    np.add.at(cnt, inv, 1)
    return (sums[inv] / cnt[inv] + 1) / len(x)


class CorrelationAttentionCriterion(Criterion):
    """Attention × (1 − redundancy) × magnitude, from statistics of the training epoch (module docstring)."""

    collects_training_stats = True

    def __init__(self, options: CcpcsaOptions = CCPCSA_DEFAULT, name: str = "ccpcsa") -> None:
        options.validate()
        self.options = options
        self.name = name
        self.features = options.features
        self.wants_consumer_moments = options.compensate
        self._stats: Any = None

    def _attention(self, ctx: ScoreContext, g: Any, modules: dict[str, nn.Module]) -> np.ndarray:
        """Per root channel: the attention of the BAM the group feeds (1 where none)."""
        att_root = np.ones(g.size)
        if self.options.attention == "none":
            return att_root
        for b in (n for n in g.members if isinstance(modules.get(n), BAM)):
            a = ctx.stats.attention(b, full=self.options.attention == "full")
            if a is not None and self.options.attention == "gain":  # BAM's F' = F ⊗ (1 + M(F)): the channel's amplification
                a = 1.0 + ctx.stats.attention(b, full=True)
            if a is not None:
                idx = np.asarray(g.member_channel_index[b])
                att_root = np.where(idx >= 0, a[np.maximum(idx, 0)], att_root)
        return att_root

    def _magnitude_groups(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        """Group-level magnitude scores (l1 / bn via torch-pruning's importances, mean-normalized)."""
        if self.options.magnitude not in ("l1", "bn"):
            return {}
        imp = (tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer="mean")
               if self.options.magnitude == "l1" else tp.importance.BNScaleImportance(group_reduction="mean", normalizer="mean"))
        out = {}
        for key, group in ctx.pruner.tp_groups().items():
            v = imp(group)
            if v is not None:
                out[key] = v.detach().double().cpu().numpy()
        return out

    def score(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        if ctx.stats is None:
            raise ValueError(f"criterion '{self.name}' needs channel statistics from a training epoch")
        o = self.options
        self._stats = ctx.stats
        modules = dict(ctx.model.named_modules())
        group_mag = self._magnitude_groups(ctx)
        out: dict[str, np.ndarray] = {}
        for g in ctx.pruner.groups:
            att_root = self._attention(ctx, g, modules)
            member_scores: dict[str, np.ndarray] = {}
            for name in feature_members(g, ctx.model, o.features):
                mom = ctx.stats.moments.get(name)
                if mom is None or mom.n == 0:
                    continue
                idx = np.asarray(g.member_channel_index[name])
                c = len(mom.s1)
                terms = []
                if o.correlation != "none":
                    rho = {"mean": mom.redundancy, "max": mom.nearest_twin, "partial": mom.partial_redundancy}[o.correlation]()
                    terms.append(1.0 - rho)
                if o.attention != "none":
                    att_member = np.ones(c)
                    att_member[idx[idx >= 0]] = att_root[idx >= 0]
                    terms.append(att_member)
                if o.magnitude == "energy":
                    terms.append(mom.rms())
                member_scores[name] = self._combine(terms, c)
            combined = combine_members(g, member_scores, o.group)
            if g.key in group_mag:
                mag = normalize_layer(group_mag[g.key])
                combined = mag if combined is None else self._combine([combined, mag], g.size)
            if combined is not None:
                out[g.key] = combined
        return out

    def compensate(self, pruner: Any, plan: dict[str, list[int]]) -> Any:
        """Least-squares weight compensation of ``plan`` from the consumer-input moments of the last scored statistics
        (:func:`ccpcsa.surgery.compensation.compensate_least_squares`); a skipped report when the option is off."""
        from ..surgery.compensation import compensate_least_squares, skipped_report

        if not self.options.compensate or self._stats is None or not self._stats.consumer_moments:
            return skipped_report(plan, "prune.criterion.options.compensate is off" if not self.options.compensate
                                  else "no consumer-input statistics were collected")
        return compensate_least_squares(pruner, plan, self._stats.consumer_moments)

    def _combine(self, terms: list[np.ndarray], size: int) -> np.ndarray:
        if not terms:
            return np.ones(size)
        if self.options.combine == "rank":
            return np.mean([_rank01(t) for t in terms], axis=0)
        s = np.ones(size)
        for t in terms:
            s = s * np.maximum(np.asarray(t, dtype=np.float64), 0.0)
        return s


def ccpcsa(**options: Any) -> CorrelationAttentionCriterion:
    """CCPCSA with :data:`CCPCSA_DEFAULT` updated by ``options`` (``prune.criterion.options``)."""
    return CorrelationAttentionCriterion(CcpcsaOptions.from_dict(CCPCSA_DEFAULT, options), "ccpcsa")


def corr(**options: Any) -> CorrelationAttentionCriterion:
    """Channel correlation alone: 1 − mean |ρ| (no attention, no magnitude)."""
    base = CcpcsaOptions(correlation="mean", attention="none", magnitude="none")
    return CorrelationAttentionCriterion(CcpcsaOptions.from_dict(base, options), "corr")


def attention(**options: Any) -> CorrelationAttentionCriterion:
    """BAM channel attention alone (PCAS-like)."""
    base = CcpcsaOptions(correlation="none", attention="channel", magnitude="none")
    return CorrelationAttentionCriterion(CcpcsaOptions.from_dict(base, options), "attention")
