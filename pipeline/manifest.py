"""Run directory bookkeeping: ``manifest.json`` (per-stage status, inputs/outputs with SHA-256, config
hash, metrics, times) and the run lock.

The manifest is rewritten atomically after every stage transition, so a crash at any moment leaves
either the previous or the new manifest. A stage's outputs are recorded only after they were
written completely (atomically) and hashed, and a stage that starts is first recorded as ``running``
with no outputs (it may be about to replace them); on resume a stage counts as done only if every
recorded output still exists with the recorded hash, so a partial file is never taken as valid.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccpcsa.errors import UserError
from ccpcsa.io.artifacts import atomic_write_json, sha256_file

from .artifacts import MANIFEST

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"
STALE_EMPTY_S = 5.0  # O_EXCL fallback: an empty/half-written lock file older than this is stale
TEMP_GLOBS = (".*.tmp",)  # ccpcsa.io.artifacts.atomic_path's temporary files: ".<name>.<random>.tmp"
# scratch folders: export.quantize's ".<name>.<random>.quant.tmp" (with onnxruntime's own temporary folders inside)
TEMP_DIR_GLOBS = (".*.tmp",)
TEMP_DIRS = (".", "plots")  # folders of a run directory the stages write into


def now() -> str:
    """UTC timestamp, ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Manifest:
    """In-memory view of ``manifest.json``; ``save()`` writes it atomically."""

    path: Path
    data: dict[str, Any]

    @classmethod
    def open(cls, run_dir: Path, run_name: str) -> Manifest:
        p = run_dir / MANIFEST
        data: dict[str, Any] = {"run": run_name, "stages": {}}
        if p.exists():
            try:
                data = json.loads(p.read_text())
                assert isinstance(data.get("stages"), dict)
            except (ValueError, AssertionError):
                # The manifest is only ever replaced atomically, so this means outside damage: start over.
                data = {"run": run_name, "stages": {}}
        return cls(p, data)

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.data["stages"].get(name)

    def set_stage(self, name: str, record: dict[str, Any]) -> None:
        self.data["stages"][name] = record
        self.save()

    def is_current(self, name: str, key: str, run_dir: Path) -> bool:
        """True when stage ``name`` finished (ok/skipped) with the same key and all its outputs are intact."""
        rec = self.stage(name)
        if not rec or rec.get("status") not in ("ok", "skipped") or rec.get("key") != key:
            return False
        return outputs_intact(rec, run_dir)


def outputs_intact(record: dict[str, Any], run_dir: Path) -> bool:
    """True when every output a stage record lists still exists in ``run_dir`` with its recorded SHA-256."""
    for rel, digest in (record.get("outputs") or {}).items():
        p = run_dir / rel
        if not p.is_file() or sha256_file(p) != digest:
            return False
    return True


