"""Statistics gathered with forward hooks during a training epoch — running sums only, never maps.

For a feature module with output ``X`` (N, C, H, W), every image and position is one sample of the
C-dimensional vector ``x``: we accumulate ``n``, ``Σx`` (C), ``Σx²`` (C) and ``Σx xᵀ`` (C×C) in float64.
Pearson correlation then follows from moments: ``cov = Σxxᵀ/n − μμᵀ``, ``corr_ij = cov_ij / √(var_i var_j)``.
For each BAM we accumulate the channel attention ``σ(Mc(F))`` summed over images.
Hooks record only while the module is in training mode (the epoch's training passes), unless
``training_only=False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import placement
from ..models.attention import BAM
from ..surgery.prune import ChannelPruner


def _accumulate(total: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """``total + new`` on ``total``'s device (the first batch decides where a running sum lives)."""
    return new if total is None else total + new.to(total.device)


@dataclass
class Moments:
    """Running first/second moments of one layer's channels."""

    n: int = 0
    s1: torch.Tensor | None = None  # Σx, (C,)
    s2: torch.Tensor | None = None  # Σxxᵀ, (C, C); its diagonal is Σx²

    def add(self, out: torch.Tensor) -> None:
        x = out.detach().float().transpose(0, 1).reshape(out.shape[1], -1)  # (C, N·H·W)
        s1 = x.sum(1).double()
        s2 = (x @ x.T).double()
        self.n += x.shape[1]
        self.s1 = _accumulate(self.s1, s1)
        self.s2 = _accumulate(self.s2, s2)

    def correlation(self) -> np.ndarray:
        """C×C Pearson correlation; a constant channel gets |corr| = 1 with everything (it carries no information)."""
        assert self.s1 is not None and self.s2 is not None and self.n > 0
        mu = self.s1 / self.n
        cov = self.s2 / self.n - torch.outer(mu, mu)
        var = cov.diagonal().clamp_min(0)
        std = var.sqrt()
        dead = std <= 1e-12 * (1 + mu.abs())
        corr = cov / torch.outer(std, std).clamp_min(1e-30)
        corr = corr.clamp(-1, 1)
        corr[dead, :] = 1.0
        corr[:, dead] = 1.0
        return corr.cpu().numpy()

    def redundancy(self) -> np.ndarray:
        """ρ_c = mean over j ≠ c of |corr(F_c, F_j)| (CCPCSA issue's definition); 1 for a single channel."""
        c = np.abs(self.correlation())
        k = c.shape[0]
        if k < 2:
            return np.ones(k)
        return (c.sum(1) - np.diag(c)) / (k - 1)

    def nearest_twin(self) -> np.ndarray:
        """ρ_c = max over j ≠ c of |corr(F_c, F_j)|: how well the channel's closest twin explains it; 1 for one channel."""
        c = np.abs(self.correlation())
        if c.shape[0] < 2:
            return np.ones(c.shape[0])
        np.fill_diagonal(c, -np.inf)
        return c.max(1)

    def partial_redundancy(self, ridge: float = 1e-3) -> np.ndarray:
        """ρ_c = R²_c, the share of channel c's variance that a linear combination of all the other channels explains:
        ``1 − 1 / (P⁻¹)_cc`` with ``P`` the Pearson correlation matrix (ridge-regularized by ``ridge``·I). 1 − ρ_c is
        the channel's *unique* share, what its removal loses even after the others compensate linearly (the multiple
        correlation generalizes the pairwise |ρ| to the whole layer); 1 for a single channel."""
        c = self.correlation()
        k = c.shape[0]
        if k < 2:
            return np.ones(k)
        inv = np.linalg.inv(c + ridge * np.eye(k))
        return np.clip(1.0 - 1.0 / np.maximum(np.diag(inv), 1.0), 0.0, 1.0)

    def rms(self) -> np.ndarray:
        """Root mean square activation per channel, ``√(Σx²/n)`` (the magnitude of the feature map)."""
        assert self.s2 is not None and self.n > 0
        return (self.s2.diagonal() / self.n).clamp_min(0).sqrt().cpu().numpy()


