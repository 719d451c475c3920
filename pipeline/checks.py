"""Gates: each check only compares numbers and says whether a threshold holds.

Accuracies and agreements are in percent; drops in percentage points; diffs in logits; latency in ms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """One gate: ``passed`` is ``value <op> threshold``."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    op: str = "<="

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        v = "n/a" if self.value is None else f"{self.value:.4g}"
        return f"{self.name}: {v} {self.op} {self.threshold} → {'pass' if self.passed else 'FAIL'}"


def at_most(name: str, value: float, threshold: float) -> Check:
    """Pass when ``value ≤ threshold``."""
    return Check(name, bool(value <= threshold), float(value), float(threshold), "<=")


def at_least(name: str, value: float, threshold: float) -> Check:
    """Pass when ``value ≥ threshold``."""
    return Check(name, bool(value >= threshold), float(value), float(threshold), ">=")


def accuracy_drop(base_accuracy: float, accuracy: float, max_drop: float) -> Check:
    """``base − accuracy ≤ max_drop`` (percentage points)."""
    return at_most("accuracy_drop_pp", base_accuracy - accuracy, max_drop)


def parity(max_abs_diff: float | None, agreement: float, *, fp32: bool, max_diff: float, min_agree_fp32: float,
           min_agree_lowp: float, logit_scale: float = 1.0) -> list[Check]:
    """FP32: max |Δlogit| ≤ max_diff · max(1, logit_scale) — the tolerance is relative to the reference's largest
    |logit| (float32 keeps ~7 significant digits: a model whose logits reach 1e5 cannot agree to 1e-3 absolutely),
    never tighter than ``max_diff`` absolute — and top-1 agreement ≥ min_agree_fp32; FP16/INT8: agreement ≥
    min_agree_lowp (the caller passes ``checks.min_agreement_lowp`` for FP16 and ``checks.min_agreement_int8`` for INT8)."""
    if fp32:
        assert max_abs_diff is not None
        scale = max(1.0, float(logit_scale)) if logit_scale == logit_scale else 1.0  # NaN (no logits): absolute
        return [at_most("max_abs_diff", max_abs_diff, max_diff * scale), at_least("top1_agreement", agreement, min_agree_fp32)]
    return [at_least("top1_agreement", agreement, min_agree_lowp)]


def flops_target(reduction: float, target: float) -> Check:
    """Achieved FLOPs reduction ≥ target (fractions); a hair of tolerance for rounding."""
    return at_least("flops_reduction", reduction, target - 5e-4)


def speedup(ratio: float, name: str = "pruned_speedup") -> Check:
    """The pruned model must be really faster: the timed speedup (unpruned / pruned latency) > 1."""
    return Check(name, bool(ratio > 1.0), ratio, 1.0, ">")
