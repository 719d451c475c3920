"""Checkpoint I/O: atomic, hashed, and loadable with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and primitives — never pickled classes — so loading it
cannot execute code:

``{"format": "ccpcsa-checkpoint/1", "model": {"name", "num_classes", "kwargs", "input_size"},
"attention": {...} | None, "state_dict": {...}, "classes": [...], "mean": [...], "std": [...],
"meta": {...}, "train_state": {...} | None}``

A *pruned* model is rebuilt without re-running pruning: the architecture is the zoo model (plus
BAM when ``attention`` is set) whose Conv/BN/Linear layers are then resized to the shapes found in
the state dict (:func:`resize_to_state_dict`). This works because structured pruning changes only
tensor sizes, never the module graph.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .artifacts import atomic_path
from .errors import UserError
from .models import build_model

FORMAT = "ccpcsa-checkpoint/1"


@dataclass
class ModelSpec:
    """Everything needed to rebuild an architecture: zoo name or ``pkg.mod:factory``, classes, kwargs."""

    name: str
    num_classes: int
    input_size: int = 32
    kwargs: dict[str, Any] = field(default_factory=dict)
    attention: dict[str, Any] | None = None  # BAM options when BAM modules are attached

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "num_classes": self.num_classes, "input_size": self.input_size, "kwargs": dict(self.kwargs)}


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


def build_from_spec(spec: ModelSpec) -> nn.Module:
    """Build the (unpruned) architecture of ``spec``, with BAM attached when ``spec.attention`` is set."""
    model = build_model(spec.name, spec.num_classes, **spec.kwargs)
    if spec.attention is not None:
        from .attention import attach_bam

        attach_bam(model, input_size=spec.input_size, **spec.attention)
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
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the raw checkpoint dict with ``weights_only=True``; user errors for missing/corrupt/unsafe files."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint {p} does not exist; train one first or fix the path")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError, io.UnsupportedOperation) as exc:
        raise UserError(f"checkpoint {p} is truncated or not a torch checkpoint ({_first_line(exc)})") from exc
    except Exception as exc:  # pickle.UnpicklingError and friends: refused by the weights-only unpickler
        raise UserError(
            f"checkpoint {p} was refused by the safe (weights_only) loader: it holds objects other than tensors "
            f"and plain data ({_first_line(exc)}); only load checkpoints this tool wrote"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"checkpoint {p} is not a {FORMAT} checkpoint (was it written by this tool?)")
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def resize_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Resize Conv2d / BatchNorm2d / Linear modules in place to match the tensor shapes in ``state``.

    Depthwise convs (groups == in == out in the unpruned model) stay depthwise. Modules whose shapes
    already match are untouched. Values are not loaded here (call ``load_state_dict`` afterwards).
    """
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        w = state.get(prefix + "weight")
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


def load_checkpoint(path: str | os.PathLike[str], expect_classes: int | None = None, check_finite: bool = True) -> Checkpoint:
    """Rebuild the model stored in ``path`` (pruned or not, with or without BAM) and load its weights.

    Raises :class:`UserError` when the file is missing/corrupt/unsafe, when its architecture does
    not match its own tensors, when ``expect_classes`` differs from the checkpoint's class count,
    or (``check_finite``) when a weight holds NaN/Inf.
    """
    raw = read_checkpoint_dict(path)
    m = raw["model"]
    spec = ModelSpec(m["name"], int(m["num_classes"]), int(m.get("input_size", 32)), dict(m.get("kwargs", {})), raw.get("attention"))
    if expect_classes is not None and expect_classes != spec.num_classes:
        raise UserError(
            f"checkpoint {path} has {spec.num_classes} classes but the data/config has {expect_classes}; "
            "use a checkpoint trained on this dataset or set model.num_classes to match"
        )
    state: dict[str, torch.Tensor] = raw["state_dict"]
    if check_finite:
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise UserError(f"checkpoint {path} has NaN/Inf values in {len(bad)} tensors (first: {bad[0]}); it cannot be used")
    model = build_from_spec(spec)
    resize_to_state_dict(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing = _first_line(exc)
        raise UserError(
            f"checkpoint {path} does not match architecture '{spec.name}' "
            f"(attention={'BAM' if spec.attention else 'none'}): {missing}"
        ) from exc
    model.eval()
    return Checkpoint(model, spec, list(raw.get("classes", [])), list(raw.get("mean", [])), list(raw.get("std", [])),
                      dict(raw.get("meta", {})), raw.get("train_state"))
