"""What a choice of group widths costs: MACs (analytic) or latency on the target runtime (a table timed there).

:func:`layer_shapes` reads every Conv2d/Linear of a model off the pruner's dependency graph: its current
channels, which group sets its output channels, which groups feed its input channels (several for a
concat consumer), its kernel, stride, dilation and input/output resolution. A cost model then maps group
widths ``w`` (group key → kept channels) to a cost that is a sum over layers plus a constant:

- :class:`MacsCost`: ``k_h k_w · (c_in / groups) · c_out · H_out W_out`` per conv (depthwise: ``k_h k_w · c ·
  H_out W_out``), ``c_in · c_out`` per linear — the multiply-accumulates of convolutions and linears (the
  torch-pruning counter also counts BN/ReLU/add work, a few per cent; targets are checked with the real
  counter on a trial surgery, see :func:`ccpcsa.surgery.macs_target.prune_to_target`);
- :class:`LatencyCost`: ``overhead + Σ t(layer, c_in, c_out)`` with ``t`` a per-layer latency timed on the
  target runtime for the candidate widths (HALP: Shen et al., "Structural Pruning via Latency-Saliency
  Knapsack", NeurIPS 2022, §3.2: the latency of a layer as a lookup table of its input and output widths).

with ``c_out = w[out group]`` and ``c_in = C_in − Σ_parts n_part · (1 − w[g] / size[g])`` (a part is the ``n``
input channels a group ``g`` feeds; proportional for a split).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..models.attention import BAM
from ..placement import example_input
from .prune import Block, ChannelPruner


@dataclass(frozen=True)
class LayerShape:
    """One Conv2d/Linear as the cost models see it (channels are the current, unpruned-by-this-plan ones)."""

    name: str
    kind: str  # "conv" or "linear"
    c_in: int
    c_out: int
    out_key: str | None
    in_parts: tuple[tuple[str, int], ...]
    groups: int = 1
    depthwise: bool = False
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    in_hw: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    bias: bool = False

    def channels(self, widths: Mapping[str, int], sizes: Mapping[str, int]) -> tuple[int, int]:
        """``(c_in, c_out)`` of this layer when its groups have ``widths`` (their full widths are ``sizes``)."""
        c_out = widths.get(self.out_key, self.c_out) if self.out_key else self.c_out
        if self.depthwise:
            return c_out, c_out
        c_in = self.c_in - sum(n * (1 - widths.get(k, sizes[k]) / sizes[k]) for k, n in self.in_parts if sizes.get(k))
        return max(1, round(c_in)), c_out

    def weights(self, c_in: int, c_out: int) -> float:
        """Weights (without bias) at these channels: ``k_h k_w · (c_in / groups) · c_out`` (depthwise: ``k_h k_w · c``)."""
        if self.kind == "linear":
            return float(c_in * c_out)
        return float(self.kernel[0] * self.kernel[1] * (1 if self.depthwise else c_in / self.groups) * c_out)

    def macs(self, c_in: int, c_out: int) -> float:
        """Multiply-accumulates of one forward pass on one image at these channels: every weight once per output
        position."""
        return self.weights(c_in, c_out) * (1 if self.kind == "linear" else self.out_hw[0] * self.out_hw[1])

    @property
    def signature(self) -> tuple[object, ...]:
        """What, besides channels, determines this layer's latency: kind, kernel, stride, dilation, padding,
        input resolution, depthwise/grouped, bias."""
        return (self.kind, self.kernel, self.stride, self.dilation, self.padding, self.in_hw,
                "dw" if self.depthwise else self.groups, self.bias)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _padding(m: nn.Conv2d) -> tuple[int, int]:
    """Explicit padding of ``m``; ``"same"`` → ``dilation · (kernel − 1) // 2`` per side, ``"valid"`` → 0."""
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0, 0)
        k, d = _pair(m.kernel_size), _pair(m.dilation)
        return (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    return _pair(m.padding)


def layer_shapes(pruner: ChannelPruner) -> list[LayerShape]:
    """Every Conv2d/Linear of ``pruner.model`` with its groups (see the module docstring); BAM internals excluded."""
    model = pruner.model
    names = {m: n for n, m in model.named_modules()}
    hw: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor, _n: str = "") -> None:
        if out.dim() == 4 and inp[0].dim() == 4:
            hw[_n] = ((int(inp[0].shape[2]), int(inp[0].shape[3])), (int(out.shape[2]), int(out.shape[3])))

    handles = [m.register_forward_hook(lambda mod, i, o, _n=n: hook(mod, i, o, _n))
               for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input(model, pruner.input_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    out_key: dict[str, str] = {}
    in_parts: dict[str, dict[str, int]] = {}
    for key, group in pruner.tp_groups().items():
        for item in group:
            mod = item.dep.target.module
            name = names.get(mod) if isinstance(mod, nn.Module) else None
            if name is None or not isinstance(mod, (nn.Conv2d, nn.Linear)):
                continue
            if pruner.dg.is_out_channel_pruning_fn(item.dep.handler):
                out_key.setdefault(name, key)
            else:
                in_parts.setdefault(name, {})[key] = len(set(int(i) for i in item.idxs))
    bam_parts = {n for n, m in model.named_modules() if isinstance(m, BAM)}
    shapes = []
    for name, m in model.named_modules():
        if any(name.startswith(b + ".") for b in bam_parts):
            continue
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            (ih, iw), (oh, ow) = hw.get(name, ((1, 1), (1, 1)))
            shapes.append(LayerShape(name, "conv", m.in_channels, m.out_channels, out_key.get(name),
                                     tuple(sorted(in_parts.get(name, {}).items())), m.groups, depthwise,
                                     _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation), _padding(m),
                                     (ih, iw), (oh, ow), m.bias is not None))
        elif isinstance(m, nn.Linear):
            shapes.append(LayerShape(name, "linear", m.in_features, m.out_features, out_key.get(name),
                                     tuple(sorted(in_parts.get(name, {}).items())), bias=m.bias is not None))
    return shapes


class CostModel:
    """``cost(w) = constant + Σ_layers layer_cost(layer, c_in(w), c_out(w))`` over :func:`layer_shapes`."""

    name = "cost"
    unit = ""

    def __init__(self, pruner: ChannelPruner, constant: float = 0.0) -> None:
        self.layers = layer_shapes(pruner)
        self.sizes = pruner.widths()
        self.constant = constant
        self._touching: dict[str, list[int]] = {}
        for i, layer in enumerate(self.layers):
            for k in {layer.out_key, *(k for k, _ in layer.in_parts)} - {None}:
                self._touching.setdefault(str(k), []).append(i)

    def layer_cost(self, layer: LayerShape, c_in: int, c_out: int) -> float:
        """Cost of ``layer`` at these channels (subclasses)."""
        raise NotImplementedError

    def _layer(self, i: int, widths: Mapping[str, int]) -> float:
        layer = self.layers[i]
        return self.layer_cost(layer, *layer.channels(widths, self.sizes))

    def __call__(self, widths: Mapping[str, int] | None = None) -> float:
        """Cost at ``widths`` (None: the current widths)."""
        w = widths if widths is not None else self.sizes
        return self.constant + sum(self._layer(i, w) for i in range(len(self.layers)))

    def delta(self, widths: Mapping[str, int], key: str, new_width: int) -> float:
        """``cost(widths with key → new_width) − cost(widths)``: only the layers group ``key`` touches."""
        idx = self._touching.get(key, [])
        after = {**widths, key: new_width}
        return sum(self._layer(i, after) - self._layer(i, widths) for i in idx)

    def prefix_costs(self, order: Sequence[Block]) -> list[float]:
        """Cost after removing the first ``n`` blocks of ``order``, for ``n = 0..len(order)``."""
        widths = dict(self.sizes)
        cost = self(widths)
        out = [cost]
        for b in order:
            new = widths[b.key] - len(b.channels)
            cost += self.delta(widths, b.key, new)
            widths[b.key] = new
            out.append(cost)
        return out

    def describe(self) -> dict[str, object]:
        """JSON-ready description (for histories and reports)."""
        return {"model": self.name, "unit": self.unit, "layers": len(self.layers), "constant": self.constant}


class MacsCost(CostModel):
    """MACs of the convolutions and linears (see the module docstring)."""

    name = "macs"
    unit = "MACs"

    def layer_cost(self, layer: LayerShape, c_in: int, c_out: int) -> float:
        return layer.macs(c_in, c_out)


class ParamsCost(CostModel):
    """Weights of the convolutions and linears: ``k_h k_w · (c_in / groups) · c_out`` (+ ``c_out`` bias), ``c_in · c_out``."""

    name = "params"
    unit = "parameters"

    def layer_cost(self, layer: LayerShape, c_in: int, c_out: int) -> float:
        return layer.weights(c_in, c_out) + (c_out if layer.bias else 0)


class LatencyCost(CostModel):
    """Milliseconds per batch on the target runtime: ``constant + scale · Σ layer_ms(layer, c_in, c_out)``.

    ``layer_ms`` comes from a latency table timed on that runtime (``export.layer_latency``), each layer timed in a
    graph of its own. :meth:`calibrate` fits the model to the timed end-to-end latency of the current model."""

    name = "latency"
    unit = "ms"

    def __init__(self, pruner: ChannelPruner, layer_ms: Callable[[LayerShape, int, int], float], overhead_ms: float = 0.0) -> None:
        self.layer_ms = layer_ms
        self.scale = 1.0
        super().__init__(pruner, overhead_ms)

    def layer_cost(self, layer: LayerShape, c_in: int, c_out: int) -> float:
        return self.scale * float(self.layer_ms(layer, c_in, c_out))

    def calibrate(self, actual_ms: float) -> None:
        """Set the constant so the model's current cost equals ``actual_ms``: ``constant = actual − Σ layer_ms`` at
        the current widths, ``scale = 1`` (what the table does not explain is a fixed overhead)."""
        self.constant, self.scale = 0.0, 1.0
        self.constant = actual_ms - self()

    def proportional(self) -> LatencyCost:
        """This model when its overhead is ≥ 0; otherwise the same table scaled by ``actual / Σ layer_ms`` with no
        overhead (``constant = 0``), equal to it at the current widths. A negative overhead means the table explains
        more than the whole model's time — each isolated layer timing carries its own session overhead, which adds up on a deep
        model at batch 1 — and then predicts ≤ 0 ms for a model pruned to its floors (an absurd "floor" speedup); the
        scaled model keeps every prediction a positive fraction of the measurement."""
        if self.constant >= 0:
            return self
        actual = self()  # = constant + table, so table = actual − constant > actual
        out = copy.copy(self)
        out.constant, out.scale = 0.0, self.scale * actual / (actual - self.constant)
        return out

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "scale": self.scale}
