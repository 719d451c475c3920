"""Baseline criteria, delegated to torch-pruning's importance classes (group-level, mean-normalized):

- ``l1``: filter L1 norm Σ|W| of each output channel, averaged over the group (Li et al., ICLR 2017)
- ``bn``: |γ| of the BatchNorm scaling factors (Network Slimming, Liu et al., ICCV 2017)
- ``taylor``: first-order Taylor |w · ∂L/∂w| accumulated over calibration batches (Molchanov et al. 2019)
- ``random``: uniform random scores (seeded)
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
import torch_pruning as tp

from .. import placement
from .base import Criterion, ScoreContext


class TorchPruningCriterion(Criterion):
    """Score every group with a torch-pruning ``Importance``."""

    def __init__(self, name: str, importance: tp.importance.Importance) -> None:
        self.name = name
        self.importance = importance

    def prepare(self, ctx: ScoreContext) -> None:
        """Hook for criteria that need gradients before scoring."""

    def score(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        self.prepare(ctx)
        out = {}
        for key, group in ctx.pruner.tp_groups().items():
            imp = self.importance(group)
            if imp is not None:
                out[key] = imp.detach().double().cpu().numpy()
        ctx.model.zero_grad(set_to_none=True)
        return out


class TaylorCriterion(TorchPruningCriterion):
    """Taylor importance: gradients of the cross-entropy over ``batches`` calibration batches first."""

    def __init__(self, batches: int = 8) -> None:
        super().__init__("taylor", tp.importance.GroupTaylorImportance())
        self.n_batches = batches

    def prepare(self, ctx: ScoreContext) -> None:
        if ctx.batches is None:
            raise ValueError("criterion 'taylor' needs calibration batches")
        model = ctx.model
        was = model.training
        model.eval()
        model.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(ctx.batches()):
            if i >= self.n_batches:
                break
            F.cross_entropy(model(placement.inputs_for(model, x)), placement.inputs_for(model, y)).backward()
        model.train(was)


class RandomCriterion(Criterion):
    """Uniform random scores from ``seed`` (same seed → same choice)."""

    name = "random"

    def score(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(ctx.seed)
        return {g.key: rng.random(g.size) for g in ctx.pruner.groups}


def l1() -> TorchPruningCriterion:
    """Filter L1-norm criterion."""
    return TorchPruningCriterion("l1", tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer="mean"))


def bn() -> TorchPruningCriterion:
    """BatchNorm |γ| criterion."""
    return TorchPruningCriterion("bn", tp.importance.BNScaleImportance(group_reduction="mean", normalizer="mean"))
