"""BAM — Bottleneck Attention Module (Park, Woo, Lee, Kweon, BMVC 2018), and where to attach it.

Channel attention ``Mc(F) = BN(MLP(AvgPool(F)))`` with the MLP C→C/r→C (BatchNorm1d + ReLU inside);
spatial attention ``Ms(F)``: 1×1 conv C→C/r, two 3×3 convs with dilation d, 1×1 conv to one map
(BN + ReLU after each hidden conv). ``M(F) = σ(Mc(F) + Ms(F))`` broadcast to C×H×W, and
``F' = F + F ⊗ M(F)`` (BAM paper, Eq. 1–4). Defaults r = 16, d = 4 (paper). The hidden width is
``max(C // r, 4)`` so narrow CIFAR layers keep a usable bottleneck (documented deviation).

:func:`attach_bam` places one BAM at every *bottleneck*: after the last module at each spatial
resolution, right before the resolution drops (not after the last stage, which feeds global
pooling). The points are found by tracing one forward pass, so the rule is the same for zoo and
bring-your-own models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..placement import example_input, module_device, module_dtype


class ChannelGate(nn.Module):
    """``Mc``: global average pool → Linear(C, h) → BN → ReLU → Linear(h, C); output (N, C, 1, 1) logits."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean(dim=(2, 3))
        z = self.fc2(self.relu(self.bn(self.fc1(z))))
        return z[:, :, None, None]


class SpatialGate(nn.Module):
    """``Ms``: 1×1 reduce → two dilated 3×3 convs → 1×1 to one map; output (N, 1, H, W) logits."""

    def __init__(self, channels: int, hidden: int, dilation: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.dilated = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        )
        self.final = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.dilated(self.reduce(x)))


class BAM(nn.Module):
    """``F' = F + F ⊗ σ(Mc(F) + Ms(F))``. While ``record`` is set, ``last_channel_attention`` keeps σ(Mc) and
    ``last_attention`` the mean over positions of σ(Mc + Ms) of the last call (N, C; no grad)."""

    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.channels = channels
        self.channel_gate = ChannelGate(channels, hidden)
        self.spatial_gate = SpatialGate(channels, hidden, dilation)
        self.last_channel_attention: torch.Tensor | None = None
        self.last_attention: torch.Tensor | None = None
        self.record = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mc = self.channel_gate(x)
        if self.record:
            self.last_channel_attention = torch.sigmoid(mc.detach()).flatten(1)
        att = torch.sigmoid(mc + self.spatial_gate(x))
        if self.record:  # σ(Mc + Ms) averaged over positions: (N, C)
            self.last_attention = att.detach().mean(dim=(2, 3))
        return x + x * att


class WithAttention(nn.Module):
    """``bam(body(x))``: a module followed by its BAM; :func:`detach_bam` unwraps it."""

    def __init__(self, body: nn.Module, bam: BAM) -> None:
        super().__init__()
        self.body = body
        self.bam = bam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bam(self.body(x))


@dataclass(frozen=True)
class _Unit:
    parent: nn.Module
    attr: str
    name: str
    out_res: int
    out_channels: int


def _units(model: nn.Module, input_size: int) -> list[_Unit]:
    """Modules in execution order at the finest level that still spans resolution changes."""
    records: dict[nn.Module, tuple[int, int, int, int]] = {}
    order: list[nn.Module] = []
    handles = []

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4 and inp and isinstance(inp[0], torch.Tensor) and inp[0].dim() == 4:
            records[mod] = (inp[0].shape[-1], out.shape[-1], out.shape[1], len(records))
    def pre(mod: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        order.append(mod)

    for m in model.modules():
        if m is not model:
            handles.append(m.register_forward_hook(hook))
            handles.append(m.register_forward_pre_hook(pre))
    was = model.training
    model.eval()
    with torch.no_grad():
        model(example_input(model, input_size))
    model.train(was)
    for h in handles:
        h.remove()
    position = {m: i for i, m in reversed(list(enumerate(order)))}

    def expand(parent: nn.Module, prefix: str) -> list[_Unit]:
        kids = [(n, c) for n, c in parent.named_children() if c in records]
        kids.sort(key=lambda nc: position.get(nc[1], 0))
        out: list[_Unit] = []
        for n, c in kids:
            in_res, out_res, ch, _ = records[c]
            name = f"{prefix}{n}"
            if isinstance(c, nn.Sequential) and in_res != out_res and len(list(c.children())) > 1:
                out += expand(c, name + ".")
            else:
                out.append(_Unit(parent, n, name, out_res, ch))
        return out

    return expand(model, "")


def bottleneck_points(model: nn.Module, input_size: int = 32) -> list[tuple[str, int, int]]:
    """``(module name, channels, resolution)`` of every unit after which a BAM goes (see module docstring)."""
    units = _units(model, input_size)
    points = []
    for a, b in zip(units, units[1:], strict=False):
        if b.out_res < a.out_res and b.out_res > 1:
            points.append((a.name, a.out_channels, a.out_res))
    return points


def attach_bam(model: nn.Module, input_size: int = 32, reduction: int = 16, dilation: int = 4) -> list[str]:
    """Insert a BAM after every bottleneck of ``model`` in place; return the wrapped module names.

    Raises ``ValueError`` if the model has no resolution change (nothing to attach to).
    """
    if reduction < 1 or dilation < 1:
        raise ValueError(f"BAM reduction and dilation must be ≥ 1, got {reduction}, {dilation}")
    units = {u.name: u for u in _units(model, input_size)}
    names = []
    for name, ch, _res in bottleneck_points(model, input_size):
        u = units[name]
        body = getattr(u.parent, u.attr)
        bam = BAM(ch, reduction, dilation).to(module_device(body), module_dtype(body))
        setattr(u.parent, u.attr, WithAttention(body, bam))
        names.append(name)
    if not names:
        raise ValueError("attach_bam: the model never reduces its spatial resolution, so it has no bottleneck for BAM")
    return names


def detach_bam(model: nn.Module) -> int:
    """Replace every :class:`WithAttention` by its body (removes BAM); return how many were removed."""
    count = 0
    for parent in list(model.modules()):
        for n, c in list(parent.named_children()):
            if isinstance(c, WithAttention):
                setattr(parent, n, c.body)
                count += 1
    return count


def bam_modules(model: nn.Module) -> dict[str, BAM]:
    """Name → BAM module for every BAM in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, BAM)}
