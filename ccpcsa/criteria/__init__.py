"""Pruning criteria, selectable by name. Each only scores channels (see :mod:`.base`)."""

from __future__ import annotations

from . import qsfm  # registers qsfm, qsfm-ssim, qsfm-psnr
from .base import Criterion, ScoreContext, combine_members, feature_members, normalize_layer
from .catalog import CRITERIA, WITH_OPTIONS, get_criterion, list_criteria, register
from .correlation import CcpcsaOptions, CorrelationAttentionCriterion
from .magnitude import RandomCriterion, TaylorCriterion, TorchPruningCriterion

__all__ = ["CRITERIA", "CcpcsaOptions", "Criterion", "CorrelationAttentionCriterion", "WITH_OPTIONS", "RandomCriterion", "ScoreContext", "TaylorCriterion",
           "TorchPruningCriterion", "combine_members", "feature_members", "get_criterion", "list_criteria",
           "normalize_layer", "qsfm", "register"]
