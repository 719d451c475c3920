"""Weight compensation for one-shot pruning of redundant channels (QSFM, arXiv 2105.06052).

When channel ``i`` of a group is removed because its map is (nearly) a copy of channel ``j``'s, the
information it carried can be handed to ``j``. Let ``x`` be the tensor that a *consumer* — a module
that mixes channels linearly: a ``groups=1`` Conv2d or a Linear — receives, and fit on calibration
data the least-squares affine map (computed from running moments, see :class:`InputMoments`)::

    x_i ≈ α·x_j + β,   α = cov(x_i, x_j) / var(x_j),   β = E[x_i] − α·E[x_j]   (α = 0 if var(x_j) ≈ 0)

The consumer computes ``y = Σ_c W[:, c] ⋆ x_c + b``. Substituting ``x_i`` and dropping input ``i``::

    W[:, j] += α · W[:, i]
    b       += β · Σ_{kh,kw} W[:, i, kh, kw]        (conv)     b += β · W[:, i]   (linear)

The fit is taken on the consumer's *input* (after any ReLU/BN/depthwise stage between the pruned
filter and the consumer), so the substitution is exact whenever ``x_i = α x_j + β`` holds exactly on
the consumed tensor. Each consumer gets its own fit (the blocks of a residual stream see different
tensors). One caveat: a k×k conv with zero padding sees β only at in-bounds input positions, while the
folded bias adds ``β·ΣW[:, i]`` at every output position, so the fold is exact in the interior and
approximate within ``k//2`` pixels of the border (recorded as ``border_approximate``); it is exact for
1×1 or unpadded convs, linears, and whenever β = 0 (exact duplicates). Column ``i`` is then zeroed, so
the compensated model already computes what the pruned one will.

Where the bias goes: the consumer's own bias if it has one; otherwise, if the consumer's only output
feeds a BatchNorm, into that BN's running mean (``BN(z + δ)`` with statistics ``(μ, σ²)`` equals
``BN(z)`` with ``μ' = μ − δ`` in eval mode); otherwise a bias parameter is added to the consumer
(recorded as ``bias_added``; a checkpoint of the zoo architecture would then not reload it).

Removals inside one group are applied in the criterion's removal order, so when ``j`` is itself
removed later (in favour of ``k``) the column it has absorbed moves on to ``k``: chains end on a
kept channel. Compensation is skipped, and the reason recorded, for a group with a BAM (its gates mix
channels non-linearly), with a consumer that is neither a ``groups=1`` conv nor a Linear with a
one-to-one channel mapping (grouped conv, flattened spatial input, other modules), or when the
criterion gave no twin. Depthwise convs in a group are *channel-wise members*: channel ``i`` of a
depthwise conv only sees channel ``i``, so no compensation is possible there; it is removed along with
the channel and compensation happens at the cross-channel consumers downstream (the projection
conv), whose input it produces. They are listed in the report as ``channelwise``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.attention import BAM
from .prune import ChannelPruner


@dataclass
class Consumer:
    """A module that linearly mixes the group's channels: ``index[r]`` is its input channel for root channel ``r`` (−1: absent)."""

    module: str
    kind: str  # "conv" or "linear"
    index: np.ndarray


@dataclass
class GroupConsumers:
    """Where a group's channels are consumed. ``blockers``: (module, reason) that make compensation impossible."""

    key: str
    consumers: list[Consumer] = field(default_factory=list)
    channelwise: list[str] = field(default_factory=list)  # depthwise convs carried inside the group
    blockers: list[tuple[str, str]] = field(default_factory=list)


