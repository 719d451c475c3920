"""Validation hold-out and per-channel statistics."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError

CIFAR_SIZED_TRAIN = 40_000
CIFAR_VAL_SIZE = 5_000


def default_val_size(n_train: int) -> int:
    """5,000 when the train split has at least 40,000 images (CIFAR-sized), else 10 % of it (rounded)."""
    return CIFAR_VAL_SIZE if n_train >= CIFAR_SIZED_TRAIN else int(round(0.1 * n_train))


def check_val_size(val_size: int, n_train: int) -> int:
    """Return ``val_size`` as int if ``0 <= val_size < n_train``, else raise UserError."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)):
        raise UserError(f"val_size must be an integer, got {val_size!r}")
    if not 0 <= val_size < n_train:
        raise UserError(
            f"val_size must be between 0 and {n_train - 1} (the train split has {n_train} images), got {val_size}"
        )
    return int(val_size)


def split_indices(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random hold-out: return sorted ``(train_idx, val_idx)`` with ``len(val_idx) == val_size``.

    Each class contributes ``val_size * class_count / N`` images (largest-remainder rounding, so the
    total is exact); which images is decided by one seeded permutation. Same labels, size and seed
    → identical split.
    """
    n = len(labels)
    if val_size == 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    exact = val_size * counts / n
    quota = np.floor(exact).astype(np.int64)
    remainder = val_size - int(quota.sum())
    if remainder:
        order = np.lexsort((np.arange(len(classes)), -(exact - quota)))  # largest fraction first
        quota[order[:remainder]] += 1
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    grouped = perm[np.argsort(labels[perm], kind="stable")]  # by class, each class in permuted order
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    val_idx = np.sort(np.concatenate([grouped[s : s + q] for s, q in zip(starts, quota, strict=True)]))
    keep = np.ones(n, dtype=bool)
    keep[val_idx] = False
    return np.flatnonzero(keep).astype(np.int64), val_idx.astype(np.int64)


def pixel_moments(images: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Per-image channel sums and sums of squares of uint8 ``(N, H, W, 3)`` images.

    Returns float64 ``(N, 2, 3)``: ``[:, 0]`` sums, ``[:, 1]`` sums of squares, in 0..255 pixel
    units (float32 partial sums, relative error ~1e-7 — ample for normalisation statistics).
    """
    n = images.shape[0]
    out = np.empty((n, 2, 3), dtype=np.float64)
    for start in range(0, n, chunk):
        c = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk])).to(torch.float32)
        c = c.reshape(c.shape[0], -1, 3)
        out[start : start + chunk, 0] = c.sum(1).double().numpy()
        out[start : start + chunk, 1] = (c * c).sum(1).double().numpy()
    return out


def mean_std_from_moments(
    moments: np.ndarray, pixels_per_image: int
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and (population) std in [0, 1] units from :func:`pixel_moments` rows."""
    if len(moments) == 0:
        raise ValueError("cannot compute channel statistics of an empty image set")
    total = moments.sum(axis=0)
    count = len(moments) * pixels_per_image
    mean = total[0] / count
    var = np.maximum(total[1] / count - mean * mean, 0.0)
    m = [float(v) for v in mean / 255.0]
    s = [float(v) for v in np.sqrt(var) / 255.0]
    return (m[0], m[1], m[2]), (s[0], s[1], s[2])


def channel_mean_std(images: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and population std of uint8 ``(N, H, W, 3)`` images, in [0, 1] pixel units."""
    return mean_std_from_moments(pixel_moments(images), images.shape[1] * images.shape[2])
