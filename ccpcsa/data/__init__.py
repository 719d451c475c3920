"""Data loading: spec strings → cached uint8 arrays → train/val/test splits → normalized batches.

Public API::

    load_data(spec, val_size=None, seed=0, cache_dir=".cache/data", progress=True) -> DataSplits
    BatchLoader(dataset, batch_size, mean, std, shuffle=False, augment=False, seed=0, ...)
    normalize_batch(images_uint8_nhwc, mean, std) -> float32 NCHW tensor
    augment_batch(images_uint8_nhwc, generator, pad=4, flip=True) -> uint8 NHWC tensor
    ArrayDataset, DataSplits, SPEC_FORMS

Spec strings: ``imagefolder:PATH``, ``cifar10[:DIR]``, ``cifar100[:DIR]``, ``synthetic``,
``synthetic:N_TRAIN:N_TEST``, ``synthetic?classes=C&size=S&train=N&test=M&seed=K``.
The cache folder (``.cache/`` by default) must be git-ignored.
"""

from .dataset import ArrayDataset, DataSplits
from .load import DEFAULT_CACHE_DIR, load_data
from .loader import BatchLoader
from .sources import SPEC_FORMS, parse_spec
from .transforms import augment_batch, normalize_batch

__all__ = [
    "DEFAULT_CACHE_DIR",
    "SPEC_FORMS",
    "ArrayDataset",
    "BatchLoader",
    "DataSplits",
    "augment_batch",
    "load_data",
    "normalize_batch",
    "parse_spec",
]
