"""Accuracy with its sample size and standard error, as every report number carries it.

For ``n`` test images of which a fraction ``p`` is classified correctly, the standard error of the accuracy is
``SE = sqrt(p (1 − p) / n)``, reported in percentage points (``100 · SE``): a binomial proportion's sampling
error, i.e. how much the number would move on another test set of the same size from the same distribution.
"""

from __future__ import annotations

import math
from typing import Any


def standard_error_pp(accuracy_pct: float, n: int) -> float | None:
    """``100 · sqrt(p (1 − p) / n)`` for ``p = accuracy_pct / 100`` (percentage points); ``None`` when ``n < 1``
    or the accuracy is not a number."""
    if n < 1 or accuracy_pct is None or accuracy_pct != accuracy_pct:
        return None
    p = min(1.0, max(0.0, accuracy_pct / 100.0))
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


def accuracy_record(accuracy_pct: float, n: int, prefix: str = "accuracy") -> dict[str, Any]:
    """``{"<prefix>": pct, "<prefix>_n": n, "<prefix>_se": SE in pp}`` — the keys report rows carry."""
    return {prefix: float(accuracy_pct), f"{prefix}_n": int(n), f"{prefix}_se": standard_error_pp(accuracy_pct, n)}


def format_accuracy(accuracy_pct: float | None, se_pp: float | None) -> str:
    """``"87.48 ± 0.33"`` (``"—"`` without an accuracy; no ``±`` part without a standard error)."""
    if accuracy_pct is None:
        return "—"
    return f"{accuracy_pct:.2f}" + (f" ± {se_pp:.2f}" if se_pp is not None else "")
