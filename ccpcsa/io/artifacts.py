"""Atomic artifact writing and hashing.

Every artifact is written to a temporary file in the destination directory, flushed, fsync'ed and
then renamed over the destination (``os.replace`` is atomic on POSIX), so a reader sees either the
old complete file or the new complete file — never a truncated one. If writing fails (disk full,
crash, exception) the temporary file is removed and the previous artifact survives. A failure the
user can fix — disk full or quota exceeded, a read-only or otherwise unwritable destination — is
re-raised as :class:`~ccpcsa.errors.ArtifactWriteError` (a one-line ``UserError`` that is also an
``OSError``) naming the artifact.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import UserError, write_error


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on clean exit it is fsync'ed and renamed to ``dest``.

    The caller writes the whole artifact to the yielded path. On an exception the temporary file
    is deleted and ``dest`` is left untouched; disk-full and not-writable failures become an
    :class:`~ccpcsa.errors.ArtifactWriteError` naming ``dest``.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise (write_error(exc, dest) or exc) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the artifact the mode a plain open() would (or the replaced file's mode).
    with contextlib.suppress(OSError):
        os.chmod(tmp, dest.stat().st_mode & 0o7777 if dest.exists() else 0o666 & ~_umask())
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, UserError):
            raise
        user = write_error(exc, dest) if isinstance(exc, (OSError, RuntimeError)) else None
        if user is None and isinstance(exc, RuntimeError) and "write" in str(exc).lower() and _nearly_full(dest.parent):
            # torch.save reports ENOSPC as "PytorchStreamWriter failed writing file …: file write failed".
            user = write_error(OSError(errno.ENOSPC, "No space left on device"), dest)
        if user is not None:
            raise user from exc
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_writable_dir(directory: str | os.PathLike[str], what: str = "output directory") -> Path:
    """Create ``directory`` if needed and prove a file can be created in it; return it as a Path.

    Raises :class:`~ccpcsa.errors.UserError` naming ``what`` and ``directory`` when it cannot be
    created or written (permission, read-only file system, a path component that is a file, disk full).
    Nothing existing is modified: the probe is a fresh temporary file, removed again.
    """
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise UserError(f"{what} {d} is a file, not a directory; choose another location")
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{what} {d} is not writable ({exc.strerror or exc}); choose another location") from exc
    return d


def _nearly_full(directory: Path, min_free: int = 1 << 20) -> bool:
    """True when the file system holding ``directory`` has less than ``min_free`` bytes available."""
    try:
        return shutil.disk_usage(directory).free < min_free
    except OSError:
        return False


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically and return ``dest`` as a Path."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``dest`` atomically."""
    return atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_json(dest: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``dest`` atomically."""
    return atomic_write_text(dest, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
