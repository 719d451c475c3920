"""The smoke pipeline as a subprocess (``python -m pipeline run`` with ``configs/smoke.yaml``), and checks of its run
directory: shared by :mod:`deploy_tests.test_crash_safety` and :mod:`deploy_tests.test_locks_and_unsafe_checkpoints`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
TIMEOUT = 600.0  # seconds for one pipeline subprocess: generous, the machine is shared
LOCK = ".lock"


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""), "PYTHONUNBUFFERED": "1"}


def _cli(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", "--config", str(SMOKE), "--run-dir", str(run_dir), "--no-progress", *extra]


def _run(run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli(run_dir, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


def _tail(text: str, n: int = 3000) -> str:
    return text[-n:]


def _manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_manifest(run_dir: Path) -> dict[str, Any]:
    """The crash invariant: manifest.json parses and every output it records exists with its SHA-256."""
    m = _manifest(run_dir)  # raises if a crash left it unparsable
    assert isinstance(m.get("stages"), dict)
    for name, rec in m["stages"].items():
        for rel, digest in (rec.get("outputs") or {}).items():
            assert not rel.endswith(".tmp") and not Path(rel).name.startswith("."), (name, rel)
            p = run_dir / rel
            assert p.is_file(), f"{name}: recorded output {rel} is missing"
            assert _sha(p) == digest, f"{name}: recorded output {rel} does not have its recorded SHA-256 (partial/stale file)"
        if rec.get("status") == "running":
            assert not rec.get("outputs"), f"{name}: an unfinished stage records outputs"
    return m


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]
