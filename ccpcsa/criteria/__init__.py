"""Pruning criteria, selectable by name. Each only scores channels (see :mod:`.base`)."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import unknown
from .base import Criterion, ScoreContext, combine_members, feature_members, normalize_layer
from .correlation import CorrelationAttentionCriterion
from .magnitude import RandomCriterion, TaylorCriterion, TorchPruningCriterion, bn, l1

CRITERIA: dict[str, Callable[[], Criterion]] = {
    "ccpcsa": lambda: CorrelationAttentionCriterion(True, True, "ccpcsa"),
    "corr": lambda: CorrelationAttentionCriterion(True, False, "corr"),
    "attention": lambda: CorrelationAttentionCriterion(False, True, "attention"),
    "l1": l1,
    "bn": bn,
    "taylor": TaylorCriterion,
    "random": RandomCriterion,
}


def register(name: str, factory: Callable[[], Criterion]) -> None:
    """Add a criterion under ``name`` (plug-ins: ``register("mine", MyCriterion)``)."""
    CRITERIA[name] = factory


def list_criteria() -> list[str]:
    """Sorted registered criterion names."""
    return sorted(CRITERIA)


def get_criterion(name: str) -> Criterion:
    """Instantiate the criterion registered as ``name``; UserError listing the known names otherwise."""
    if name not in CRITERIA:
        raise unknown("criterion", name, CRITERIA)
    return CRITERIA[name]()


from . import qsfm  # noqa: E402  (registers qsfm, qsfm-ssim, qsfm-psnr; needs register() above)

__all__ = ["CRITERIA", "Criterion", "CorrelationAttentionCriterion", "RandomCriterion", "ScoreContext", "TaylorCriterion",
           "TorchPruningCriterion", "combine_members", "feature_members", "get_criterion", "list_criteria",
           "normalize_layer", "qsfm", "register"]
