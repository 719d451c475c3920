"""Checkpoint I/O: atomic, hashed, and loadable with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and primitives — never pickled classes — so loading it
cannot execute code:

``{"format": "ccpcsa-checkpoint/1", "model": {"name", "num_classes", "kwargs", "input_size"},
"attention": {...} | None, "state_dict": {...}, "classes": [...], "mean": [...], "std": [...],
"meta": {...}, "train_state": {...} | None}``

A *pruned* model is rebuilt without re-running pruning: the architecture is the zoo model (plus
BAM when ``attention`` is set) whose Conv/BN/Linear layers are then resized to the shapes found in
the state dict (:func:`resize_to_state_dict`). This works because structured pruning changes only
tensor sizes, never the module graph; residual blocks removed whole (``prune.depth.drop_blocks``) are named in the model
entry's ``dropped`` list and replaced by identities before the resize.

:func:`load_checkpoint` also takes weights as users have them — a bare ``state_dict`` (``.pt``/``.pth``,
also wrapped or ``module.``-prefixed) or a ``.safetensors`` file (see :mod:`ccpcsa.io.weights`) — when it is
given the architecture as a :class:`ModelSpec`; those are loaded strictly (same keys, same shapes).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..models import build_model
from .artifacts import atomic_path
from .weights import FORMAT, first_line, load_torch_file, non_finite, read_weights


@dataclass
class ModelSpec:
    """Everything needed to rebuild an architecture: zoo name or ``pkg.mod:factory``, classes, kwargs."""

    name: str
    num_classes: int
    input_size: int = 32
    kwargs: dict[str, Any] = field(default_factory=dict)
    attention: dict[str, Any] | None = None  # BAM options when BAM modules are attached
    dropped: list[str] = field(default_factory=list)  # residual blocks removed (prune.depth.drop_blocks), plain-model names

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "num_classes": self.num_classes, "input_size": self.input_size, "kwargs": dict(self.kwargs)}
        if self.dropped:  # only then: checkpoints without removed blocks keep their bytes
            d["dropped"] = list(self.dropped)
        return d


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model plus its metadata."""

    model: nn.Module
    spec: ModelSpec
    classes: list[str]
    mean: list[float]
    std: list[float]
    meta: dict[str, Any]
    train_state: dict[str, Any] | None
    source: str = "checkpoint"  # the file's form: "checkpoint" (this project's), "state_dict" or "safetensors"
    sha256: str = ""  # of the file's bytes


def build_from_spec(spec: ModelSpec) -> nn.Module:
    """Build the (unpruned) architecture of ``spec``, with BAM attached when ``spec.attention`` is set and the blocks of
    ``spec.dropped`` replaced by identities (:func:`ccpcsa.models.depth.drop_blocks`)."""
    model = build_model(spec.name, spec.num_classes, **spec.kwargs)
    if spec.attention is not None:
        from ..models.attention import attach_bam

        attach_bam(model, input_size=spec.input_size, **spec.attention)
    if spec.dropped:
        from ..models.depth import drop_blocks

        drop_blocks(model, spec.dropped, spec.input_size, verify_skip=False)
    return model


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    spec: ModelSpec,
    classes: list[str] | None = None,
    mean: list[float] | tuple[float, ...] | None = None,
    std: list[float] | tuple[float, ...] | None = None,
    meta: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file + rename). ``model`` may be DDP-wrapped."""
    module = getattr(model, "module", model)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    payload = {
        "format": FORMAT,
        "model": spec.to_dict(),
        "attention": spec.attention,
        "state_dict": state,
        "classes": list(classes or []),
        "mean": [float(x) for x in (mean or ())],
        "std": [float(x) for x in (std or ())],
        "meta": dict(meta or {}),
        "train_state": train_state,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # A file object, not a path: torch names the zip's inner folder after a path's stem, so saving to the
        # random temp name would make identical checkpoints differ byte-wise; with a file object it is "archive/".
        torch.save(payload, fh)
    return Path(path)


def read_checkpoint_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the raw project checkpoint dict with ``weights_only=True``; user errors for missing/corrupt/unsafe files.

    Besides the file itself, the dict's structure is checked (format tag, ``model`` with ``name`` and
    ``num_classes``, ``state_dict`` of tensors), so a foreign or damaged payload is a one-line
    :class:`UserError` naming the file instead of a ``KeyError`` later. Bare weights (a state_dict, a
    safetensors file) are refused here: :func:`load_checkpoint` with a ``spec`` reads those.
    """
    p = Path(path)
    obj = load_torch_file(p)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = ""
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            hint = (" — it looks like a bare state_dict; load it with load_checkpoint(path, spec=ModelSpec(...)) "
                    "(in the pipeline: baseline.checkpoint with model.name)")
        raise UserError(f"checkpoint {p} is not a {FORMAT} checkpoint (was it written by this tool?){hint}")
    _check_project_dict(obj, p)
    return obj


