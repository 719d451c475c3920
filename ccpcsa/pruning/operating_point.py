"""Prune settings that depend on the channel block the target CPU runs best (``prune.by_alignment``).

A model's operating point depends on the widths the runtime can use: with ``prune.widths.round_to: auto`` an AVX2 CPU
keeps widths in multiples of 8 and an AVX-512 CPU in multiples of 16 (:func:`ccpcsa.surgery.alignment.resolve_alignment`).
On resnet20 (16/32/64 channels) a cut that costs about 1 pp in 8-blocks takes half of every stage-2 layer in 16-blocks
(bench/README.md "Frontier"). ``by_alignment`` maps a resolved alignment to the prune settings for it, as dotted keys
under ``prune`` (``{16: {target.flops_reduction: 0.3, steps.flops_reduction: 0.1}}``; nested mappings and the flat keys
of earlier versions are read too); the keys it may not set are the ones that decide the alignment itself. The entry is
applied once, by :func:`apply_by_alignment`, before the loop builds its probe, gates or pruner.
"""

from __future__ import annotations

from typing import Any

from ..surgery.alignment import resolve_alignment
from .settings import DECIDES_ALIGNMENT, PruneConfig, check_by_alignment, entry_keys, settable_keys

__all__ = ["DECIDES_ALIGNMENT", "apply_by_alignment", "check_by_alignment", "entry_keys", "settable_keys"]

def apply_by_alignment(cfg: PruneConfig) -> tuple[PruneConfig, str]:
    """``(effective config, note)``: ``cfg`` with the entry of its resolved alignment applied (``by_alignment`` emptied,
    so the result says what the loop really ran) and a line naming what changed ("" when no entry applies)."""
    align, _ = resolve_alignment(cfg.widths.round_to, cfg.target.runtime)
    settings: dict[str, Any] = dict(cfg.by_alignment.get(align) or {})
    effective = cfg.updated(settings)
    effective.by_alignment = {}
    if not settings:
        return effective, ""
    said = ", ".join(f"{k}={v}" for k, v in settings.items())
    return effective, f"widths in multiples of {align}: prune settings {said} (prune.by_alignment.{align})"
