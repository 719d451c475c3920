"""In-memory dataset containers shared by every data source."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ArrayDataset:
    """A labelled image set held as arrays.

    ``images`` is ``uint8`` with shape ``(N, H, W, 3)`` in RGB order; ``labels`` is ``int64`` with
    shape ``(N,)`` holding class indices into :attr:`DataSplits.classes`. ``N`` may be 0 (an empty
    validation split).
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(
                f"ArrayDataset.images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.dtype != np.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"ArrayDataset.labels must be int64 ({self.images.shape[0]},), "
                f"got {self.labels.dtype} {self.labels.shape}"
            )

    def __len__(self) -> int:
        """Number of images."""
        return int(self.images.shape[0])

    def sample(self, n: int | None, seed: int = 0) -> ArrayDataset:
        """``n`` images drawn without replacement by a seeded permutation (kept in their original order);
        the whole set when ``n`` is None or ≥ ``len(self)``.

        Use this, never a prefix ``[:n]``, for an evaluation or calibration subset: the ImageFolder
        splits are stored sorted by class, so the first ``n`` images cover only the first classes.
        """
        if n is None or n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        return ArrayDataset(self.images[idx], self.labels[idx])


@dataclass
class DataSplits:
    """Train/validation/test splits of one data source, plus what a model needs to consume them.

    ``mean``/``std`` are per-channel RGB statistics in ``[0, 1]`` pixel units, computed on the
    ``train`` split (not on val or test). ``input_size`` is the image height (== width).
    ``spec`` is the spec string given to :func:`ccpcsa.data.load_data`; ``source_hash`` is the
    content hash that keys the decoded-array cache. ``stats`` counts what decoding had to fix or
    skip (``converted``, ``resized``, ``non_image``, ``undecodable``, ``stray``); it is empty for
    sources that need no fixing.
    """

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    spec: str
    source_hash: str
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)