def _check_project_dict(obj: dict[str, Any], p: Path) -> None:
    """UserError unless a ``ccpcsa-checkpoint/1`` dict has a model name, a class count and a state_dict of tensors."""
    model, state = obj.get("model"), obj.get("state_dict")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or isinstance(model.get("num_classes"), bool) \
            or not isinstance(model.get("num_classes"), int):
        raise UserError(f"checkpoint {p} is damaged: its 'model' entry lacks a name or class count; restore or retrain it")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {p} is damaged: its 'state_dict' is not a mapping of tensors; restore or retrain it")


def resize_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Resize Conv2d / BatchNorm2d / Linear modules in place to match the tensor shapes in ``state``.

    Depthwise convs (groups == in == out in the unpruned model) stay depthwise. Modules whose shapes
    already match are untouched. A conv or linear built without a bias gets one where ``state`` has it (weight
    compensation adds a bias to a consumer with neither bias nor BN after it, e.g. DenseNet's pre-activation convs).
    Values are not loaded here (call ``load_state_dict`` afterwards).
    """
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        w = state.get(prefix + "weight")
        b = state.get(prefix + "bias")
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is None and b is not None:
            m.bias = nn.Parameter(torch.empty_like(b))
        if isinstance(m, nn.Conv2d) and w is not None and tuple(w.shape) != tuple(m.weight.shape):
            depthwise = m.groups == m.in_channels == m.out_channels and m.groups > 1
            out_c = int(w.shape[0])
            m.out_channels = out_c
            if depthwise:
                m.groups = out_c
                m.in_channels = out_c
            else:
                m.in_channels = int(w.shape[1]) * m.groups
            m.weight = nn.Parameter(torch.empty_like(w))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(out_c))
        elif isinstance(m, nn.Linear) and w is not None and tuple(w.shape) != tuple(m.weight.shape):
            m.out_features, m.in_features = int(w.shape[0]), int(w.shape[1])
            m.weight = nn.Parameter(torch.empty_like(w))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(m.out_features))
        elif isinstance(m, nn.BatchNorm2d):
            rm = state.get(prefix + "running_mean")
            if rm is not None and rm.shape[0] != m.num_features:
                n = int(rm.shape[0])
                m.num_features = n
                if m.affine:
                    m.weight = nn.Parameter(torch.empty(n))
                    m.bias = nn.Parameter(torch.empty(n))
                m.running_mean = torch.zeros(n)
                m.running_var = torch.ones(n)


def _same_model(a: str, b: str) -> bool:
    """Model names equal, ignoring surrounding whitespace."""
    return a.strip() == b.strip()


def _check_expected(path: str | os.PathLike[str], spec: ModelSpec, expect_model: str | None,
                    expect_classes: int | None) -> None:
    """One :class:`UserError` line when the file's architecture or class count is not the one expected."""
    if expect_model is not None and not _same_model(expect_model, spec.name):
        raise UserError(f"checkpoint {path} holds a '{spec.name}' model but '{expect_model}' is expected; "
                        f"use a checkpoint of '{expect_model}' or set model.name={spec.name}")
    if expect_classes is not None and expect_classes != spec.num_classes:
        raise UserError(f"checkpoint {path} has {spec.num_classes} classes but the data/config has {expect_classes}; "
                        "use a checkpoint trained on this dataset or set model.num_classes to match")


def load_checkpoint(path: str | os.PathLike[str], expect_classes: int | None = None, check_finite: bool = True,
                    expect_model: str | None = None, spec: ModelSpec | None = None,
                    device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model of the weights file ``path`` and load its weights; the result's ``source`` and
    ``sha256`` say which form the file had and hash its bytes. The model is returned on ``device``
    (``map_location``; ``auto`` = CUDA when available), float32, in eval mode.

    * The project's ``ccpcsa-checkpoint/1`` file carries its architecture (pruned or not, with or without
      BAM); ``spec`` is ignored for it. Classes, mean, std, meta and train state come from the file.
    * Bare weights — a ``state_dict`` torch file (``{"state_dict": …}`` / ``{"model": …}`` wrappers and a
      ``module.`` prefix accepted) or a ``.safetensors`` file — need ``spec`` (architecture name, classes,
      kwargs, input size); the model is built from it and must match the tensors exactly (same keys, same
      shapes; only a missing BatchNorm ``num_batches_tracked`` counter is tolerated). Classes, mean and std
      are empty: the caller takes them from the dataset.

    Raises :class:`UserError` when the file is missing/corrupt/unsafe, when the architecture does not match
    the tensors (naming the first few missing / unexpected / mismatched keys), when ``expect_model`` (a model
    name) or ``expect_classes`` differs from the architecture's, when bare weights come without ``spec``, when
    the factory fails, or (``check_finite``) when a weight holds NaN/Inf.
    """
    w = read_weights(path)
    if w.raw is not None:
        _check_project_dict(w.raw, w.path)
        m, raw = w.raw["model"], w.raw
        try:
            spec = ModelSpec(m["name"], int(m["num_classes"]), int(m.get("input_size") or 32), dict(m.get("kwargs") or {}),
                             raw.get("attention"), [str(b) for b in m.get("dropped") or []])
        except (TypeError, ValueError) as exc:
            raise UserError(f"checkpoint {path} is damaged: bad model entry ({first_line(exc)}); restore or retrain it") from exc
    elif spec is None:
        raise UserError(
            f"checkpoint {path} is bare weights ({w.source}) without an architecture; load it with "
            "load_checkpoint(path, spec=ModelSpec(name, num_classes, ...)) (in the pipeline: set model.name, "
            "model.kwargs and model.num_classes), or save it with ccpcsa.io.checkpoint.save_checkpoint")
    else:
        raw = {}
    _check_expected(path, spec, expect_model, expect_classes)
    state = w.state
    if check_finite and (bad := non_finite(state)):
        raise UserError(f"checkpoint {path} has NaN/Inf weights — {bad}; it cannot be used, "
                        "retrain it or restore a good copy (lower the learning rate if training diverged)")
    try:
        model = build_from_spec(spec)
    except UserError as exc:
        raise UserError(f"checkpoint {path}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise UserError(f"checkpoint {path}: cannot rebuild model '{spec.name}' ({first_line(exc)})") from exc
    if w.raw is None:
        state = match_state_dict(model, state, spec, f"{path} ({w.source})")
    else:
        try:
            resize_to_state_dict(model, state)
        except (IndexError, ValueError, RuntimeError) as exc:
            raise UserError(f"checkpoint {path} does not match architecture '{spec.name}': {_mismatch(model, state)}") from exc
    if getattr(state, "_metadata", None) is None:  # module versions, as the model's own state_dict carries them: some
        state = OrderedDict(state)  # modules read theirs while loading (torchvision's MNASNet refuses None)
        state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(
            f"checkpoint {path} does not match architecture '{spec.name}' "
            f"(attention={'BAM' if spec.attention else 'none'}): {_mismatch(model, state)}"
        ) from exc
    from ..placement import place

    place(model, device).eval()
    return Checkpoint(model, spec, list(raw.get("classes", [])), list(raw.get("mean", [])), list(raw.get("std", [])),
                      dict(raw.get("meta", {})), raw.get("train_state"), w.source, w.sha256)


def match_state_dict(model: nn.Module, state: dict[str, torch.Tensor], spec: ModelSpec, what: str) -> dict[str, torch.Tensor]:
    """``state`` ready for ``model.load_state_dict(strict=True)``, or a :class:`UserError` naming ``what``,
    ``spec.name`` and the first few missing / unexpected / shape-mismatched keys (plus a hint when only the
    classifier's class count differs). A missing BatchNorm ``num_batches_tracked`` counter is filled in."""
    own = model.state_dict()
    if _differences(own, state):
        hint = _class_count_hint(own, state, spec.num_classes) or " — are they for another architecture? check model.name and model.kwargs"
        raise UserError(f"the tensors of {what} do not match architecture '{spec.name}' (kwargs {spec.kwargs or {}}, "
                        f"{spec.num_classes} classes): {_mismatch(model, state)}{hint}")
    return {**{k: v for k, v in own.items() if k not in state}, **state}


def _differences(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]] | None:
    """(missing, unexpected, shape-mismatched) keys of ``state`` against ``own``; ``None`` when they match."""
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    return (missing, unexpected, shapes) if missing or unexpected or shapes else None


def _class_count_hint(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], num_classes: int) -> str:
    """A hint when a tensor sized by the class count (the classifier) is the only kind of shape mismatch."""
    for k, v in own.items():
        s = state.get(k)
        if s is not None and v.ndim >= 1 and v.shape[0] == num_classes and s.ndim == v.ndim and s.shape[0] != num_classes \
                and tuple(s.shape[1:]) == tuple(v.shape[1:]):
            n = int(s.shape[0])
            return (f" — the weights are for {n} classes, not {num_classes}: set model.num_classes={n} "
                    "if the data has that many, or use weights trained on this dataset")
    return ""


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Summarise how ``state`` differs from ``model.state_dict()``: the first few missing / unexpected keys and
    shape mismatches (file shape vs model shape)."""
    own = model.state_dict()
    diff = _differences(own, state)
    if diff is None:
        return "tensor shapes differ"
    missing, unexpected, shapes = diff

    def first(keys: list[str], show: Any = str) -> str:
        more = f", … {len(keys) - 3} more" if len(keys) > 3 else ""
        return ", ".join(show(k) for k in keys[:3]) + more

    parts = [f"{len(keys)} {what} ({first(keys)})" for what, keys in
             (("missing tensors", missing), ("unexpected tensors", unexpected)) if keys]
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (" + first(
            shapes, lambda k: f"{k}: {list(state[k].shape)} in the file, {list(own[k].shape)} in the model") + ")")
    return "; ".join(parts)
