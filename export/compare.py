"""Parity of two runners on a data split: logit differences, top-1 agreement, accuracies.

For logits ``A, B`` of shape ``(N, K)`` and labels ``y``:

* ``max_abs_diff = max_ij |A_ij - B_ij|``, ``mean_abs_diff = mean_ij |A_ij - B_ij|``;
* ``top1_agreement_pct = 100 · mean_i [argmax A_i == argmax B_i]``;
* ``logit_scale = max_ij |A_ij|`` (the reference's scale: ``max_abs_diff / logit_scale`` is the relative difference);
* ``accuracy_{a,b}_pct = 100 · mean_i [argmax X_i == y_i]`` (``None`` without labels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ccpcsa.errors import UserError

from .runtime import Runner


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare_runners` / :func:`compare_logits` (percentages in 0..100)."""

    name_a: str
    name_b: str
    n: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement_pct: float
    accuracy_a_pct: float | None
    accuracy_b_pct: float | None
    logit_scale: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def compare_logits(
    logits_a: np.ndarray, logits_b: np.ndarray, y: np.ndarray | None = None, *, name_a: str = "a", name_b: str = "b"
) -> Comparison:
    """Compare two ``(N, K)`` logit arrays (and accuracies against ``y`` if given); see module doc."""
    a = np.asarray(logits_a, dtype=np.float64)
    b = np.asarray(logits_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or len(a) == 0:
        raise UserError(f"compare: logits must both be (N, K) with N >= 1; got {a.shape} and {b.shape}")
    pred_a, pred_b = a.argmax(1), b.argmax(1)
    diff = np.abs(a - b)
    acc_a = acc_b = None
    if y is not None:
        labels = np.asarray(y).reshape(-1)
        if len(labels) != len(a):
            raise UserError(f"compare: {len(labels)} labels for {len(a)} samples")
        acc_a = float(100.0 * np.mean(pred_a == labels))
        acc_b = float(100.0 * np.mean(pred_b == labels))
    return Comparison(
        name_a=name_a,
        name_b=name_b,
        n=len(a),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        top1_agreement_pct=float(100.0 * np.mean(pred_a == pred_b)),
        accuracy_a_pct=acc_a,
        accuracy_b_pct=acc_b,
        logit_scale=float(np.abs(a).max()),
    )


def run_batched(runner: Runner, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``runner`` over ``x`` in batches of ``batch_size`` (capped at the runner's ``max_batch``)."""
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if runner.info.max_batch is not None:
        batch_size = min(batch_size, runner.info.max_batch)
    if len(x) == 0:
        raise UserError("compare: the data split is empty")
    return np.concatenate([runner.run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def compare_runners(
    a: Runner, b: Runner, x: np.ndarray, y: np.ndarray | None = None, *, batch_size: int = 256
) -> Comparison:
    """Run ``a`` and ``b`` over the normalized split ``x`` (``(N, C, H, W)``) in batches and compare.

    ``y`` (``(N,)`` integer labels) adds each runner's accuracy. Names come from the runners' info
    labels (e.g. ``onnx/int8-qdq@cpu``).
    """
    if y is not None and len(y) != len(x):
        raise UserError(f"compare: x has {len(x)} samples but y has {len(y)}")
    la = run_batched(a, x, batch_size)
    lb = run_batched(b, x, batch_size)
    return compare_logits(la, lb, y, name_a=a.info.label, name_b=b.info.label)