_CHANNELWISE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def find_consumers(pruner: ChannelPruner) -> dict[str, GroupConsumers]:
    """For every group of ``pruner``: its cross-channel consumers (DepGraph items whose handler prunes
    *input* channels of a ``groups=1`` Conv2d or a Linear), its depthwise members, and anything that blocks
    compensation. Index maps come from the DepGraph items (``root_idxs`` → ``idxs``)."""
    names = {m: n for n, m in pruner.model.named_modules()}
    out: dict[str, GroupConsumers] = {}
    for key, group in pruner.tp_groups().items():
        size = pruner.group(key).size
        info = GroupConsumers(key)
        seen: set[str] = set()
        for item in group:
            mod = item.dep.target.module
            if not isinstance(mod, nn.Module) or mod not in names:
                continue  # torch-pruning's internal ops (add, reshape, concat …)
            name = names[mod]
            if isinstance(mod, BAM):
                if name not in seen:
                    info.blockers.append((name, "BAM in group: its gates mix channels non-linearly"))
                    seen.add(name)
                continue
            if not pruner.dg.is_in_channel_pruning_fn(item.dep.handler) or isinstance(mod, _CHANNELWISE):
                continue
            if name in seen:
                continue
            seen.add(name)
            if isinstance(mod, nn.Conv2d) and mod.groups > 1:
                if mod.groups == mod.in_channels == mod.out_channels:
                    info.channelwise.append(name)
                else:
                    info.blockers.append((name, f"grouped conv (groups={mod.groups}) consumer"))
                continue
            root_idxs = np.asarray(item.root_idxs, dtype=np.int64)
            idxs = np.asarray(item.idxs, dtype=np.int64)
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                if len(idxs) != len(root_idxs) or len(np.unique(root_idxs)) != len(root_idxs):
                    info.blockers.append((name, "consumes a flattened spatial map (several inputs per channel)"))
                    continue
                index = np.full(size, -1, dtype=np.int64)
                index[root_idxs] = idxs
                info.consumers.append(Consumer(name, "conv" if isinstance(mod, nn.Conv2d) else "linear", index))
            else:
                info.blockers.append((name, f"unsupported consumer type {type(mod).__name__}"))
        out[key] = info
    return out


class InputMoments:
    """Running moments of a tensor's channels (every image and position is one sample), shifted for accuracy.

    With a per-channel shift ``c`` (the first batch's channel means) we accumulate ``n``, ``Σ(x−c)`` and
    ``Σ(x−c)(x−c)ᵀ`` (float32 products, float64 sums); then ``mean = c + Σ(x−c)/n`` and
    ``cov = Σ(x−c)(x−c)ᵀ/n − m mᵀ`` with ``m = Σ(x−c)/n`` (shift-invariant, no catastrophic cancellation).
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``."""
        x = x.detach().float()
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, samples)
        if self.shift is None:
            self.shift = flat.mean(1, keepdim=True)
        d = flat - self.shift
        s1, s2 = d.sum(1).double(), (d @ d.T).double()
        self.n += flat.shape[1]
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2

    def mean(self) -> torch.Tensor:
        """Per-channel mean (float64)."""
        assert self.shift is not None and self.s1 is not None and self.n > 0
        return self.shift[:, 0].double() + self.s1 / self.n

    def covariance(self) -> torch.Tensor:
        """C×C covariance (float64)."""
        assert self.s1 is not None and self.s2 is not None and self.n > 0
        m = self.s1 / self.n
        return self.s2 / self.n - torch.outer(m, m)

    def energy(self) -> torch.Tensor:
        """Mean activation energy ``E[x²] = var + mean²`` per channel (float64)."""
        return self.covariance().diagonal().clamp_min(0) + self.mean() ** 2

    def to(self, device: str | torch.device) -> InputMoments:
        """A copy whose running sums live on ``device`` (the pair fits read them element by element: on the CPU
        that costs no device synchronization per pair)."""
        out = InputMoments()
        out.n = self.n
        out.shift, out.s1, out.s2 = (t.to(device) if t is not None else None for t in (self.shift, self.s1, self.s2))
        return out


def affine_fit(m: InputMoments, i: int, j: int, eps: float = 1e-12) -> tuple[float, float, float]:
    """Least-squares ``x_i ≈ α x_j + β`` from running moments: ``α = cov_ij / var_j``, ``β = μ_i − α μ_j``.
    Returns ``(α, β, r²)`` with ``r² = cov_ij² / (var_i var_j)`` (1: exact; 1 also when x_i is constant)."""
    mu, cv = m.mean(), m.covariance()
    var_i, var_j, cov = float(cv[i, i]), float(cv[j, j]), float(cv[i, j])
    scale = 1.0 + float(mu[i] ** 2 + mu[j] ** 2)
    if var_j <= eps * scale:
        alpha = 0.0
        r2 = 1.0 if var_i <= eps * scale else 0.0
    else:
        alpha = cov / var_j
        r2 = 1.0 if var_i <= eps * scale else min(1.0, cov * cov / (var_i * var_j))
    beta = float(mu[i]) - alpha * float(mu[j])
    return alpha, beta, r2


