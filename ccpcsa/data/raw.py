"""The decoded, not yet split, form of a data source (what the cache stores)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RawData:
    """Decoded train and test arrays of one source, before the validation split.

    Images are ``uint8`` ``(N, H, W, 3)`` RGB, labels ``int64`` ``(N,)`` indexing ``classes``.
    ``stats`` counts what decoding converted, resized or skipped (see :class:`DataSplits`);
    ``examples`` names the first file of each such kind (for the warning).
    ``train_moments`` (float64 ``(N, 2, 3)``: per-image channel sums and sums of squares, pixel
    units 0..255) lets the mean/std of any train subset be computed without touching the pixels;
    sources leave it ``None`` and :func:`ccpcsa.data.load.load_data` fills it before caching.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    stats: dict[str, int] = field(default_factory=dict)
    train_moments: np.ndarray | None = None
    examples: dict[str, str] = field(default_factory=dict)  # stats key → first file it applied to
