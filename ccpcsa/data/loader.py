"""``BatchLoader``: shuffled, sharded, augmented mini-batches straight from uint8 arrays."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .dataset import ArrayDataset
from .transforms import _normalize, apply_augment, augment_batch, draw_augment, mix_seed, normalization_params

if TYPE_CHECKING:
    from .views import ViewPool

#: A resident (device-held) copy of the dataset may take at most this fraction of the device's free memory.
RESIDENT_MAX_FREE_FRACTION = 0.25


class BatchLoader:
    """Iterate ``(x, y)`` batches over an :class:`ArrayDataset`.

    ``x`` is float32 ``(B, 3, H, W)`` normalized with ``mean``/``std`` ([0, 1] units), contiguous
    NCHW or ``torch.channels_last`` if ``channels_last``; ``y`` is int64 ``(B,)``. Both are on
    ``device``; the uint8 batch is moved first and converted there.

    Order: ``shuffle=False`` keeps dataset order; ``shuffle=True`` uses a permutation seeded by
    ``(seed, epoch)`` — identical on every rank — so call :meth:`set_epoch` each epoch.

    Sharding (``world_size > 1``, like ``DistributedSampler``): the permutation is padded by
    wrapping around to a multiple of ``world_size`` and rank ``r`` takes positions
    ``r, r + world_size, ...``, so shards are disjoint (apart from the wrapped padding) and every
    rank has ``ceil(N / world_size)`` samples and the same number of batches.
    ``drop_last`` drops this rank's final incomplete batch.

    ``augment=True`` applies :func:`augment_batch` (pad-4 black crop + horizontal flip) before
    normalization, with a generator seeded by ``(seed, epoch, rank)``: reproducible, different per
    epoch and per rank.

    ``resident``: keep the uint8 dataset on ``device`` — copied once when the loader is built, never per
    batch — and gather, augment and normalize each batch there; the epoch's order and augmentation draws go
    to the device in one copy per epoch, so iterating never waits for the device (no host sync per batch).
    ``None`` (default) = on a CUDA device when the images take at most :data:`RESIDENT_MAX_FREE_FRACTION` of
    its free memory. Batches are identical either way (same order, same draws).

    ``views`` (:class:`ccpcsa.data.views.ViewPool` of this dataset): instead of fresh augmentation draws,
    every sample is one of its image's ``K`` pooled views, picked uniformly by a generator seeded with
    ``(seed, epoch, rank)``, and each batch is ``(x, y, teacher_logits)`` — the cached teacher logits of exactly those
    views (float32 ``(B, classes)`` on ``device``).
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        resident: bool | None = None,
        views: ViewPool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.epoch = 0
        if views is not None and views.dataset is not dataset:
            raise ValueError("the view pool was built for another dataset")
        self.views = views
        self._scale, self._bias = normalization_params(mean, std, self.device)
        self.resident = _fits_on_device(dataset, self.device) if resident is None else bool(resident)
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        if self.resident:
            self._images = torch.from_numpy(np.ascontiguousarray(dataset.images)).to(self.device)
            self._labels = torch.from_numpy(np.ascontiguousarray(dataset.labels)).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order and augmentation draws the next iteration uses."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (``ceil(N / world_size)``, before ``drop_last``)."""
        return math.ceil(len(self.dataset) / self.world_size)

    def __len__(self) -> int:
        """Number of batches this rank yields per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self) -> np.ndarray:
        """Dataset indices this rank visits this epoch, in order (int64)."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=g).numpy()
        else:
            order = np.arange(n, dtype=np.int64)
        if self.world_size > 1 and n > 0:
            order = np.resize(order, self.num_samples * self.world_size)[self.rank :: self.world_size]
        return order.astype(np.int64, copy=False)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.views is not None:
            yield from self._iter_views(self.views)
            return
        if self.resident:
            yield from self._iter_resident()
            return
        order = self.indices()
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, 1))
        for b in range(len(self)):
            x, y = self._take(order[b * self.batch_size : (b + 1) * self.batch_size])
            if self.augment:
                x = augment_batch(x, gen)
            yield _normalize(x, self._scale, self._bias, self.channels_last), y

    def _take(self, idx: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images and labels at dataset indices ``idx`` on the device: gathered from the resident copy (``idx``
        a device tensor) or from the host arrays (``idx`` a numpy array), copied there."""
        if self.resident:
            assert self._images is not None and self._labels is not None and isinstance(idx, torch.Tensor)
            return self._images.index_select(0, idx), self._labels.index_select(0, idx)
        non_blocking = self.device.type == "cuda"
        return (torch.from_numpy(self.dataset.images[idx]).to(self.device, non_blocking=non_blocking),
                torch.from_numpy(self.dataset.labels[idx]).to(self.device, non_blocking=non_blocking))

    def _iter_resident(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches gathered from the device-resident copy; the same batches as the host path."""
        assert self._images is not None and self._labels is not None
        order_np = self.indices()
        n_batches = len(self)
        sizes = [len(order_np[b * self.batch_size : (b + 1) * self.batch_size]) for b in range(n_batches)]
        order = _to_device(torch.from_numpy(order_np), self.device)
        params: list[torch.Tensor | None] = [None, None, None]
        if self.augment and n_batches:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, 1))
            draws = [draw_augment(k, gen) for k in sizes]  # batch by batch: the host path's exact sequence
            params = [_to_device(torch.cat([d[j] for d in draws]), self.device) if draws[0][j] is not None else None
                      for j in range(3)]
        for b, k in enumerate(sizes):
            lo = b * self.batch_size
            x, y = self._take(order[lo : lo + k])
            if self.augment:
                x = apply_augment(x, *(p[lo : lo + k] if p is not None else None for p in params))
            yield _normalize(x, self._scale, self._bias, self.channels_last), y

    def _iter_views(self, pool: ViewPool) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches of pooled views with their cached teacher logits; the epoch's picks, parameters and logits go to
        the device in one copy each."""
        order_np = self.indices()
        order = torch.from_numpy(order_np)
        pick = torch.randint(0, pool.k, (len(order_np),), generator=torch.Generator().manual_seed(
            mix_seed(self.seed, self.epoch, self.rank, 2)))
        params = [None if p is None else _to_device(p, self.device) for p in pool.params(order, pick)]
        logits = _to_device(pool.logits[order, pick], self.device)
        take = _to_device(order, self.device) if self.resident else order_np
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min(len(order_np), (b + 1) * self.batch_size)
            x, y = self._take(take[lo:hi])
            oy, ox, flip = (None if p is None else p[lo:hi] for p in params)
            x = apply_augment(x, oy, ox, flip, pad=pool.pad)
            yield _normalize(x, self._scale, self._bias, self.channels_last), y, logits[lo:hi]


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor → ``device`` without a host sync (pinned + non_blocking on CUDA)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _fits_on_device(dataset: ArrayDataset, device: torch.device) -> bool:
    """Whether a resident copy of ``dataset`` belongs on ``device``: CUDA only, within the free-memory budget."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        free, _total = torch.cuda.mem_get_info(device)
    except RuntimeError:
        return False
    return dataset.images.nbytes + dataset.labels.nbytes <= RESIDENT_MAX_FREE_FRACTION * free
