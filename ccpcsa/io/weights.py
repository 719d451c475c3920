"""Reading model weights in the forms users have them, safely (no pickled code ever runs).

Three forms are recognised by their content (not their file name):

* ``checkpoint``: the project's own ``ccpcsa-checkpoint/1`` dict (architecture + weights + classes);
* ``state_dict``: a torch file (``.pt``/``.pth``) holding ``model.state_dict()``, also inside the common
  ``{"state_dict": …}`` / ``{"model_state_dict": …}`` / ``{"model": …}`` wrappers, with a DataParallel /
  DDP ``module.`` (or ``torch.compile`` ``_orig_mod.``) prefix removed;
* ``safetensors``: a ``.safetensors`` file (the ``safetensors`` library; tensors only by construction).

Torch files are read with ``torch.load(weights_only=True)``. Every problem with the file itself (missing,
empty, truncated, code inside, non-tensor entries) is a one-line :class:`~ccpcsa.errors.UserError`
naming the file and the fix. Matching the tensors to an architecture is
:func:`ccpcsa.io.checkpoint.load_checkpoint`'s job.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, first_line
from .artifacts import sha256_file

FORMAT = "ccpcsa-checkpoint/1"
SOURCES = ("checkpoint", "state_dict", "safetensors")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # {"state_dict": sd, "epoch": …} and friends
STRIP_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


@dataclass(frozen=True)
class WeightsFile:
    """A weights file as read: its form (one of :data:`SOURCES`), tensors, SHA-256, and — for the project's
    own checkpoint — the whole checkpoint dict in ``raw`` (``None`` for bare weights)."""

    path: Path
    source: str
    state: dict[str, torch.Tensor]
    sha256: str
    raw: dict[str, Any] | None = None



def check_file(p: Path, what: str = "checkpoint") -> None:
    """UserError unless ``p`` is an existing, non-empty regular file."""
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory, not a checkpoint file; point to the .pt file")
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist; train one first or fix the path")
    if p.stat().st_size == 0:
        raise UserError(f"{what} {p} is empty (0 bytes); it was not written completely, restore or retrain it")


def looks_like_safetensors(p: Path) -> bool:
    """True when ``p`` starts like a safetensors file: an 8-byte little-endian header length, then ``{``."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= p.stat().st_size - 8


def load_torch_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line user errors for a missing, empty,
    truncated, non-torch or unsafe (code-carrying) file."""
    p = Path(path)
    check_file(p)
    if not zipfile.is_zipfile(p):
        raise UserError(
            f"checkpoint {p} is truncated or not a torch checkpoint (not a zip archive); restore or retrain it"
        )
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError, io.UnsupportedOperation, OSError) as exc:
        raise UserError(f"checkpoint {p} is truncated or not a torch checkpoint ({first_line(exc)})") from exc
    except Exception as exc:  # pickle.UnpicklingError and friends: refused by the weights-only unpickler
        raise UserError(
            f"checkpoint {p} was refused by the safe (weights_only) loader: it holds objects other than tensors "
            "and plain data (a whole pickled model?); save model.state_dict() instead"
        ) from exc


def load_safetensors_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file on CPU; one-line user error for a damaged file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    check_file(p, "weights file")
    try:
        return dict(load_file(str(p), device="cpu"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"weights file {p} is truncated or not a safetensors file ({first_line(exc)}); "
                        "re-save it with safetensors.torch.save_file(model.state_dict(), path)") from exc


def _describe(v: Any) -> str:
    return type(v).__name__


def state_dict_from(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    """The tensors of a bare state_dict ``obj`` read from ``p``: unwraps the :data:`WRAPPER_KEYS` wrappers,
    drops a :data:`STRIP_PREFIXES` prefix shared by every key, and insists on a non-empty mapping of tensors."""
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and not all(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
                break
    if not isinstance(obj, dict):
        raise UserError(f"weights file {p} holds a {_describe(obj)}, not a state_dict; save model.state_dict()")
    if not obj:
        raise UserError(f"weights file {p} holds an empty state_dict (no tensors); save model.state_dict() of a built model")
    bad = [(k, v) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        first = ", ".join(f"'{k}' ({_describe(v)})" for k, v in bad[:3])
        raise UserError(f"weights file {p} is not a state_dict of tensors: {len(bad)} non-tensor entr"
                        f"{'y' if len(bad) == 1 else 'ies'} (first: {first}); save model.state_dict() alone, "
                        "or wrap it as {'state_dict': model.state_dict(), ...}")
    state = {str(k): v for k, v in obj.items()}
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def read_weights(path: str | os.PathLike[str]) -> WeightsFile:
    """Read ``path`` in any of the :data:`SOURCES` forms (recognised by content: a zip is a torch file, a
    safetensors header is safetensors) → :class:`WeightsFile`. For the project's checkpoint ``state`` is its
    ``state_dict`` and ``raw`` the whole dict (checked only for its format tag here). Raises
    :class:`UserError` for any problem with the file itself."""
    p = Path(path)
    check_file(p, "weights file" if p.suffix == ".safetensors" else "checkpoint")
    if not zipfile.is_zipfile(p) and (looks_like_safetensors(p) or p.suffix == ".safetensors"):
        return WeightsFile(p, "safetensors", state_dict_from(load_safetensors_file(p), p), sha256_file(p))
    obj = load_torch_file(p)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        state = obj.get("state_dict")
        tensors = state if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()) else {}
        return WeightsFile(p, "checkpoint", tensors, sha256_file(p), obj)
    if isinstance(obj, dict) and isinstance(obj.get("format"), str) and str(obj["format"]).startswith("ccpcsa-checkpoint/"):
        raise UserError(f"checkpoint {p} is in format {obj['format']}, which this version cannot read (it reads {FORMAT}); "
                        "update the tool or re-save the checkpoint")
    return WeightsFile(p, "state_dict", state_dict_from(obj, p), sha256_file(p))


def non_finite(state: dict[str, torch.Tensor]) -> str:
    """``""`` when every floating tensor is finite, else e.g. ``"NaN in 1 tensor(s) (first: fc.weight)"``."""
    nan = [k for k, v in state.items() if v.is_floating_point() and bool(torch.isnan(v).any())]
    inf = [k for k, v in state.items() if v.is_floating_point() and bool(torch.isinf(v).any())]
    return " and ".join(f"{kind} in {len(keys)} tensor(s) (first: {keys[0]})" for kind, keys in (("NaN", nan), ("Inf", inf)) if keys)
