"""Decoded-array cache: ``<cache_dir>/<source_hash>/`` holding ``.npy`` arrays and ``meta.json``.

Each file is written atomically (``atomic_path``); ``meta.json`` is written last and lists the
expected shapes, so an entry that is incomplete, truncated or inconsistent is detected on read and
rebuilt rather than trusted. The cache holds the full train and test arrays; the validation split
is taken at load time, so one entry serves every ``val_size``/``seed``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..io.artifacts import atomic_path, atomic_write_json
from .raw import RawData

CACHE_VERSION = 1
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels", "train_moments")
META = "meta.json"


def entry_dir(cache_dir: str | Path, source_hash: str) -> Path:
    """The cache entry folder of ``source_hash`` (``cache_dir`` relative to the working directory)."""
    return Path(cache_dir).expanduser() / source_hash


def read_cache(entry: Path) -> tuple[RawData | None, str]:
    """Load a cache entry. Returns ``(data, "")``, or ``(None, reason)`` if it is absent or invalid.

    The reason is ``"missing"`` for an absent entry; anything else describes the corruption.
    """
    meta_path = entry / META
    if not meta_path.exists():
        return None, "missing"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSION:
            return None, f"cache format version {meta.get('version')} != {CACHE_VERSION}"
        classes = [str(c) for c in meta["classes"]]
        counts = meta["counts"]
        shape = tuple(int(v) for v in meta["image_shape"])
        stats = {str(k): int(v) for k, v in meta.get("stats", {}).items()}
        examples = {str(k): str(v) for k, v in meta.get("examples", {}).items()}
        arrays: dict[str, np.ndarray] = {}
        for name in ARRAYS:
            arrays[name] = np.load(entry / f"{name}.npy", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        n = int(counts[split])
        if images.dtype != np.uint8 or images.shape != (n, *shape):
            return None, f"{split} images are {images.dtype} {images.shape}, meta says uint8 {(n, *shape)}"
        if labels.dtype != np.int64 or labels.shape != (n,):
            return None, f"{split} labels are {labels.dtype} {labels.shape}, meta says int64 ({n},)"
        if n and (labels.min() < 0 or labels.max() >= len(classes)):
            return None, f"{split} labels outside 0..{len(classes) - 1}"
    moments, n_train = arrays["train_moments"], int(counts["train"])
    if moments.dtype != np.float64 or moments.shape != (n_train, 2, 3):
        return None, f"train moments are {moments.dtype} {moments.shape}, expected float64 ({n_train}, 2, 3)"
    return RawData(**arrays, classes=classes, stats=stats, examples=examples), ""


def write_cache(entry: Path, raw: RawData, extra: dict[str, Any] | None = None) -> None:
    """Write ``raw`` into ``entry`` (arrays first, ``meta.json`` last; each file atomically).

    ``raw.train_moments`` must be set.
    """
    if raw.train_moments is None:
        raise ValueError("write_cache needs raw.train_moments")
    entry.mkdir(parents=True, exist_ok=True)
    for name in ARRAYS:
        array = np.ascontiguousarray(getattr(raw, name))
        with atomic_path(entry / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    meta = {
        "version": CACHE_VERSION,
        "classes": list(raw.classes),
        "counts": {"train": int(len(raw.train_labels)), "test": int(len(raw.test_labels))},
        "image_shape": list(raw.train_images.shape[1:]),
        "stats": dict(raw.stats),
        "examples": dict(raw.examples),
        **(extra or {}),
    }
    atomic_write_json(entry / META, meta)
