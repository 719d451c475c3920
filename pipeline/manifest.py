"""Run directory bookkeeping: ``manifest.json`` (per-stage status, inputs/outputs with SHA-256, config
hash, metrics, times) and the run lock.

The manifest is rewritten atomically after every stage transition, so a crash at any moment leaves
either the previous or the new manifest. A stage's outputs are recorded only after they were
written completely (atomically) and hashed; on resume a stage counts as done only if every recorded
output still exists with the recorded hash, so a partial file is never taken as valid.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccpcsa.artifacts import atomic_write_json, sha256_file
from ccpcsa.errors import UserError

MANIFEST = "manifest.json"
LOCK = ".lock"


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
        for rel, digest in (rec.get("outputs") or {}).items():
            p = run_dir / rel
            if not p.is_file() or sha256_file(p) != digest:
                return False
        return True


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


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on a run directory (``O_EXCL`` lock file holding host and pid).

    A second concurrent run is refused with a :class:`UserError`. A lock left by a killed process on
    this host (pid no longer alive) is detected as stale, cleared, and taken.
    """
    lock = run_dir / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                held = {}
            pid = int(held.get("pid", 0) or 0)
            if held.get("host") == me["host"] and pid and not _pid_alive(pid):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            if not held:  # half-written lock (killed between create and write)
                age = time.time() - lock.stat().st_mtime
                if age > 5:
                    lock.unlink(missing_ok=True)
                    continue
            raise UserError(f"run directory {run_dir} is locked by pid {pid or '?'} on {held.get('host', '?')} "
                            f"since {held.get('since', '?')}; wait for it to finish or remove {lock} if it is dead") from None
        else:
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
