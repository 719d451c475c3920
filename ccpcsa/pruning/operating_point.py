"""Prune settings that depend on the channel block the target CPU runs best (``prune.by_alignment``).

A model's operating point depends on the widths the runtime can use: with ``prune.round_to: auto`` an AVX2 CPU keeps
widths in multiples of 8 and an AVX-512 CPU in multiples of 16 (:func:`ccpcsa.surgery.alignment.resolve_alignment`).
On resnet20 (16/32/64 channels) −45 % MACs in 8-blocks costs about 1 pp, while in 16-blocks it takes half of every
stage-2 layer and costs 4–5 pp (bench/README.md "Frontier"). ``by_alignment`` maps a resolved alignment to the prune
settings for it, e.g. ``{16: {target_flops_reduction: 0.3, step_flops_reduction: 0.1}}``; the keys it may not set are
the ones that decide the alignment itself.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, ClassVar, Protocol, TypeVar

from ..errors import UserError, closest
from ..surgery.alignment import resolve_alignment


class _PruneSettings(Protocol):
    """What this module needs of :class:`ccpcsa.pruning.settings.PruneConfig` (a dataclass; named structurally so that the
    loop may import this module without a cycle)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    round_to: int | str
    target_runtime: str
    by_alignment: dict[int, dict[str, Any]]

    def validate(self) -> None: ...


PruneConfigT = TypeVar("PruneConfigT", bound=_PruneSettings)

#: prune keys ``by_alignment`` may not set: they decide which entry applies
DECIDES_ALIGNMENT = ("round_to", "target_runtime", "by_alignment")


def settable_keys(cfg: _PruneSettings) -> list[str]:
    """The prune keys an entry of ``by_alignment`` may set."""
    return [f.name for f in fields(cfg) if f.name not in DECIDES_ALIGNMENT]


def check_by_alignment(cfg: _PruneSettings) -> None:
    """Raise :class:`UserError` (one line naming the entry and the fix) for an entry that is not ``block (integer ≥ 1) →
    mapping of settable prune keys`` or whose settings, applied, fail :meth:`PruneConfig.validate`."""
    if not isinstance(cfg.by_alignment, dict):
        raise UserError(f"prune.by_alignment must be a mapping of channel block → prune settings, e.g. "
                        f"{{16: {{target_flops_reduction: 0.3}}}}, got {cfg.by_alignment!r}")
    allowed = settable_keys(cfg)
    for block, settings in cfg.by_alignment.items():
        if isinstance(block, bool) or not isinstance(block, int) or block < 1 or not isinstance(settings, dict):
            raise UserError(f"prune.by_alignment maps a channel block (an integer ≥ 1, e.g. 16) to a mapping of prune "
                            f"settings; got {block!r}: {settings!r}")
        for key in settings:
            if key not in allowed:
                why = "it decides which entry applies" if key in DECIDES_ALIGNMENT else \
                    f"not a prune key{closest(str(key), allowed)}"
                raise UserError(f"prune.by_alignment.{block} cannot set '{key}' ({why})")
        try:
            replace(cfg, **settings, by_alignment={}).validate()
        except (UserError, TypeError) as exc:
            raise UserError(f"prune.by_alignment.{block}: {exc}") from None


def apply_by_alignment(cfg: PruneConfigT) -> tuple[PruneConfigT, str]:
    """``(effective config, note)``: ``cfg`` with the entry of its resolved alignment applied (``by_alignment`` emptied,
    so the result says what the loop really ran) and a line naming what changed ("" when no entry applies)."""
    align, _ = resolve_alignment(cfg.round_to, cfg.target_runtime)
    settings: dict[str, Any] = dict(cfg.by_alignment.get(align) or {})
    effective = replace(cfg, **settings, by_alignment={})
    if not settings:
        return effective, ""
    said = ", ".join(f"{k}={v}" for k, v in settings.items())
    return effective, f"widths in multiples of {align}: prune settings {said} (prune.by_alignment.{align})"
