"""The criteria by name: :data:`CRITERIA`, :func:`register` for plug-ins, :func:`get_criterion`, :func:`list_criteria`.

The built-in criteria are listed here; QSFM registers itself (:mod:`ccpcsa.criteria.qsfm`, imported by the package).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UserError, unknown
from .base import Criterion
from .correlation import attention, ccpcsa, corr
from .magnitude import RandomCriterion, TaylorCriterion, bn, l1

CRITERIA: dict[str, Callable[..., Criterion]] = {
    "ccpcsa": ccpcsa,
    "corr": corr,
    "attention": attention,
    "l1": l1,
    "bn": bn,
    "taylor": TaylorCriterion,
    "random": RandomCriterion,
}
#: Criteria whose factory takes options (``prune.criterion.options``).
WITH_OPTIONS = {"ccpcsa", "corr", "attention"}


def register(name: str, factory: Callable[..., Criterion], options: bool = False) -> None:
    """Add a criterion under ``name`` (plug-ins: ``register("mine", MyCriterion)``); ``options``: its factory takes
    keyword options."""
    CRITERIA[name] = factory
    if options:
        WITH_OPTIONS.add(name)


def list_criteria() -> list[str]:
    """Sorted registered criterion names."""
    return sorted(CRITERIA)


def get_criterion(name: str, **options: Any) -> Criterion:
    """Instantiate the criterion registered as ``name`` with ``options``; UserError listing the known names (or
    naming the criterion that takes no options) otherwise."""
    if name not in CRITERIA:
        raise unknown("criterion", name, CRITERIA)
    if options and name not in WITH_OPTIONS:
        raise UserError(f"criterion '{name}' takes no prune.criterion.options (got {', '.join(sorted(options))}); "
                        f"criteria with options: {', '.join(sorted(WITH_OPTIONS))}")
    return CRITERIA[name](**options)