@dataclass
class ConsumerCompensation:
    """What was done at one consumer: pairs folded, mean r² of the fits, where the bias went."""

    module: str
    pairs: int = 0
    mean_r2: float = float("nan")
    bias_target: str = ""  # "bias", "bn:<name>", "bias_added" or "" (β = 0 everywhere)
    border_approximate: bool = False  # padded k×k conv with β ≠ 0 (exact only in the interior)


@dataclass
class GroupCompensation:
    """Per group: ``status`` is ``compensated`` or ``skipped`` (``reason`` says why)."""

    key: str
    status: str
    reason: str = ""
    removed: int = 0
    consumers: list[ConsumerCompensation] = field(default_factory=list)
    channelwise: list[str] = field(default_factory=list)


@dataclass
class CompensationReport:
    """Compensation outcome for every group that lost channels."""

    groups: dict[str, GroupCompensation] = field(default_factory=dict)

    @property
    def compensated(self) -> list[str]:
        """Keys of the groups whose removals were folded into their twins."""
        return [k for k, g in self.groups.items() if g.status == "compensated"]

    @property
    def skipped(self) -> dict[str, str]:
        """Group key → reason, for the pruned groups left uncompensated."""
        return {k: g.reason for k, g in self.groups.items() if g.status == "skipped"}

    def summary(self) -> dict[str, Any]:
        """JSON-ready: counts plus per-group status, reason and consumers."""
        return {"compensated": len(self.compensated), "skipped": len(self.skipped),
                "groups": {k: {"status": g.status, "reason": g.reason, "removed": g.removed, "channelwise": g.channelwise,
                               "consumers": [vars(c) for c in g.consumers]} for k, g in self.groups.items()}}


def skipped_report(plan: dict[str, list[int]], reason: str) -> CompensationReport:
    """A report that marks every pruned group of ``plan`` as skipped for ``reason``."""
    return CompensationReport({k: GroupCompensation(k, "skipped", reason, len(v)) for k, v in plan.items() if v})


def _following_bn(pruner: ChannelPruner, module: nn.Module) -> nn.BatchNorm2d | None:
    node = pruner.dg.module2node.get(module)
    if node is None or len(node.outputs) != 1:
        return None
    nxt = node.outputs[0].module
    return nxt if isinstance(nxt, nn.BatchNorm2d) and len(node.outputs[0].inputs) == 1 else None


@torch.no_grad()
def _fold(pruner: ChannelPruner, mod: nn.Conv2d | nn.Linear, pairs: Sequence[tuple[int, int]], m: InputMoments,
          rec: ConsumerCompensation) -> None:
    w = mod.weight
    delta = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    r2s = []
    any_beta = False
    for ci, cj in pairs:
        alpha, beta, r2 = affine_fit(m, ci, cj)
        r2s.append(r2)
        col_i = w[:, ci].double()
        w[:, cj] += (alpha * col_i).to(w.dtype)
        if beta != 0.0:
            any_beta = True
            delta += beta * (col_i.sum(dim=tuple(range(1, col_i.dim()))) if col_i.dim() > 1 else col_i)
        w[:, ci] = 0  # removed by the surgery anyway; zeroed so the model already computes the pruned function
    rec.pairs += len(pairs)
    rec.mean_r2 = float(np.mean(r2s)) if r2s else float("nan")
    if any_beta:
        _add_bias(pruner, mod, delta, rec)


