"""Data-source spec strings → source objects.

Forms (see :data:`SPEC_FORMS`):

* ``imagefolder:PATH`` — a directory or ``.tar.gz``/``.tgz`` (any tar) with ``train/<class>/``
  and ``test/<class>/``, optionally inside one top-level folder (:mod:`.imagefolder`).
* ``cifar10[:DIR]`` / ``cifar100[:DIR]`` — official python-pickle batches, ``DIR`` defaulting to
  ``~/.cache/ccpcsa/cifar`` (:mod:`.cifar`).
* ``synthetic``, ``synthetic:N_TRAIN:N_TEST``, ``synthetic?classes=C&size=S&train=N&test=M&seed=K``
  — generated offline (:mod:`.synthetic`).

Every source has ``spec``, ``kind``, ``key() -> str`` (the content hash keying the cache) and
``build(progress) -> RawData``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..errors import UserError, unknown
from .cifar import DEFAULT_DIR, CifarSource
from .imagefolder import EXPECTED, ImageFolderSource
from .raw import RawData
from .synthetic import SyntheticSource, parse_synthetic

SPEC_FORMS = (
    "imagefolder:PATH",
    "cifar10[:DIR]",
    "cifar100[:DIR]",
    "synthetic[:N_TRAIN:N_TEST]",
    "synthetic?classes=C&size=S&train=N&test=M&seed=K",
)


class Source(Protocol):
    """What :func:`parse_spec` returns."""

    spec: str
    kind: str

    def key(self) -> str: ...

    def build(self, progress: bool = True) -> RawData: ...


def parse_spec(spec: str, progress: bool = True) -> Source:
    """Turn a spec string into a source; raise UserError for an unknown form or a missing path.

    Cheap: it checks paths exist but reads no data (CIFAR batches are downloaded later, by
    ``key()``, if missing).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"empty dataset spec; use one of: {', '.join(SPEC_FORMS)}")
    spec = spec.strip()
    if spec == "synthetic" or spec.startswith(("synthetic:", "synthetic?")):
        return SyntheticSource(spec, parse_synthetic(spec))
    name, sep, rest = spec.partition(":")
    if name == "imagefolder":
        if not rest:
            raise UserError(f"'{spec}' needs a path: imagefolder:PATH, where PATH is {EXPECTED}")
        path = Path(rest).expanduser()
        if not path.exists():
            raise UserError(f"dataset path {path} does not exist; expected {EXPECTED}")
        return ImageFolderSource(spec, path)
    if name in ("cifar10", "cifar100"):
        root = Path(rest).expanduser() if rest else DEFAULT_DIR.expanduser()
        return CifarSource(spec, name, root, progress=progress)
    raise unknown("dataset", name.split("?", 1)[0], SPEC_FORMS)
