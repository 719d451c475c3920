"""Self-describing ONNX artifacts: deployment metadata stored in ``ModelProto.metadata_props``.

An edge consumer needs nothing but the ONNX file to preprocess images and label the outputs. The
keys (all values are strings; lists are JSON):

==================  =============================================================================
``class_names``     JSON list, index ``i`` labels logit ``i``
``num_classes``     ``len(class_names)``
``input_name``      graph input name (``"input"``)
``output_name``     graph output name (``"logits"``: unnormalized scores; softmax → probabilities)
``input_size``      JSON ``[H, W]`` in pixels
``input_shape``     JSON ``["batch", C, H, W]``
``channel_order``   ``"RGB"`` (channel 0 is red)
``layout``          ``"NCHW"``
``pixel_scale``     ``"1/255"``: uint8 pixels are divided by 255 before normalization
``mean`` / ``std``  JSON per-channel lists; ``x = (pixel / 255 - mean[c]) / std[c]``
``preprocess``      the formula above, in words
``run_id``          the run that produced the model
``config_hash``     SHA-256 of that run's canonical config (see :func:`config_hash`)
``precision``       ``"fp32"`` or ``"int8-qdq"``
``stage``           ``"export"``, ``"simplified"`` or ``"quantized"``
``parent_sha256``   SHA-256 of the artifact this one was derived from (simplified / INT8 models)
==================  =============================================================================

Derived artifacts (simplified, INT8) carry every key forward and update ``precision``, ``stage``
and ``parent_sha256`` (:func:`carry_metadata`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from ccpcsa.errors import UserError

from .onnx_io import PathLike, load_onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

REQUIRED_KEYS = (
    "class_names",
    "input_size",
    "channel_order",
    "layout",
    "mean",
    "std",
    "run_id",
    "config_hash",
)
_JSON_KEYS = frozenset({"class_names", "input_size", "input_shape", "mean", "std"})
_INT_KEYS = frozenset({"num_classes"})


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of ``config`` (sorted keys, no whitespace, ``str`` fallback)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DeployMetadata:
    """What a device needs to use a classifier: labels, input geometry and normalization, provenance.

    ``input_size`` may be given as an int (square) or ``(H, W)``. ``mean``/``std`` are per channel
    in ``channel_order`` and apply to pixels scaled to [0, 1]: ``x = (pixel / 255 - mean) / std``.
    """

    class_names: Sequence[str]
    mean: Sequence[float]
    std: Sequence[float]
    input_size: int | tuple[int, int] = 32
    run_id: str = "unknown"
    config_hash: str = "unknown"
    channel_order: str = "RGB"
    layout: str = "NCHW"
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.class_names)
        if not names:
            raise UserError("metadata: class_names is empty; give one name per model output")
        if len(set(names)) != len(names):
            raise UserError(f"metadata: class_names has duplicates: {list(names)}")
        size = self.input_size
        hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(hw) <= 0:
            raise UserError(f"metadata: input_size must be positive, got {size}")
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(mean) != len(std) or not mean:
            raise UserError(f"metadata: mean ({len(mean)} values) and std ({len(std)} values) must match in length")
        if min(std) <= 0:
            raise UserError(f"metadata: std values must be > 0, got {list(std)}")
        if self.channel_order not in ("RGB", "BGR"):
            raise UserError(f"metadata: channel_order must be 'RGB' or 'BGR', got '{self.channel_order}'")
        if self.layout != "NCHW":
            raise UserError(f"metadata: only NCHW layout is exported, got '{self.layout}'")
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "input_size", hw)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def channels(self) -> int:
        """Number of input channels (``len(mean)``)."""
        return len(self.mean)

    @property
    def hw(self) -> tuple[int, int]:
        """``(H, W)`` of the model input."""
        size = self.input_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` key/value strings (see the module docstring for the keys)."""
        h, w = self.hw
        props = {
            "class_names": json.dumps(list(self.class_names)),
            "num_classes": str(len(self.class_names)),
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "input_size": json.dumps([h, w]),
            "input_shape": json.dumps(["batch", self.channels, h, w]),
            "channel_order": self.channel_order,
            "layout": self.layout,
            "pixel_scale": "1/255",
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "preprocess": (
                f"decode to {self.channel_order} uint8, resize to {h}x{w}, x = (pixel/255 - mean[c]) / std[c], "
                "layout NCHW float32; output = logits (argmax = class index into class_names)"
            ),
            "run_id": str(self.run_id),
            "config_hash": str(self.config_hash),
            "precision": "fp32",
            "stage": "export",
        }
        props.update({str(k): str(v) for k, v in self.extra.items()})
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> DeployMetadata:
        """Inverse of :meth:`to_props`; keys not in the dataclass go to ``extra``."""
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise UserError(f"metadata is missing keys {missing}")
        known = set(REQUIRED_KEYS) | {"num_classes", "input_name", "output_name", "input_shape", "pixel_scale", "preprocess"}
        size = json.loads(props["input_size"])
        return cls(
            class_names=json.loads(props["class_names"]),
            mean=json.loads(props["mean"]),
            std=json.loads(props["std"]),
            input_size=(int(size[0]), int(size[1])),
            run_id=props["run_id"],
            config_hash=props["config_hash"],
            channel_order=props["channel_order"],
            layout=props["layout"],
            extra={k: v for k, v in props.items() if k not in known},
        )


def get_props(model: onnx.ModelProto) -> dict[str, str]:
    """``metadata_props`` of ``model`` as a plain ``dict`` (raw strings)."""
    return {p.key: p.value for p in model.metadata_props}


def set_props(model: onnx.ModelProto, props: Mapping[str, str]) -> None:
    """Set (add or replace) ``props`` in ``model.metadata_props``, keeping other existing keys."""
    merged = get_props(model)
    merged.update({str(k): str(v) for k, v in props.items()})
    del model.metadata_props[:]
    for key, value in merged.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def carry_metadata(src: onnx.ModelProto, dst: onnx.ModelProto, **updates: str) -> None:
    """Copy all of ``src``'s metadata onto ``dst`` (overriding ``dst``'s same keys), then apply ``updates``."""
    props = get_props(src)
    props.update(updates)
    set_props(dst, props)


def decode_props(props: Mapping[str, str]) -> dict[str, Any]:
    """Decode JSON-valued keys (lists) and integer keys; other values stay strings."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        if key in _JSON_KEYS:
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise UserError(f"metadata key '{key}' is not valid JSON: {value[:60]!r}") from exc
        elif key in _INT_KEYS:
            out[key] = int(value)
        else:
            out[key] = value
    return out


def read_metadata(path: PathLike) -> dict[str, Any]:
    """Deployment metadata of the ONNX file at ``path``, decoded (lists as lists, ``num_classes`` int).

    Raises :class:`UserError` if the file is not a readable ONNX model or lacks any of
    :data:`REQUIRED_KEYS` (i.e. it was not produced by this pipeline).
    """
    model = load_onnx(path, check=False)
    props = get_props(model)
    missing = [k for k in REQUIRED_KEYS if k not in props]
    if missing:
        raise UserError(f"'{path}' has no deployment metadata (missing keys: {', '.join(missing)})")
    return decode_props(props)
