"""QSFM: pruning by the quantified similarity of feature maps (Wang et al., "Model Pruning Based on
Quantified Similarity of Feature Maps", arXiv 2105.06052).

A filter whose feature map is nearly a copy of another filter's map in the same layer carries
redundant information and can go. For every layer (group) we measure, on calibration images, the
similarity ``S_ij`` of every pair of channel maps, averaged over the images:

- **SSIM** (default) or **PSNR** of the maps scaled to their dynamic range, every pair at once, on
  spatial maps or on pooled (N, C) vectors: :mod:`ccpcsa.criteria.similarity` defines them.

**Which maps.** The maps of a group are taken where the network consumes them: the *input* of each
cross-channel consumer of the group (the next ``groups=1`` conv or Linear, found in the DepGraph; see
:func:`ccpcsa.surgery.compensation.find_consumers`), i.e. after BN/ReLU/depthwise stages — the very tensor on
which the compensation fit is made. A coupled group (residual stream, depthwise block) has several
such tensors; ``S`` is the mean of their similarity matrices (spatial maps preferred over pooled
vectors). Groups without a usable consumer fall back to their feature members' outputs (BN, else conv).

**Selection** (the paper's greedy pair elimination, per group): repeatedly take the most similar
remaining pair ``(i, j)`` and remove the member with the smaller mean activation energy ``E[x²]``
(normalised per tensor, averaged like ``S``); the kept one is its *twin*. The similarity of the pair
at removal, ``s_t``, is non-increasing in the step ``t`` (a maximum over a shrinking set).
Redundancy of channel i (reported) is ``max_{j≠i} S_ij``.

**Score mapping** (low = pruned first): the channel removed at step ``t`` gets
``score = (1 − s_t) + t·1e-9`` (the tiny ramp makes ties follow the greedy order, so any prefix of a
group's sorted channels is a prefix of its removal order and every twin stays or is removed later);
the last remaining channel gets 2 + C·1e-9. SSIM ∈ [−1, 1] and normalised PSNR ∈ [0, 1] are absolute,
scale-free similarities, so scores are **not** mean-normalised per layer: they are comparable across
layers as they are, and :meth:`ChannelPruner.ranked_blocks` removes the globally most redundant
channels first, with the usual ``round_to`` blocks and per-layer floors.

Registered as ``qsfm`` (= ``qsfm-ssim``) and ``qsfm-psnr``. After :meth:`QSFMCriterion.score`, the
criterion keeps the removal pairs and the consumers' input moments, so :mod:`ccpcsa.surgery.compensation`
can fold each removed channel into its twin (:meth:`QSFMCriterion.compensate`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import placement
from ..surgery.compensation import (
    CompensationReport,
    GroupConsumers,
    InputMoments,
    compensate,
    compensate_least_squares,
    find_consumers,
)
from ..surgery.prune import ChannelPruner
from .base import Criterion, ScoreContext, feature_members
from .catalog import register
from .similarity import MAX_PSNR_DB, global_psnr, global_ssim, psnr_sums, ssim_sums

_TIE_RAMP = 1e-9


# ------------------------------------------------------------------------------------------- selection
@dataclass
class Elimination:
    """Greedy pair elimination of one group: ``order[t]`` removed at step t in favour of ``twins[t]``, the pair's
    similarity then being ``similarity[t]`` (non-increasing); ``kept`` is the last channel standing."""

    order: list[int]
    twins: list[int]
    similarity: list[float]
    kept: int


def redundancy(s: np.ndarray) -> np.ndarray:
    """Redundancy of each channel: ``r_i = max_{j≠i} S_ij`` (−inf for a single channel)."""
    s = np.array(s, dtype=np.float64)
    np.fill_diagonal(s, -np.inf)
    return s.max(1) if s.shape[0] > 1 else np.full(s.shape[0], -np.inf)


def greedy_pair_elimination(s: np.ndarray, energy: np.ndarray) -> Elimination:
    """Repeatedly take the most similar remaining pair ``argmax_{i<j alive} S_ij`` and remove the member with
    the smaller energy (ties: the higher index), until one channel is left. O(C²) memory; each step only
    re-scans the rows whose best partner was just removed."""
    s = np.nan_to_num(np.array(s, dtype=np.float64), nan=-1.0)
    c = s.shape[0]
    energy = np.asarray(energy, dtype=np.float64)
    if c == 0:
        return Elimination([], [], [], -1)
    np.fill_diagonal(s, -np.inf)
    alive = np.ones(c, dtype=bool)
    arg = s.argmax(1)
    best = s[np.arange(c), arg]
    order: list[int] = []
    twins: list[int] = []
    sims: list[float] = []
    for _ in range(c - 1):
        i = int(best.argmax())
        j = int(arg[i])
        sim = float(best[i])
        if energy[i] < energy[j] or (energy[i] == energy[j] and i > j):
            r, t = i, j
        else:
            r, t = j, i
        order.append(r)
        twins.append(t)
        sims.append(sim)
        alive[r] = False
        s[r, :] = -np.inf
        s[:, r] = -np.inf
        best[r] = -np.inf
        stale = np.nonzero(alive & (arg == r))[0]
        if stale.size:
            arg[stale] = s[stale].argmax(1)
            best[stale] = s[stale, arg[stale]]
    return Elimination(order, twins, sims, int(np.nonzero(alive)[0][0]))


def elimination_scores(elim: Elimination, size: int) -> np.ndarray:
    """``score[order[t]] = (1 − similarity[t]) + t·1e-9``; the kept channel gets ``2 + size·1e-9`` (see module docstring)."""
    scores = np.full(size, 2.0 + size * _TIE_RAMP)
    for t, (r, sim) in enumerate(zip(elim.order, elim.similarity, strict=True)):
        scores[r] = min(1.0 - sim, 2.0) + t * _TIE_RAMP
    return scores


# ------------------------------------------------------------------------------------------ collection
@dataclass
class _SimAccumulator:
    present: np.ndarray  # root channels present in the tensor
    channels: np.ndarray  # their channel indices in the tensor
    total: torch.Tensor
    weight: int = 0
    spatial: bool = True


@dataclass
class _Site:
    """One tensor seen by the hooks (shared by every consumer that receives the same tensor)."""

    name: str
    moments: InputMoments = field(default_factory=InputMoments)
    sims: dict[str, _SimAccumulator] = field(default_factory=dict)
    batch: int = -1
    done: dict[str, int] = field(default_factory=dict)


class _Collector:
    """Forward (pre-)hooks that keep running sums only: per tensor its channel moments and, per group, the
    summed pairwise similarity of the group's channels."""

    def __init__(self, model: nn.Module, sources: dict[tuple[str, str], list[tuple[str, np.ndarray]]], metric: str,
                 window: int, sigma: float, max_db: float, chunk_elements: int) -> None:
        self.model = model
        self.sources = sources
        self.metric, self.window, self.sigma, self.max_db, self.chunk = metric, window, sigma, max_db, chunk_elements
        self.site_of: dict[tuple[str, str], _Site] = {}
        self.batch = 0
        self._live: list[tuple[weakref.ref[torch.Tensor], _Site]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _Collector:
        mods = dict(self.model.named_modules())
        for name, kind in self.sources:
            if kind == "input":
                def pre(mod: nn.Module, args: tuple, _n: str = name) -> None:
                    if args and isinstance(args[0], torch.Tensor):
                        self._observe((_n, "input"), args[0])
                self._handles.append(mods[name].register_forward_pre_hook(pre))
            else:
                def post(mod: nn.Module, args: tuple, out: object, _n: str = name) -> None:
                    if isinstance(out, torch.Tensor):
                        self._observe((_n, "output"), out)
                self._handles.append(mods[name].register_forward_hook(post))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._live.clear()

    def next_batch(self) -> None:
        self.batch += 1
        self._live.clear()

    def _site(self, sid: tuple[str, str], x: torch.Tensor) -> _Site:
        site = self.site_of.get(sid)
        if site is None:
            site = next((s for ref, s in self._live if ref() is x), None) or _Site(f"{sid[0]}:{sid[1]}")
            self.site_of[sid] = site
        self._live.append((weakref.ref(x), site))
        return site

    @torch.no_grad()
    def _observe(self, sid: tuple[str, str], x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4):
            return
        site = self._site(sid, x)
        if site.batch != self.batch:
            site.batch = self.batch
            site.moments.add(x)
        for key, index in self.sources[sid]:
            if site.done.get(key) == self.batch:
                continue
            site.done[key] = self.batch
            present = np.nonzero(index >= 0)[0]
            if present.size == 0:
                continue
            ch = torch.as_tensor(index[present], device=x.device)
            xs = x.detach().index_select(1, ch)
            if xs.dim() == 3:
                xs = xs[..., None]
            spatial = xs.dim() == 4 and xs.shape[2] * xs.shape[3] > 1
            if spatial:
                if self.metric == "ssim":
                    total = ssim_sums(xs, self.window, self.sigma, self.chunk)
                else:
                    total = psnr_sums(xs, self.max_db)
            else:
                v = xs.flatten(1)
                total = (global_ssim(v) if self.metric == "ssim" else global_psnr(v, self.max_db)) * v.shape[0]
            acc = site.sims.get(key)
            if acc is None:
                acc = site.sims[key] = _SimAccumulator(present, index[present], torch.zeros_like(total, device="cpu"), 0, spatial)
            acc.total += total.double().cpu()
            acc.weight += xs.shape[0]


# ----------------------------------------------------------------------------------------- criterion
@dataclass
class GroupRedundancy:
    """QSFM's view of one group: combined similarity ``S`` (root channels), energy, the greedy elimination and
    the tensors it was computed on."""

    key: str
    similarity: np.ndarray
    energy: np.ndarray
    elimination: Elimination
    redundancy: np.ndarray
    sources: list[str]


class QSFMCriterion(Criterion):
    """QSFM score (see module docstring). ``metric``: ``"ssim"`` or ``"psnr"``. Needs ``ctx.batches``."""

    collects_training_stats = False

    def __init__(self, metric: str = "ssim", name: str | None = None, window: int = 11, sigma: float = 1.5,
                 max_psnr_db: float = MAX_PSNR_DB, chunk_elements: int = 1 << 22, compensation: str = "twin") -> None:
        if metric not in ("ssim", "psnr"):
            raise ValueError(f"QSFM metric must be 'ssim' or 'psnr', got {metric!r}")
        if compensation not in COMPENSATIONS:
            from ..errors import UserError

            raise UserError(f"prune.criterion.options.compensation must be one of {', '.join(COMPENSATIONS)}, got {compensation!r}")
        self.compensation = compensation
        self.metric = metric
        self.name = name or f"qsfm-{metric}"
        self.window, self.sigma, self.max_db, self.chunk = window, sigma, max_psnr_db, chunk_elements
        self.groups: dict[str, GroupRedundancy] = {}
        self.moments: dict[str, InputMoments] = {}
        self.consumers: dict[str, GroupConsumers] = {}

    def similarity_to_unit(self, s: np.ndarray) -> np.ndarray:
        """Similarity in the unit used for scores: SSIM as is; PSNR (dB) → ``min(PSNR, max_db) / max_db``."""
        return s if self.metric == "ssim" else np.minimum(s, self.max_db) / self.max_db

    def score(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        """Collect similarities on ``ctx.batches()``, run the greedy elimination per group, return its scores."""
        if ctx.batches is None:
            raise ValueError(f"criterion '{self.name}' needs calibration batches")
        model, pruner = ctx.model, ctx.pruner
        self.consumers = find_consumers(pruner)
        sources: dict[tuple[str, str], list[tuple[str, np.ndarray]]] = {}
        for g in pruner.groups:
            cons = self.consumers[g.key].consumers
            if cons:
                for c in cons:
                    sources.setdefault((c.module, "input"), []).append((g.key, c.index))
            else:
                for name in feature_members(g, model):
                    idx = np.asarray(g.member_channel_index[name], dtype=np.int64)
                    sources.setdefault((name, "output"), []).append((g.key, idx))
        was = model.training
        model.eval()
        try:
            with _Collector(model, sources, self.metric, self.window, self.sigma, self.max_db, self.chunk) as col, torch.no_grad():
                for x, _ in ctx.batches():
                    col.next_batch()
                    model(placement.inputs_for(model, x))
        finally:
            model.train(was)
        if col.batch == 0:
            raise ValueError(f"criterion '{self.name}' got no calibration batches")
        self.moments = {name: site.moments for (name, kind), site in col.site_of.items() if kind == "input"}
        sites_by_group: dict[str, list[_Site]] = {}
        for sid, site in col.site_of.items():
            for key, _ in sources.get(sid, []):
                lst = sites_by_group.setdefault(key, [])
                if all(s is not site for s in lst):
                    lst.append(site)
        self.groups = {}
        out: dict[str, np.ndarray] = {}
        for g in pruner.groups:
            red = self._combine(g.key, g.size, sites_by_group.get(g.key, []))
            if red is None:
                continue
            self.groups[g.key] = red
            out[g.key] = elimination_scores(red.elimination, g.size)
        return out

    def _combine(self, key: str, size: int, sites: list[_Site]) -> GroupRedundancy | None:
        accs = [(s, s.sims[key]) for s in sites if key in s.sims and s.sims[key].weight > 0]
        if any(a.spatial for _, a in accs):
            accs = [(s, a) for s, a in accs if a.spatial]
        if not accs:
            return None
        total = np.zeros((size, size))
        count = np.zeros((size, size))
        e_total = np.zeros(size)
        e_count = np.zeros(size)
        for site, acc in accs:
            p = acc.present
            total[np.ix_(p, p)] += self.similarity_to_unit((acc.total / acc.weight).numpy())
            count[np.ix_(p, p)] += 1
            if site.moments.n > 0:
                e = site.moments.energy().cpu().numpy()[acc.channels]
                m = float(e.mean())
                e_total[p] += e / m if m > 0 else e
                e_count[p] += 1
        sim = np.where(count > 0, total / np.maximum(count, 1), -1.0)
        energy = e_total / np.maximum(e_count, 1)
        elim = greedy_pair_elimination(sim, energy)
        return GroupRedundancy(key, sim, energy, elim, redundancy(sim), [s.name for s, _ in accs])

    def removal_pairs(self) -> dict[str, list[tuple[int, int]]]:
        """Group key → ``(removed, twin)`` root-channel pairs in greedy removal order (after :meth:`score`)."""
        return {k: list(zip(g.elimination.order, g.elimination.twins, strict=True)) for k, g in self.groups.items()}

    def compensate(self, pruner: ChannelPruner, plan: dict[str, list[int]]) -> CompensationReport:
        """Fold the planned removals into their twins (:func:`ccpcsa.surgery.compensation.compensate`, the paper's), or with
        ``compensation="lstsq"`` into all kept channels by least squares
        (:func:`ccpcsa.surgery.compensation.compensate_least_squares`); call before the surgery, on the pruner that was scored."""
        if self.compensation == "lstsq":
            return compensate_least_squares(pruner, plan, self.moments, self.consumers)
        return compensate(pruner, plan, self.removal_pairs(), self.moments, self.consumers)


#: ``twin``: fold each removed channel into its twin (QSFM); ``lstsq``: into all kept channels by least squares.
COMPENSATIONS = ("twin", "lstsq")

#: the keys ``prune.criterion.options`` may set for QSFM
QSFM_OPTIONS = ("compensation", "window", "sigma", "max_psnr_db")


def qsfm_factory(metric: str, name: str) -> Callable[..., QSFMCriterion]:
    """A registry factory for QSFM with ``metric`` that accepts :data:`QSFM_OPTIONS` (UserError for any other key)."""
    def make(**options: object) -> QSFMCriterion:
        bad = sorted(set(options) - set(QSFM_OPTIONS))
        if bad:
            from ..errors import UserError

            raise UserError(f"unknown prune.criterion.options key(s) {', '.join(bad)} for {name}; known: {', '.join(QSFM_OPTIONS)}")
        return QSFMCriterion(metric, name, **options)  # type: ignore[arg-type]
    return make


register("qsfm", qsfm_factory("ssim", "qsfm"), options=True)
register("qsfm-ssim", qsfm_factory("ssim", "qsfm-ssim"), options=True)
register("qsfm-psnr", qsfm_factory("psnr", "qsfm-psnr"), options=True)
