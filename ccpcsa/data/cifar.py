"""``cifar10[:DIR]`` / ``cifar100[:DIR]`` sources: the official CIFAR python-pickle batches.

The batches are looked up in ``DIR/cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``,
``batches.meta``) or ``DIR/cifar-100-python/`` (``train``, ``test``, ``meta``; fine labels), or
directly in ``DIR``. ``DIR`` defaults to ``~/.cache/ccpcsa/cifar``. If they are missing, the
official tarball is downloaded (short timeout, MD5-checked) and extracted into ``DIR``; if that
fails a :class:`UserError` names the exact folder to put the extracted batches in.

Security: the batches are Python pickles (the official format), loaded with
``pickle.load(f, encoding="bytes")``. Unpickling can run code, so only point this source at
trusted CIFAR files (the official release or files you wrote yourself).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from ..io.artifacts import atomic_path
from .raw import RawData

DEFAULT_DIR = Path("~/.cache/ccpcsa/cifar")
DOWNLOAD_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class CifarVariant:
    """File names and pickle keys of one CIFAR release."""

    name: str
    folder: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes

    @property
    def all_files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


VARIANTS = {
    "cifar10": CifarVariant(
        name="cifar10",
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": CifarVariant(
        name="cifar100",
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}


def fetch_url(url: str, dest: Path, md5: str, timeout: float, progress: bool) -> None:
    """Download ``url`` to ``dest`` atomically and check its MD5 (raises OSError/ValueError on failure)."""
    h = hashlib.md5()
    with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_path(dest) as tmp:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with (
            open(tmp, "wb") as out,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"downloading {dest.name}",
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while block := resp.read(1 << 20):
                out.write(block)
                h.update(block)
                bar.update(len(block))
        if h.hexdigest() != md5:
            raise ValueError(f"MD5 mismatch: got {h.hexdigest()}, expected {md5}")


class CifarSource:
    """CIFAR-10/100 pickle batches under ``root`` (downloaded there if missing)."""

    def __init__(self, spec: str, variant: str, root: Path, progress: bool = True) -> None:
        self.spec = spec
        self.kind = variant
        self.variant = VARIANTS[variant]
        self.root = root
        self.progress = progress
        self._folder: Path | None = None

    def _find(self) -> Path | None:
        for cand in (self.root / self.variant.folder, self.root):
            if all((cand / f).is_file() for f in self.variant.all_files):
                return cand
        return None

    def folder(self) -> Path:
        """The folder holding the batches, downloading them first if needed (UserError on failure)."""
        if self._folder is not None:
            return self._folder
        found = self._find()
        if found is None:
            target = self.root / self.variant.folder
            archive = self.root / Path(self.variant.url).name
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                fetch_url(self.variant.url, archive, self.variant.md5, DOWNLOAD_TIMEOUT_S, self.progress)
                _extract(archive, self.root, self.variant.folder)
                archive.unlink(missing_ok=True)
            except (OSError, ValueError, tarfile.TarError, EOFError) as exc:
                raise UserError(
                    f"{self.variant.name} batches not found in {target} and the download of "
                    f"{self.variant.url} failed ({exc}); download and extract it yourself so that "
                    f"{target}/{self.variant.train_files[0]} exists"
                ) from None
            found = self._find()
            if found is None:
                raise UserError(
                    f"{self.variant.name}: the downloaded archive did not contain the expected batches; "
                    f"put the extracted files ({', '.join(self.variant.all_files)}) in {target}"
                )
        self._folder = found
        return found

    def key(self) -> str:
        """Hash of the batch files' names, sizes and modification times."""
        folder = self.folder()
        files = []
        for name in self.variant.all_files:
            st = (folder / name).stat()
            files.append((name, st.st_size, st.st_mtime_ns))
        payload = {"kind": self.variant.name, "files": files}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def build(self, progress: bool = True) -> RawData:
        """Load and concatenate the train and test batches (UserError if a batch is malformed)."""
        folder = self.folder()
        meta = _unpickle(folder / self.variant.meta_file)
        try:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[self.variant.names_key]]
        except (KeyError, TypeError) as exc:
            raise UserError(
                f"{folder / self.variant.meta_file} is not a valid CIFAR meta file ({exc})"
            ) from None
        train = [self._batch(folder / f) for f in self.variant.train_files]
        test = [self._batch(folder / f) for f in self.variant.test_files]
        raw = RawData(
            train_images=np.concatenate([b[0] for b in train]),
            train_labels=np.concatenate([b[1] for b in train]),
            test_images=np.concatenate([b[0] for b in test]),
            test_labels=np.concatenate([b[1] for b in test]),
            classes=classes,
        )
        if raw.train_images.shape[1:] != raw.test_images.shape[1:]:
            raise UserError(f"{folder}: train and test batches have different image sizes")
        for labels in (raw.train_labels, raw.test_labels):
            if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
                raise UserError(
                    f"{folder}: labels outside 0..{len(classes) - 1} (meta lists {len(classes)} classes)"
                )
        return raw

    def _batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        batch = _unpickle(path)
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[self.variant.label_key], dtype=np.int64)
            n, flat = data.shape
            side = int(round((flat / 3) ** 0.5))
            if 3 * side * side != flat or labels.shape != (n,):
                raise ValueError(f"data shape {data.shape} and {labels.shape[0]} labels do not match")
        except (KeyError, ValueError, TypeError) as exc:
            raise UserError(f"{path} is not a valid CIFAR batch file ({exc})") from None
        images = np.ascontiguousarray(data.reshape(n, 3, side, side).transpose(0, 2, 3, 1))
        return images, labels


def _unpickle(path: Path) -> Any:
    """Load one trusted CIFAR pickle (official format; see the module docstring on security)."""
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="bytes")  # trusted CIFAR batches only
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as exc:
        raise UserError(f"{path} is not a readable CIFAR pickle batch ({exc})") from None


def _extract(archive: Path, dest: Path, folder: str) -> None:
    """Extract the members under ``folder/`` of a CIFAR tarball into ``dest`` (safe filter)."""
    with tarfile.open(archive, "r:gz") as tf:
        members = [m for m in tf.getmembers() if m.name == folder or m.name.startswith(folder + "/")]
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - Python without PEP 706 filters
            for m in members:
                if m.name.startswith("/") or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                    raise tarfile.TarError(f"unsafe member {m.name}")
            tf.extractall(dest, members=members)