@torch.no_grad()
def _add_bias(pruner: ChannelPruner, mod: nn.Conv2d | nn.Linear, delta: torch.Tensor, rec: ConsumerCompensation) -> None:
    """Add ``delta`` (per output channel) to the consumer's output: its bias, else the following BN's running mean,
    else a new bias parameter (recorded in ``rec``)."""
    w = mod.weight
    if isinstance(mod, nn.Conv2d) and max(mod.kernel_size) > 1 and any(p > 0 for p in _padding(mod)):
        rec.border_approximate = True
    if mod.bias is not None:
        mod.bias += delta.to(mod.bias.dtype)
        rec.bias_target = "bias"
        return
    bn = _following_bn(pruner, mod) if isinstance(mod, nn.Conv2d) else None
    if bn is not None and bn.running_mean is not None:
        bn.running_mean -= delta.to(bn.running_mean.dtype)
        rec.bias_target = "bn:" + {v: k for k, v in pruner.model.named_modules()}[bn]
        return
    mod.bias = nn.Parameter(delta.to(w.dtype))
    rec.bias_target = "bias_added"


def _padding(mod: nn.Conv2d) -> tuple[int, ...]:
    if isinstance(mod.padding, str):
        return (1,) if mod.padding == "same" else (0,)
    return tuple(int(p) for p in mod.padding)


@torch.no_grad()
def _fold_least_squares(pruner: ChannelPruner, mod: nn.Conv2d | nn.Linear, removed: Sequence[int], m: InputMoments,
                        rec: ConsumerCompensation, ridge: float = 1e-3) -> None:
    """Fold the removed input channels S of ``mod`` into the kept ones K by the least-squares linear prediction of
    x_S from x_K on calibration/training data, from the running moments (see :func:`compensate_least_squares`)."""
    w = mod.weight
    c_in = w.shape[1]
    S = sorted(set(int(i) for i in removed))
    K = [c for c in range(c_in) if c not in set(S)]
    if not S or not K:
        return
    mu, cov = m.mean().cpu(), m.covariance().cpu()
    s_idx, k_idx = torch.tensor(S), torch.tensor(K)
    ckk = cov[k_idx][:, k_idx]
    reg = ridge * float(ckk.diagonal().mean().clamp_min(1e-12))
    ckk = ckk + reg * torch.eye(len(K), dtype=ckk.dtype)
    csk = cov[s_idx][:, k_idx]
    A = torch.linalg.solve(ckk, csk.T).T  # |S| × |K|: x_S ≈ A x_K + β
    beta = mu[s_idx] - A @ mu[k_idx]
    var_s = cov[s_idx, s_idx].clamp_min(1e-30)
    resid = (var_s - (A * csk).sum(1)).clamp_min(0)
    ws = w[:, s_idx].double().cpu()  # (out, |S|, …)
    wk_add = torch.einsum("os...,sk->ok...", ws, A)
    w[:, k_idx] += wk_add.to(w.device, w.dtype)
    delta = torch.einsum("os...,s->o", ws, beta) if ws.dim() > 2 else ws @ beta
    w[:, s_idx] = 0  # removed by the surgery anyway; zeroed so the model already computes the pruned function
    rec.pairs += len(S)
    rec.mean_r2 = float((1 - resid / var_s).clamp(0, 1).mean())
    if bool((beta != 0).any()):
        _add_bias(pruner, mod, delta.to(w.device), rec)


def _skip_reason(info: GroupConsumers, moments: dict[str, InputMoments]) -> str:
    """Why a group's removals cannot be folded (empty when they can): a blocking consumer, none at all, no statistics."""
    missing = [c.module for c in info.consumers if c.module not in moments or moments[c.module].n == 0]
    return ("; ".join(f"{n}: {w}" for n, w in info.blockers)
            or ("no cross-channel consumer" if not info.consumers else "")
            or (f"no input statistics for {', '.join(missing)}" if missing else ""))


def _group_records(plan: dict[str, list[int]], consumers: dict[str, GroupConsumers], report: CompensationReport,
                   ) -> Iterator[tuple[str, list[int], GroupConsumers, GroupCompensation]]:
    """Per group with removals in ``plan``: its consumers and a new ``skipped`` record, already registered in ``report``
    (the caller sets the reason or marks it compensated)."""
    for key, removed in plan.items():
        if not removed:
            continue
        info = consumers.get(key, GroupConsumers(key))
        rec = GroupCompensation(key, "skipped", removed=len(removed), channelwise=list(info.channelwise))
        report.groups[key] = rec
        yield key, removed, info, rec


