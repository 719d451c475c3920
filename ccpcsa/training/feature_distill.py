"""Feature distillation at the stage outputs (``prune.recovery.distill.features``).

Logit distillation (:func:`ccpcsa.training.speed.batch_loss`) tells the student *what* the teacher answers; after whole
residual blocks are removed (:mod:`ccpcsa.models.depth`) the remaining blocks of a stage must also take over *what the
removed ones computed*. Feature distillation supervises that directly (FitNets: Romero et al., "FitNets: Hints for Thin
Deep Nets", ICLR 2015): at the output of every stage, where the student keeps the teacher's shape (blocks removed
whole and channels cut only inside the blocks, ``prune.widths.scope: internal``), the student's feature map is pulled
towards the teacher's:

    L_feat = (1 / |S|) · Σ_{s ∈ S} ‖f_s^student − f_s^teacher‖² / ‖f_s^teacher‖²

over the batch (a relative squared error, so the weight β of ``prune.recovery.distill.features`` needs no scale per
model), added as ``β · L_feat`` to the logit-distillation loss. No regressor is needed because the shapes match; a
stage whose output the student has narrowed is left out (and said so), since a regressor would be a new trained part
that the deployed model does not have.

A stage is the run of removable blocks that share one input shape (:func:`ccpcsa.models.depth.block_stages`); its
output is the output of its last block — in the student an ``nn.Identity`` where that block was removed, which then
passes the previous block's output on, i.e. still the stage's output.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..models.depth import block_stages, candidate_blocks, io_shapes, resolve_block


def stage_ends(model: nn.Module, input_size: int) -> list[str]:
    """The names of the last removable block of every stage of ``model`` (:func:`block_stages`), in execution order:
    ``["layer1.2", "layer2.2", "layer3.2"]`` for resnet20. Empty for a model without removable blocks."""
    names = candidate_blocks(model, input_size)
    stages = block_stages(model, names, input_size)
    last: dict[tuple[int, ...], str] = {}
    for name in names:
        if name in stages:
            last[stages[name]] = name  # execution order: the later block of the same stage wins
    return list(last.values())


class FeatureTaps:
    """Forward hooks on the stage outputs of a student and its teacher for the duration of one fit (a context
    manager); :meth:`loss` is ``L_feat`` (module docstring) of the last student and teacher forwards.

    ``names``: the teacher's stage ends (:func:`stage_ends`); those where the student's output shape differs from the
    teacher's are left out (``left_out``: name → why). Raises :class:`UserError` when none is left."""

    def __init__(self, student: nn.Module, teacher: nn.Module, input_size: int, weight: float) -> None:
        names = stage_ends(teacher, input_size)
        s_mods = [getattr(*resolve_block(student, n)) for n in names]
        t_mods = [getattr(*resolve_block(teacher, n)) for n in names]
        s_io = io_shapes(student, dict(zip(names, s_mods, strict=True)), input_size)
        t_io = io_shapes(teacher, dict(zip(names, t_mods, strict=True)), input_size)
        s_shapes = [s_io[n][1] if n in s_io else None for n in names]  # output shapes; None: never called
        t_shapes = [t_io[n][1] if n in t_io else None for n in names]
        keep = [i for i in range(len(names)) if s_shapes[i] is not None and s_shapes[i] == t_shapes[i]]
        self.left_out = {names[i]: f"student {s_shapes[i]} vs teacher {t_shapes[i]}"
                         for i in range(len(names)) if i not in keep}
        if not keep:
            why = "; ".join(f"{k}: {v}" for k, v in self.left_out.items()) or "no residual stages"
            raise UserError("prune.recovery.distill.features: no stage output of the pruned model has the teacher's "
                            f"shape ({why}); "
                            "keep the residual streams whole (prune.widths.scope=internal) or set "
                            "prune.recovery.distill.features=0")
        self.names = [names[i] for i in keep]
        self.weight = weight
        self._pairs = [(s_mods[i], t_mods[i]) for i in keep]
        self._student: list[torch.Tensor | None] = [None] * len(keep)
        self._teacher: list[torch.Tensor | None] = [None] * len(keep)
        self._handles: list[Any] = []

    def _hook(self, store: list[torch.Tensor | None], i: int) -> Any:
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            store[i] = out
        return hook

    def __enter__(self) -> FeatureTaps:
        for i, (s, t) in enumerate(self._pairs):
            self._handles.append(s.register_forward_hook(self._hook(self._student, i)))
            self._handles.append(t.register_forward_hook(self._hook(self._teacher, i)))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._clear()

    def _clear(self) -> None:
        for store in (self._student, self._teacher):  # in place: the hooks hold these lists
            store[:] = [None] * len(store)

    def loss(self) -> torch.Tensor:
        """``L_feat`` over the stages (float32): the mean over stages of ``Σ(f_s − f_t)² / Σ f_t²`` on the batch
        of the last forwards. Raises ``RuntimeError`` when a forward since the taps were entered did not reach a
        stage."""
        terms = []
        for i, (s, t) in enumerate(zip(self._student, self._teacher, strict=True)):
            if s is None or t is None:
                raise RuntimeError(f"feature distillation: the stage output {self.names[i]} was not computed in "
                                   "this step")
            s32, t32 = s.float(), t.detach().float()
            terms.append((s32 - t32).pow(2).sum() / t32.pow(2).sum().clamp_min(1e-12))
        self._clear()  # read once: a later step must bring its own forwards
        return torch.stack(terms).mean()

    def record(self) -> dict[str, Any]:
        """JSON-ready: ``weight`` (β), the matched ``stages`` and the ``left_out`` ones with why."""
        return {"weight": self.weight, "stages": list(self.names), "left_out": dict(self.left_out)}

    def describe(self) -> str:
        """One line: where the features are matched and what was left out."""
        text = f"feature distillation (β = {self.weight:g}) at {', '.join(self.names)}"
        left = ", ".join(f"{k} ({v})" for k, v in self.left_out.items())
        return text + (f"; left out: {left}" if left else "")
