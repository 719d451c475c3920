"""Loading, checking and atomically saving ONNX models, with one-line errors for bad files.

Every ONNX artifact of the pipeline is read through :func:`load_onnx` (so a missing, empty,
truncated or non-ONNX file is a :class:`~ccpcsa.errors.UserError` naming the file) and written
through :func:`save_onnx` (temp file + atomic rename, so a failed write never replaces a previous
good artifact).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from ccpcsa.errors import UserError, first_line
from ccpcsa.io.artifacts import atomic_path

PathLike = str | os.PathLike[str]

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})



def load_onnx(path: PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Load ``path`` as an ONNX model; with ``check`` also run ``onnx.checker.check_model``.

    Raises :class:`UserError` (one line naming the file) when the file is missing, empty, not a
    protobuf ``ModelProto`` (e.g. truncated or another format) or fails the checker.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"ONNX file '{p}' is a directory; point to the .onnx file")
    if not p.is_file():
        raise UserError(f"ONNX file '{p}' does not exist")
    if p.stat().st_size == 0:
        raise UserError(f"ONNX file '{p}' is empty")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except OSError as exc:
        raise UserError(f"cannot read ONNX file '{p}' ({exc.strerror or first_line(exc)})") from exc
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise UserError(f"'{p}' is not a valid ONNX model (truncated or another format?): {first_line(exc)}") from exc
    if model.ir_version == 0 or not model.HasField("graph"):
        raise UserError(f"'{p}' is not a valid ONNX model (no IR version or graph; truncated or another format?)")
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            raise UserError(f"'{p}' fails the ONNX checker: {first_line(exc)}") from exc
    return model


def check_onnx(model: onnx.ModelProto, *, what: str = "model") -> onnx.ModelProto:
    """Run ``check_model(full_check=True)`` and strict shape inference; return the inferred model.

    ``full_check`` includes ONNX shape inference in the checker; the separate
    ``infer_shapes(strict_mode=True)`` call returns the model with ``value_info`` filled, which the
    caller may keep. Any failure is a :class:`UserError` naming ``what``.
    """
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise UserError(f"{what} fails ONNX checking/shape inference: {first_line(exc)}") from exc


def save_onnx(model: onnx.ModelProto, dest: PathLike) -> Path:
    """Serialize ``model`` to ``dest`` atomically (temp file beside it, then rename); return ``dest``."""
    with atomic_path(dest) as tmp:
        onnx.save_model(model, str(tmp))
    return Path(dest)


def node_count(model: onnx.ModelProto) -> int:
    """Number of nodes in the main graph (subgraphs not counted)."""
    return len(model.graph.node)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """``{op_type: count}`` over the main graph, most frequent first."""
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def is_qdq(model: onnx.ModelProto) -> bool:
    """True when the graph contains QuantizeLinear/DequantizeLinear nodes (an INT8 QDQ model)."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real graph inputs (inputs that are not also initializers, for old-IR models)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def input_signature(model: onnx.ModelProto, *, what: str = "model") -> tuple[str, int | str, tuple[int, int, int]]:
    """``(input_name, batch_dim, (C, H, W))`` of a single-input image model.

    ``batch_dim`` is the symbolic name (``str``) for a dynamic batch or the fixed size (``int``).
    Raises :class:`UserError` unless there is exactly one rank-4 input with static C, H, W.
    """
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise UserError(f"{what} has {len(inputs)} inputs; expected exactly one image input")
    vi = inputs[0]
    dims = vi.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise UserError(f"{what} input '{vi.name}' has rank {len(dims)}; expected 4 (NCHW)")
    batch: int | str = dims[0].dim_param if dims[0].HasField("dim_param") else dims[0].dim_value
    chw = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims[1:])
    if min(chw) <= 0:
        raise UserError(f"{what} input '{vi.name}' has non-static C/H/W dims; expected fixed sizes")
    return vi.name, batch, (chw[0], chw[1], chw[2])


class ArtifactRecord:
    """Mixin for result dataclasses that describe a written artifact (a ``path`` field)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (path as string)."""
        d = asdict(self)  # type: ignore[call-overload]
        d["path"] = str(d["path"])
        return d