def compensate_least_squares(pruner: ChannelPruner, plan: dict[str, list[int]], moments: dict[str, InputMoments],
                             consumers: dict[str, GroupConsumers] | None = None) -> CompensationReport:
    """Fold every planned removal of a group into the channels it keeps, at every cross-channel consumer: with S the
    removed and K the kept input channels of the consumer and (μ, Σ) the moments of its input,

        x_S ≈ A x_K + β,   A = Σ_SK Σ_KK⁻¹ (ridge-regularized),   β = μ_S − A μ_K
        W[:, K] += W[:, S] · A     b += Σ_{kh,kw} W[:, S] · β     W[:, S] = 0

    — the least-squares reconstruction of the consumer's input from the channels that stay (the linear-regression
    view of channel correlation: what the kept channels can say about the removed ones, they now say; He, Zhang, Sun,
    "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017, fit the same least squares on sampled
    outputs). The pairwise QSFM fold (:func:`compensate`) is its one-twin special case. Same skips, bias placement and
    border caveat as :func:`compensate`; call it *before* the surgery."""
    consumers = consumers if consumers is not None else find_consumers(pruner)
    mods = dict(pruner.model.named_modules())
    report = CompensationReport()
    removed_at: dict[str, set[int]] = {}  # consumer → its input channels the whole plan removes (several groups: concat)
    groups_at: dict[str, list[GroupCompensation]] = {}
    for _, removed, info, rec in _group_records(plan, consumers, report):
        rec.reason = _skip_reason(info, moments)
        if rec.reason:
            continue
        rec.status = "compensated"
        for c in info.consumers:
            removed_at.setdefault(c.module, set()).update(int(c.index[r]) for r in removed if c.index[r] >= 0)
            groups_at.setdefault(c.module, []).append(rec)
    for name, local in removed_at.items():  # one fold per consumer, so the kept set K excludes every removed channel
        crec = ConsumerCompensation(name)
        mod = mods[name]
        assert isinstance(mod, (nn.Conv2d, nn.Linear))
        _fold_least_squares(pruner, mod, sorted(local), moments[name], crec)
        for rec in groups_at[name]:
            rec.consumers.append(crec)
    return report


def compensate(pruner: ChannelPruner, plan: dict[str, list[int]], pairs: dict[str, list[tuple[int, int]]],
               moments: dict[str, InputMoments], consumers: dict[str, GroupConsumers] | None = None) -> CompensationReport:
    """Fold every planned removal into its twin at all consumers (see module docstring for the math).

    ``plan``: group key → root channels to remove (as given to ``ChannelPruner.apply``; call this *before*
    the surgery). ``pairs``: group key → ``(removed, twin)`` root-channel pairs in removal order (QSFM's
    greedy order); only pairs whose removed channel is in the plan are applied, in that order.
    ``moments``: consumer module name → running moments of its input (raw activations).
    Modifies the consumers' weights (and biases / following BN running means) in place.
    """
    consumers = consumers if consumers is not None else find_consumers(pruner)
    mods = dict(pruner.model.named_modules())
    report = CompensationReport()
    for key, removed, info, rec in _group_records(plan, consumers, report):
        chosen = set(int(r) for r in removed)
        ordered = [(r, t) for r, t in pairs.get(key, []) if r in chosen]
        twins = "" if len(ordered) == len(chosen) else (
            "criterion gave no twin for some removed channels" if ordered else "criterion gave no twins")
        rec.reason = twins or _skip_reason(info, moments)
        if rec.reason:
            continue
        for c in info.consumers:
            local = [(int(c.index[r]), int(c.index[t])) for r, t in ordered if c.index[r] >= 0 and c.index[t] >= 0]
            crec = ConsumerCompensation(c.module)
            mod = mods[c.module]
            assert isinstance(mod, (nn.Conv2d, nn.Linear))
            _fold(pruner, mod, local, moments[c.module].to("cpu"), crec)  # weights stay where the model is
            rec.consumers.append(crec)
        rec.status = "compensated"
    return report