def clear_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in ``run_dir`` (and ``plots/``), and the
    scratch folders (:data:`TEMP_DIR_GLOBS`, e.g. quantization's) a killed stage left there, with their contents.

    Only call this while holding :func:`run_lock`: then no other writer can own such a file. They were
    never renamed into place, so nothing in the manifest refers to them. Symbolic links are never followed.
    """
    removed = []
    for sub in TEMP_DIRS:
        folder = run_dir / sub
        if not folder.is_dir():
            continue
        for pattern in TEMP_GLOBS:
            for p in sorted(folder.glob(pattern)):
                if p.is_file() and not p.is_symlink():
                    p.unlink(missing_ok=True)
                    removed.append(p)
        for pattern in TEMP_DIR_GLOBS:
            for p in sorted(folder.glob(pattern)):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
    return removed


def hash_outputs(run_dir: Path, paths: list[Path]) -> dict[str, str]:
    """``{relative path: sha256}`` of artifacts inside ``run_dir``."""
    return {str(p.relative_to(run_dir)): sha256_file(p) for p in paths}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(lock: Path) -> dict[str, Any]:
    """The JSON a lock file holds (``{}`` when it is absent, empty, half-written or not JSON)."""
    try:
        held = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return held if isinstance(held, dict) else {}


def _locked_error(run_dir: Path, lock: Path, held: dict[str, Any]) -> UserError:
    return UserError(f"run directory {run_dir} is locked by pid {held.get('pid') or '?'} on {held.get('host', '?')} "
                     f"since {held.get('since', '?')}; wait for it to finish or remove {lock} if it is dead")


def _is_stale(lock: Path, held: dict[str, Any], host: str) -> bool:
    """Pid-based staleness (used only where ``flock`` is unavailable): a dead pid on this host, or a
    lock file that stayed empty/half-written for more than :data:`STALE_EMPTY_S` seconds."""
    pid = int(held.get("pid", 0) or 0) if str(held.get("pid", "0")).isdigit() else 0
    if held.get("host") == host and pid and not _pid_alive(pid):
        return True
    if not held:
        try:
            return time.time() - lock.stat().st_mtime > STALE_EMPTY_S
        except FileNotFoundError:
            return True
    return False


def _try_flock(fd: int) -> bool | None:
    """Take an exclusive non-blocking ``flock`` on ``fd``: True when taken, False when another open file
    holds it, None when the platform or file system has no ``flock``."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EINVAL, …: no flock here
    return True


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[dict[str, Any]]:
    """Exclusive lock on a run directory: the lock file ``.lock`` holds host, pid and start time.

    Liveness comes from an exclusive ``flock`` on that file, which the kernel drops when its holder
    exits in any way (SIGKILL, OOM kill, crash), so a lock file left by a killed run is stale by
    construction: the next run takes it over and rewrites it at once (no pid guessing, no race between
    two runs clearing the same stale lock). A second concurrent run is refused with a
    :class:`UserError` naming the holder. Where ``flock`` is unavailable it falls back to ``O_EXCL``
    creation plus a pid check (a dead pid on this host, or a file left empty for more than
    :data:`STALE_EMPTY_S` seconds, is stale). The lock file is removed on exit.

    Yields the record of the stale lock it cleared (``{}`` when there was none; ``{"pid": None}``
    for an empty or half-written one).
    """
    lock = run_dir / LOCK
    host = socket.gethostname()
    me = {"pid": os.getpid(), "host": host, "since": now()}
    stale: dict[str, Any] = {}
    for _ in range(20):
        try:
            try:
                fd, created = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                fd, created = os.open(lock, os.O_RDWR), False
        except FileNotFoundError:  # unlinked between the two opens by a finishing run: try again
            continue
        except OSError as exc:
            raise UserError(f"cannot open the lock file {lock} ({exc.strerror}); check the permissions of {run_dir}") from exc
        taken = _try_flock(fd)
        if taken is None:  # no flock on this platform / file system: O_EXCL + pid protocol
            if not created:
                os.close(fd)
                fd, stale = _exclusive_create(run_dir, lock, host)
            break
        if not taken:
            os.close(fd)
            raise _locked_error(run_dir, lock, _read_holder(lock))
        # A finishing run unlinks the file while still holding its flock: make sure the path still
        # names the inode we locked, else we would hold a lock on an orphaned file; then start again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            if not created:  # a lock file nobody holds: left by a run that was killed
                stale = _read_holder(lock) or {"pid": None}
            break
        os.close(fd)
    else:
        raise UserError(f"could not take the lock {lock}: it keeps being replaced; is another run starting in {run_dir}?")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        yield stale
    finally:
        # unlink while still holding it: a run waiting on this inode sees the path changed (above)
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                lock.unlink()
        os.close(fd)


def _exclusive_create(run_dir: Path, lock: Path, host: str) -> tuple[int, dict[str, Any]]:
    """``O_EXCL`` fallback of :func:`run_lock`: create the lock file, clearing a stale one once."""
    stale: dict[str, Any] = {}
    for _ in range(2):
        try:
            return os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644), stale
        except FileExistsError:
            held = _read_holder(lock)
            if not _is_stale(lock, held, host):
                raise _locked_error(run_dir, lock, held) from None
            stale = held or {"pid": None}
            lock.unlink(missing_ok=True)
    raise _locked_error(run_dir, lock, _read_holder(lock))