@dataclass
class ChannelStats:
    """Moments per feature module and mean attention per BAM channel: σ(Mc) (channel attention) and the mean over
    positions of σ(Mc + Ms) (BAM's full gate, channel + spatial)."""

    moments: dict[str, Moments] = field(default_factory=dict)
    attention_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    attention_count: dict[str, int] = field(default_factory=dict)
    full_attention_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    consumer_moments: dict[str, Any] = field(default_factory=dict)  # consumer module → InputMoments of its input

    def attention(self, bam_name: str, full: bool = False) -> np.ndarray | None:
        """Mean σ(Mc) (``full``: mean σ(Mc + Ms)) per channel of BAM ``bam_name`` over the images seen, or None."""
        sums = self.full_attention_sum if full else self.attention_sum
        if bam_name not in sums:
            return None
        return (sums[bam_name] / max(1, self.attention_count[bam_name])).cpu().numpy()


class ChannelStatsCollector:
    """Context manager that attaches the hooks: ``with ChannelStatsCollector(model, names) as c: train…; c.stats``."""

    def __init__(self, model: nn.Module, feature_modules: list[str], training_only: bool = True, relu: bool = False,
                 consumer_modules: list[str] | None = None) -> None:
        self.model = model
        self.feature_modules = feature_modules
        self.consumer_modules = list(consumer_modules or [])  # also the moments of these modules' inputs
        self.training_only = training_only
        self.relu = relu  # record max(x, 0) of each feature map (statistics after BN + ReLU)
        self.stats = ChannelStats()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> ChannelStatsCollector:
        placement.place(self.model)  # one device and dtype for the whole model before any hook fires
        mods = dict(self.model.named_modules())
        for name in self.feature_modules:
            mom = self.stats.moments.setdefault(name, Moments())
            self._handles.append(mods[name].register_forward_hook(self._moment_hook(mom)))
        for name in self.consumer_modules:
            from ..surgery.compensation import InputMoments

            im = self.stats.consumer_moments.setdefault(name, InputMoments())
            self._handles.append(mods[name].register_forward_pre_hook(self._input_hook(im)))
        for name, m in mods.items():
            if isinstance(m, BAM):
                m.record = True
                self._handles.append(m.register_forward_hook(self._attention_hook(name)))
        return self

    def _moment_hook(self, mom: Moments):  # type: ignore[no-untyped-def]
        def hook(mod: nn.Module, inp: object, out: torch.Tensor) -> None:
            if (mod.training or not self.training_only) and out.dim() in (2, 4):
                x = out.clamp_min(0) if self.relu else out
                if isinstance(mod, nn.Linear) and x.dim() == 4:  # a Linear over channels-last maps (ConvNeXt): NHWC
                    x = x.permute(0, 3, 1, 2)
                with placement.float32_math(x):
                    mom.add(x if x.dim() == 4 else x[:, :, None, None])
        return hook

    def _input_hook(self, im: Any):  # type: ignore[no-untyped-def]
        def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            if (mod.training or not self.training_only) and inp and inp[0].dim() in (2, 4):
                with placement.float32_math(inp[0]):
                    im.add(inp[0].permute(0, 3, 1, 2) if isinstance(mod, nn.Linear) and inp[0].dim() == 4 else inp[0])
        return hook

    def _attention_hook(self, name: str):  # type: ignore[no-untyped-def]
        def hook(mod: BAM, inp: object, out: torch.Tensor) -> None:
            a = mod.last_channel_attention
            if a is not None and (mod.training or not self.training_only):
                s = a.double().sum(0)
                self.stats.attention_sum[name] = _accumulate(self.stats.attention_sum.get(name), s)
                self.stats.attention_count[name] = self.stats.attention_count.get(name, 0) + a.shape[0]
                if mod.last_attention is not None:
                    full = mod.last_attention.double().sum(0)
                    self.stats.full_attention_sum[name] = _accumulate(self.stats.full_attention_sum.get(name), full)
        return hook

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in self.model.modules():
            if isinstance(m, BAM):
                m.record = False
                m.last_channel_attention = None
                m.last_attention = None


def stats_collector(model: nn.Module, pruner: ChannelPruner, features: str = "bn", training_only: bool = True,
                    consumers: bool = False) -> ChannelStatsCollector:
    """The collector for every group's feature maps (:func:`~ccpcsa.criteria.base.feature_members` at ``features``:
    ``bn`` after BN, ``conv`` before BN, ``relu`` after BN + ReLU); with ``consumers`` also the input moments of every
    group's cross-channel consumers (for least-squares weight compensation)."""
    from ..surgery.compensation import find_consumers
    from .base import feature_members

    feats = sorted({n for g in pruner.groups for n in feature_members(g, model, features)})
    cons = sorted({c.module for info in find_consumers(pruner).values() for c in info.consumers}) if consumers else []
    return ChannelStatsCollector(model, feats, training_only, relu=features == "relu", consumer_modules=cons)
