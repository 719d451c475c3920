"""The distillation teacher's logits computed once, for a fixed pool of augmented views of every training image.

Online distillation runs the frozen teacher on every training batch, a large share of each step when the teacher is
the unpruned model and the student a slim copy (bench/README.md "Distillation from cached views"). Following FKD
(Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", ECCV 2022), ``K`` augmented views of
each of the ``N`` training images are drawn once (the loader's pad-4 crop and flip, fixed per image and view), the
teacher runs on each view once (``N·K`` forwards in large no-grad batches), and every fine-tune then trains on one of
an image's ``K`` views per visit — the student sees exactly the view whose teacher logits are cached, so the
distillation term is unchanged; what changes is that augmentation draws from ``K`` views per image instead of
``(2·pad + 1)² · 2``. It pays when the fine-tunes visit each image more than ``K`` times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.dataset import ArrayDataset
from ..data.transforms import _normalize, apply_augment, normalization_params
from ..data.views import PAD, ViewPool, draw_views
from ..errors import UserError
from ..models.outputs import main_logits

#: The cached logits may take at most this many bytes (float32, ``N·K·classes``); more is one :class:`UserError` line.
MAX_POOL_BYTES = 2 * 1024**3
#: Images per teacher forward while the pool is built (no gradient: larger batches than training's are cheap).
POOL_BATCH = 512


@torch.no_grad()
def build_pool(teacher: nn.Module, dataset: ArrayDataset, mean: tuple[float, ...] | list[float],
               std: tuple[float, ...] | list[float], k: int, seed: int, device: torch.device, *, augment: bool = True,
               channels_last: bool = False, autocast: Callable[[], AbstractContextManager[object]] | None = None,
               progress: bool = True) -> ViewPool:
    """The teacher's logits on ``k`` views (``k = 1`` without ``augment``: the images themselves) of every image of
    ``dataset``: ``N·k`` forwards of ``teacher`` (in eval mode, no gradient, under ``autocast`` — the context the
    fine-tunes' online teacher would run in), :data:`POOL_BATCH` images at a time on ``device``. A pool over
    :data:`MAX_POOL_BYTES` is one :class:`UserError` line naming the fix."""
    k = int(k) if augment else 1
    n = len(dataset)
    teacher.eval()
    scale, bias = normalization_params(mean, std, device)
    oy, ox, flip = draw_views(n, k, seed, augment)
    logits: torch.Tensor | None = None
    bar = tqdm(total=n * k, desc="teacher views", unit="img", disable=not progress, leave=False, dynamic_ncols=True)
    for v in range(k):
        for lo in range(0, n, POOL_BATCH):
            hi = min(n, lo + POOL_BATCH)
            x = torch.from_numpy(dataset.images[lo:hi]).to(device)
            vy, vx, vf = (None if p is None else p[lo:hi, v].to(device) for p in (oy, ox, flip))
            x = apply_augment(x, vy, vx, vf, pad=PAD)
            with autocast() if autocast is not None else torch.autocast("cpu", enabled=False):
                z = main_logits(teacher(_normalize(x, scale, bias, channels_last))).float().cpu()
            if logits is None:
                need = n * k * z.shape[1] * 4
                if need > MAX_POOL_BYTES:
                    raise UserError(f"prune.recovery.distill.views={k} would cache {need / 1024**3:.1f} GiB of teacher "
                                    f"logits ({n} images × {k} views × {z.shape[1]} classes); lower it or set 0 (the "
                                    "teacher runs on every batch)")
                logits = torch.empty((n, k, z.shape[1]), dtype=torch.float32)
            logits[lo:hi, v] = z
            bar.update(hi - lo)
    bar.close()
    assert logits is not None, "an empty training split has no views"
    return ViewPool(oy, ox, flip, logits, PAD if augment else 0, dataset)


class TeacherViews:
    """``prune.recovery.distill.views``: ``k`` cached views per image for every fit that distills from one teacher.

    :meth:`pool` builds the :class:`ViewPool` at the first fit and hands the same one to the later fits on the same
    training split (the pruning loop's statistics epoch, step fine-tunes and final fine-tune share one); ``seconds``
    is what building it took."""

    def __init__(self, k: int, seed: int = 0) -> None:
        if k < 1:
            raise ValueError(f"views must be ≥ 1, got {k}")
        self.k, self.seed = int(k), int(seed)
        self.seconds = 0.0
        self._pool: ViewPool | None = None

    @property
    def built(self) -> ViewPool | None:
        """The pool built so far (None before the first fit)."""
        return self._pool

    def pool(self, teacher: nn.Module, dataset: ArrayDataset, mean: tuple[float, ...] | list[float],
             std: tuple[float, ...] | list[float], device: torch.device, *, augment: bool, channels_last: bool,
             autocast: Callable[[], AbstractContextManager[object]] | None, progress: bool) -> ViewPool:
        """The pool for ``dataset`` (built on first use, then reused while the split is the same object)."""
        if self._pool is None or self._pool.dataset is not dataset:
            t0 = time.perf_counter()
            self._pool = build_pool(teacher, dataset, mean, std, self.k, self.seed, device, augment=augment,
                                    channels_last=channels_last, autocast=autocast, progress=progress)
            self.seconds = time.perf_counter() - t0
            tqdm.write(f"teacher logits cached for {self._pool.k} view(s) of each of {len(dataset)} training images "
                       f"in {self.seconds:.0f}s (prune.recovery.distill.views)")
        return self._pool
