"""``load_data``: spec string → cached, split, normalisation-ready :class:`DataSplits`."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import UserError
from .cache import entry_dir, read_cache, write_cache
from .dataset import ArrayDataset, DataSplits
from .raw import RawData
from .sources import parse_spec
from .splits import check_val_size, default_val_size, mean_std_from_moments, pixel_moments, split_indices

DEFAULT_CACHE_DIR = ".cache/data"


def load_data(
    spec: str,
    val_size: int | None = None,
    seed: int = 0,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    progress: bool = True,
) -> DataSplits:
    """Load the data set named by ``spec`` and split it into train / val / test.

    * ``spec``: ``imagefolder:PATH``, ``cifar10[:DIR]``, ``cifar100[:DIR]``, ``synthetic``,
      ``synthetic:N_TRAIN:N_TEST`` or ``synthetic?classes=C&size=S&train=N&test=M&seed=K``.
    * ``val_size``: images held out of the source's train split for validation (stratified by class,
      chosen by ``seed``); default 5,000 if that split has >= 40,000 images, else 10 % of it;
      ``0`` gives an empty val split. ``test`` is always the source's test split.
    * ``cache_dir``: decoded arrays are cached in ``cache_dir/<source_hash>/`` (a relative path is
      relative to the current working directory). A missing or corrupt entry is (re)built.
    * ``progress``: show tqdm bars while decoding / downloading.

    ``mean``/``std`` are computed on the resulting train split. Decoding fixes (conversions,
    resizes, skipped files) are reported in ``DataSplits.stats`` and by one ``UserWarning``.
    Raises :class:`UserError` for any problem the user can fix (bad spec, missing/corrupt data,
    bad ``val_size``/``seed``).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    source = parse_spec(spec, progress=progress)
    source_hash = source.key()
    entry = entry_dir(cache_dir, source_hash)
    raw, reason = read_cache(entry)
    if raw is None:
        if reason != "missing":
            warnings.warn(f"data cache {entry} is invalid ({reason}); rebuilding it", stacklevel=2)
        raw = source.build(progress=progress)
        raw.train_moments = pixel_moments(raw.train_images)
        try:
            write_cache(entry, raw, extra={"spec": spec, "source_hash": source_hash})
        except OSError as exc:
            warnings.warn(
                f"could not write the data cache {entry} ({exc}); continuing without it", stacklevel=2
            )
    _warn_fixes(spec, raw)

    n_train = len(raw.train_labels)
    size = default_val_size(n_train) if val_size is None else check_val_size(val_size, n_train)
    train_idx, val_idx = split_indices(raw.train_labels, size, int(seed))
    if len(val_idx) == 0:
        train = ArrayDataset(raw.train_images, raw.train_labels)
    else:
        train = ArrayDataset(raw.train_images[train_idx], raw.train_labels[train_idx])
    val = ArrayDataset(raw.train_images[val_idx], raw.train_labels[val_idx])
    test = ArrayDataset(raw.test_images, raw.test_labels)
    moments = raw.train_moments if raw.train_moments is not None else pixel_moments(raw.train_images)
    height, width = raw.train_images.shape[1:3]
    mean, std = mean_std_from_moments(moments[train_idx], height * width)
    return DataSplits(
        train=train,
        val=val,
        test=test,
        classes=list(raw.classes),
        mean=mean,
        std=std,
        input_size=int(raw.train_images.shape[1]),
        spec=spec,
        source_hash=source_hash,
        stats=dict(raw.stats),
    )


def _warn_fixes(spec: str, raw: RawData) -> None:
    """One UserWarning summarising the conversions / resizes / skips decoding had to make."""
    s, ex = raw.stats, raw.examples
    parts = []

    def add(key: str, text: str) -> None:
        if s.get(key):
            parts.append(text + (f" (e.g. {ex[key]})" if ex.get(key) else ""))

    add("converted", f"converted {s.get('converted')} non-RGB (grayscale/RGBA/palette) image(s) to RGB")
    if s.get("resized"):
        h, w = raw.train_images.shape[1:3]
        add("resized", f"resized {s['resized']} image(s) of another size to {w}x{h}")
    add("non_image", f"skipped {s.get('non_image')} non-image file(s)")
    add("undecodable", f"skipped {s.get('undecodable')} undecodable image file(s)")
    add("stray", f"ignored {s.get('stray')} file(s) outside a class folder")
    if parts:
        warnings.warn(f"{spec}: " + "; ".join(parts), stacklevel=3)
