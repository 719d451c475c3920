"""``BatchLoader``: shuffled, sharded, augmented mini-batches straight from uint8 arrays."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .dataset import ArrayDataset
from .transforms import _normalize, augment_batch, normalization_params


def _mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (so (seed, epoch) pairs never collide like seed+epoch)."""
    entropy = [int(v) & 0xFFFF_FFFF_FFFF_FFFF for v in values]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


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
        self._scale, self._bias = normalization_params(mean, std, self.device)

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
            g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=g).numpy()
        else:
            order = np.arange(n, dtype=np.int64)
        if self.world_size > 1 and n > 0:
            order = np.resize(order, self.num_samples * self.world_size)[self.rank :: self.world_size]
        return order.astype(np.int64, copy=False)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices()
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, self.rank, 1))
        non_blocking = self.device.type == "cuda"
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = torch.from_numpy(self.dataset.images[idx]).to(self.device, non_blocking=non_blocking)
            y = torch.from_numpy(self.dataset.labels[idx]).to(self.device, non_blocking=non_blocking)
            if self.augment:
                x = augment_batch(x, gen)
            yield _normalize(x, self._scale, self._bias, self.channels_last), y
