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
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # A file object, not a path: torch names the zip's inner folder after a path's stem, so saving to the
        # random temp name would make identical checkpoints differ byte-wise; with a file object it is "archive/".
        torch.save(payload, fh)
    return Path(path)


def read_checkpoint_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the raw checkpoint dict with ``weights_only=True``; user errors for missing/corrupt/unsafe files.

    Besides the file itself, the dict's structure is checked (format tag, ``model`` with ``name`` and
    ``num_classes``, ``state_dict`` of tensors), so a foreign or damaged payload is a one-line
    :class:`UserError` naming the file instead of a ``KeyError`` later.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"checkpoint {p} is a directory, not a checkpoint file; point to the .pt file")
    if not p.is_file():
        raise UserError(f"checkpoint {p} does not exist; train one first or fix the path")
    if p.stat().st_size == 0:
        raise UserError(f"checkpoint {p} is empty (0 bytes); it was not written completely, restore or retrain it")
    if not zipfile.is_zipfile(p):
        raise UserError(
            f"checkpoint {p} is truncated or not a torch checkpoint (not a zip archive); restore or retrain it"
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError, io.UnsupportedOperation, OSError) as exc:
        raise UserError(f"checkpoint {p} is truncated or not a torch checkpoint ({_first_line(exc)})") from exc
    except Exception as exc:  # pickle.UnpicklingError and friends: refused by the weights-only unpickler
        raise UserError(
            f"checkpoint {p} was refused by the safe (weights_only) loader: it holds objects other than tensors "
            "and plain data; only load checkpoints this tool wrote"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = ""
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            hint = " — it looks like a bare state_dict; save it with ccpcsa.checkpoint.save_checkpoint"
        raise UserError(f"checkpoint {p} is not a {FORMAT} checkpoint (was it written by this tool?){hint}")
    model, state = obj.get("model"), obj.get("state_dict")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or isinstance(model.get("num_classes"), bool) \
            or not isinstance(model.get("num_classes"), int):
        raise UserError(f"checkpoint {p} is damaged: its 'model' entry lacks a name or class count; restore or retrain it")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {p} is damaged: its 'state_dict' is not a mapping of tensors; restore or retrain it")
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


def _same_model(a: str, b: str) -> bool:
    """Model names equal, ignoring surrounding whitespace."""
    return a.strip() == b.strip()


def load_checkpoint(
    path: str | os.PathLike[str],
    expect_classes: int | None = None,
    check_finite: bool = True,
    expect_model: str | None = None,
) -> Checkpoint:
    """Rebuild the model stored in ``path`` (pruned or not, with or without BAM) and load its weights.

    Raises :class:`UserError` when the file is missing/corrupt/unsafe, when its architecture does
    not match its own tensors, when ``expect_model`` (a model name) or ``expect_classes`` differs from
    the checkpoint's, or (``check_finite``) when a weight holds NaN/Inf.
    """
    raw = read_checkpoint_dict(path)
    m = raw["model"]
    try:
        spec = ModelSpec(m["name"], int(m["num_classes"]), int(m.get("input_size") or 32), dict(m.get("kwargs") or {}),
                         raw.get("attention"))
    except (TypeError, ValueError) as exc:
        raise UserError(f"checkpoint {path} is damaged: bad model entry ({_first_line(exc)}); restore or retrain it") from exc
    if expect_model is not None and not _same_model(expect_model, spec.name):
        raise UserError(
            f"checkpoint {path} holds a '{spec.name}' model but '{expect_model}' is expected; "
            f"use a checkpoint of '{expect_model}' or set model.name={spec.name}"
        )
    if expect_classes is not None and expect_classes != spec.num_classes:
        raise UserError(
            f"checkpoint {path} has {spec.num_classes} classes but the data/config has {expect_classes}; "
            "use a checkpoint trained on this dataset or set model.num_classes to match"
        )
    state: dict[str, torch.Tensor] = raw["state_dict"]
    if check_finite:
        nan = [k for k, v in state.items() if v.is_floating_point() and bool(torch.isnan(v).any())]
        inf = [k for k, v in state.items() if v.is_floating_point() and bool(torch.isinf(v).any())]
        if nan or inf:
            kinds = " and ".join(f"{kind} in {len(keys)} tensor(s) (first: {keys[0]})"
                                 for kind, keys in (("NaN", nan), ("Inf", inf)) if keys)
            raise UserError(f"checkpoint {path} has NaN/Inf weights — {kinds}; it cannot be used, "
                            "retrain it or restore a good copy (lower the learning rate if training diverged)")
    try:
        model = build_from_spec(spec)
    except UserError as exc:
        raise UserError(f"checkpoint {path}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise UserError(f"checkpoint {path}: cannot rebuild model '{spec.name}' ({_first_line(exc)})") from exc
    try:
        resize_to_state_dict(model, state)
    except (IndexError, ValueError, RuntimeError) as exc:
        raise UserError(f"checkpoint {path} does not match architecture '{spec.name}': {_mismatch(model, state)}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(
            f"checkpoint {path} does not match architecture '{spec.name}' "
            f"(attention={'BAM' if spec.attention else 'none'}): {_mismatch(model, state)}"
        ) from exc
    model.eval()
    return Checkpoint(model, spec, list(raw.get("classes", [])), list(raw.get("mean", [])), list(raw.get("std", [])),
                      dict(raw.get("meta", {})), raw.get("train_state"))


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Summarise how ``state`` differs from ``model.state_dict()``: missing / unexpected keys, shape mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    parts = [f"{len(keys)} {what} (first: {keys[0]})" for what, keys in
             (("missing tensors", missing), ("unexpected tensors", unexpected), ("shape mismatches", shapes)) if keys]
    return "; ".join(parts) or "tensor shapes differ"
