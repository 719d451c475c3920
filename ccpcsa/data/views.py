"""A fixed pool of augmented views of every training image, with the teacher's logits on each
(:mod:`ccpcsa.training.teacher_views` builds it; :class:`ccpcsa.data.loader.BatchLoader` serves batches from it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dataset import ArrayDataset
from .transforms import draw_augment, mix_seed

#: The loader's augmentation: pad-4 black crop and horizontal flip (:func:`ccpcsa.data.transforms.augment_batch`).
PAD = 4


@dataclass(frozen=True)
class ViewPool:
    """``K`` fixed views of each of ``N`` images and the teacher's logits on each.

    ``oy``, ``ox``: int64 ``(N, K)`` crop offsets of the ``pad``-padded image (None when ``pad == 0``); ``flip``: bool
    ``(N, K)`` (None without flipping); ``logits``: float32 ``(N, K, classes)`` on the CPU — the teacher's output on
    view ``v`` of image ``i`` is ``logits[i, v]``. ``dataset`` is the data the pool was built for."""

    oy: torch.Tensor | None
    ox: torch.Tensor | None
    flip: torch.Tensor | None
    logits: torch.Tensor
    pad: int
    dataset: ArrayDataset

    @property
    def k(self) -> int:
        """Views per image."""
        return int(self.logits.shape[1])

    def params(self, index: torch.Tensor, view: torch.Tensor) -> list[torch.Tensor | None]:
        """The augmentation parameters ``[oy, ox, flip]`` of view ``view[j]`` of image ``index[j]`` (CPU tensors)."""
        return [None if p is None else p[index, view] for p in (self.oy, self.ox, self.flip)]


def draw_views(n: int, k: int, seed: int, augment: bool = True) -> tuple[torch.Tensor | None, ...]:
    """``(oy, ox, flip)`` of ``k`` views for each of ``n`` images, each ``(n, k)``, drawn by :func:`draw_augment` from
    a generator seeded from ``seed`` (the same pool for the same seed); without ``augment`` all three are None."""
    if not augment:
        return None, None, None
    draws = draw_augment(n * k, torch.Generator().manual_seed(mix_seed(seed, 3)), pad=PAD, flip=True)
    return tuple(None if d is None else d.view(n, k) for d in draws)
