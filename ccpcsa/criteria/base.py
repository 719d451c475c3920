"""The criterion interface: a criterion only *scores* channels; :mod:`ccpcsa.surgery.prune` does the surgery.

``score(ctx) -> {group key: per-channel scores}`` where the array of group ``g`` has one entry per
channel of the group's root module (``ctx.pruner.group(g).size``). Low scores are pruned first.
Scores are per-layer normalized (divided by the layer's mean) before groups are compared globally;
a group's score is the mean of its members' normalized scores (CCPCSA issue: coupled channels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..surgery.prune import ChannelPruner, GroupInfo

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class ScoreContext:
    """What a criterion may look at: the model, its groups, training statistics, calibration batches."""

    model: nn.Module
    pruner: ChannelPruner
    stats: Any = None  # ChannelStats gathered during the training epoch (criteria that need it)
    batches: Batches | None = None  # calibration batches from the train split, no augmentation
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Criterion:
    """Base class. ``collects_training_stats``: the loop records :class:`~ccpcsa.criteria.stats.ChannelStats`
    during each training epoch and passes them as ``ctx.stats``."""

    name = "base"
    collects_training_stats = False
    features = "bn"  # where the statistics are taken (see :func:`feature_members`)
    wants_consumer_moments = False  # the statistics epoch also records the consumers' input moments (compensation)

    def score(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        """``{group key: per-channel scores}`` for the groups of ``ctx.pruner`` (one entry per channel of the group's
        root module; low = pruned first; a group left out is not pruned). Must not change the model's weights."""
        raise NotImplementedError


def normalize_layer(scores: np.ndarray) -> np.ndarray:
    """Divide by the layer mean (torch-pruning's ``mean`` normalizer); all-zero layers stay zero."""
    s = np.asarray(scores, dtype=np.float64)
    m = float(np.mean(np.abs(s))) if s.size else 0.0
    return s / m if m > 0 else s


FEATURES = ("bn", "conv", "relu")


def feature_members(group: GroupInfo, model: nn.Module, where: str = "bn") -> list[str]:
    """Members whose output *is* the group's feature map: ``where="bn"`` / ``"relu"`` its BatchNorms if any (the
    collector applies the ReLU for ``relu``), ``"conv"`` its convs/linears (before BN); convs/linears when it has no
    BatchNorm."""
    mods = dict(model.named_modules())
    bns = [n for n in group.members if isinstance(mods.get(n), nn.BatchNorm2d)]
    if bns and where != "conv":
        return bns
    return [n for n in group.members if isinstance(mods.get(n), (nn.Conv2d, nn.Linear))]


def combine_members(group: GroupInfo, member_scores: dict[str, np.ndarray], reduce: str = "mean") -> np.ndarray | None:
    """Group score per root channel from its members' layer-normalized scores: their mean (``reduce="mean"``) or
    maximum (``"max"``: a coupled channel is as important as its most important member).

    ``member_scores[name]`` is indexed in that member's own channel space; the group's
    ``member_channel_index`` maps root channels to member channels. None when no member is scored.
    """
    total = np.zeros(group.size)
    best = np.full(group.size, -np.inf)
    count = np.zeros(group.size)
    for name, s in member_scores.items():
        index = np.asarray(group.member_channel_index[name])
        ok = index >= 0
        norm = normalize_layer(s)
        total[ok] += norm[index[ok]]
        best[ok] = np.maximum(best[ok], norm[index[ok]])
        count[ok] += 1
    if not count.any():
        return None
    value = best if reduce == "max" else total / np.maximum(count, 1)
    return np.where(count > 0, value, np.inf)
