"""What a classifier's forward returns, reduced to its main logits."""

from __future__ import annotations

from typing import Any

import torch


def main_logits(out: Any) -> torch.Tensor:
    """The main logits ``[N, classes]`` of a forward's output ``out``: the tensor itself; the ``logits`` field of a
    namedtuple (torchvision's ``GoogLeNetOutputs`` / ``InceptionOutputs``, whose training-mode forward adds auxiliary
    heads' logits); the first element of any other tuple or list (the main head comes first); ``logits`` or ``out`` of
    a dict. Raises :class:`TypeError` naming the type for anything else."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple) and hasattr(out, "_fields") and "logits" in out._fields:
        return main_logits(out.logits)
    if isinstance(out, (tuple, list)) and out:
        return main_logits(out[0])
    if isinstance(out, dict):
        for key in ("logits", "out"):
            if key in out:
                return main_logits(out[key])
    raise TypeError(f"the model returned {type(out).__name__}; expected a logits tensor (or a tuple/namedtuple/dict "
                    "holding one)")
