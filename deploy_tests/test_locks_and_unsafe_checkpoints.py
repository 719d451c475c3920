"""The run lock and unsafe checkpoints (issue #7, hardening), without a live pipeline run.

2. The run lock: a second concurrent run is refused with one ``error:`` line (exit 2); a stale lock (dead pid, an old
   empty/half-written file) is cleared and the run goes on, with ``flock`` and with the ``O_EXCL`` + pid fallback;
   contenders for a stale lock never hold it together. (A lock held by a live, then SIGKILLed run, and SIGTERM:
   :mod:`deploy_tests.test_crash_safety`.)
3. Unsafe checkpoints: a pickle that runs code when loaded is refused (``UserError`` / exit 2) and its
   code provably never runs; every ``torch.load`` in the code base passes ``weights_only=True``.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import pickle
import shlex
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ccpcsa.errors import UserError
from deploy_tests.smoke_cli import LOCK, ROOT, TIMEOUT, _check_manifest, _env, _one_error_line, _run, _tail

# ── 2. the run lock ─────────────────────────────────────────────────────────────────────────────────────


def test_second_run_refused_while_locked(tmp_path: Path) -> None:
    from pipeline.manifest import run_lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with run_lock(run_dir) as stale:
        assert stale == {}
        held = json.loads((run_dir / LOCK).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(UserError, match="locked by pid"), run_lock(run_dir):
            pass  # pragma: no cover
        r = _run(run_dir)  # the refused attempt above did not release the lock
        assert r.returncode == 2
        line = _one_error_line(r.stderr)
        assert "locked" in line and f"pid {os.getpid()}" in line
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK]  # nothing written or overwritten
    assert not (run_dir / LOCK).exists()


@pytest.fixture(params=["flock", "no-flock"])
def lock_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a lock test with ``flock`` and with the ``O_EXCL`` + pid fallback (platforms without flock)."""
    if request.param == "no-flock":
        import pipeline.manifest

        monkeypatch.setattr(pipeline.manifest, "fcntl", None)
    return str(request.param)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_lock_of_dead_pid_is_cleared(tmp_path: Path, lock_mode: str) -> None:
    from pipeline.manifest import run_lock

    lock = tmp_path / LOCK
    dead = _dead_pid()
    lock.write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "since": "2026-01-01T00:00:00Z"}))
    with run_lock(tmp_path) as stale:
        assert stale["pid"] == dead
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_old_empty_or_half_written_lock_is_cleared(tmp_path: Path, lock_mode: str) -> None:
    from pipeline.manifest import run_lock

    lock = tmp_path / LOCK
    for content in ("", '{"pid": 12'):
        lock.write_text(content)
        old = time.time() - 60
        os.utime(lock, (old, old))
        with run_lock(tmp_path) as stale:
            assert stale == {"pid": None}
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert not lock.exists()


def test_fallback_lock_refuses_live_pid_and_fresh_empty_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without flock, a live pid on this host or a just-created (still being written) lock file is respected."""
    import pipeline.manifest
    from pipeline.manifest import run_lock

    monkeypatch.setattr(pipeline.manifest, "fcntl", None)
    lock = tmp_path / LOCK
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    with pytest.raises(UserError, match=f"locked by pid {os.getpid()}"), run_lock(tmp_path):
        pass  # pragma: no cover
    lock.write_text("")
    with pytest.raises(UserError, match="locked"), run_lock(tmp_path):
        pass  # pragma: no cover
    assert lock.exists()


_CONTENDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from ccpcsa.errors import UserError
    from pipeline.manifest import run_lock
    d = Path(sys.argv[1])
    (d / f"ready{sys.argv[2]}").write_text("")
    while not (d / "go").exists():
        time.sleep(0.002)
    try:
        with run_lock(d):
            try:
                fd = os.open(d / "holder", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                print("OVERLAP")
                sys.exit(0)
            time.sleep(0.2)
            os.close(fd)
            os.unlink(d / "holder")
        print("took")
    except UserError:
        print("refused")
""")


def test_contenders_for_a_stale_lock_never_hold_it_together(tmp_path: Path) -> None:
    lock = tmp_path / LOCK
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "since": "then"}))
    procs = [subprocess.Popen([sys.executable, "-c", _CONTENDER, str(tmp_path), str(i)], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
    deadline = time.monotonic() + TIMEOUT
    while not all((tmp_path / f"ready{i}").exists() or p.poll() is not None for i, p in enumerate(procs)):
        assert time.monotonic() < deadline, "contenders did not start"
        time.sleep(0.02)
    (tmp_path / "go").write_text("")  # all of them race for the stale lock at once
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    results = [o.strip() for o, _ in outs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    assert "OVERLAP" not in results and "took" in results, results
    assert set(results) <= {"took", "refused"}
    assert not lock.exists()


# ── 3. unsafe checkpoints ───────────────────────────────────────────────────────────────────────────────


class _RunsShell:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class _WritesFile:
    """Unpickling this writes a file through ``pathlib`` (no shell involved)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return pathlib.Path.write_text, (pathlib.Path(self.marker), "pwned")


def _evil_checkpoint(kind: str, path: Path, marker: Path) -> Path:
    if kind == "torch.save":
        torch.save(_RunsShell(marker), path)
    elif kind == "inside-valid-dict":  # a checkpoint that looks right, with the payload in its metadata
        torch.save({"format": "ccpcsa-checkpoint/1", "model": {"name": "deploy_tests.byo_model:tiny_net", "num_classes": 10},
                    "state_dict": {}, "classes": [], "meta": {"note": _WritesFile(marker)}}, path)
    else:  # plain pickle, not torch's zip format
        with open(path, "wb") as fh:
            pickle.dump(_WritesFile(marker), fh)
    return path


@pytest.mark.parametrize("kind", ["torch.save", "inside-valid-dict", "plain-pickle"])
def test_code_running_checkpoint_is_refused(tmp_path: Path, kind: str) -> None:
    from ccpcsa.io.checkpoint import load_checkpoint

    marker = tmp_path / "MARKER"
    path = _evil_checkpoint(kind, tmp_path / "evil.pt", marker)
    with pytest.raises(UserError, match=str(path)):
        load_checkpoint(path)
    assert not marker.exists(), "the checkpoint's code ran"
    # the payload is live: an unsafe loader would have run it (so the assertion above can fail)
    control = tmp_path / "CONTROL"
    live = _evil_checkpoint(kind, tmp_path / "control.pt", control)
    if kind == "plain-pickle":
        pickle.loads(live.read_bytes())
    else:
        torch.load(live, weights_only=False)
    assert control.exists()


def test_code_running_checkpoint_refused_by_the_cli(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    evil = _evil_checkpoint("torch.save", tmp_path / "evil.pt", marker)
    run_dir = tmp_path / "run"
    r = _run(run_dir, "--until", "baseline", "--set", f"baseline.checkpoint={evil}")
    assert r.returncode == 2, _tail(r.stdout + r.stderr)
    line = _one_error_line(r.stderr)
    assert str(evil) in line and "weights_only" in line
    assert not marker.exists(), "the checkpoint's code ran"
    assert not (run_dir / "baseline.pt").exists() and not (run_dir / LOCK).exists()
    m = _check_manifest(run_dir)
    assert m["stages"]["baseline"]["status"] == "failed" and "refused" in m["stages"]["baseline"]["reason"]


def _torch_load_calls(tree: ast.AST) -> Iterator[ast.Call]:
    """``torch.load(...)`` calls, also through ``from torch import load [as x]`` and ``import torch as t``."""
    torch_names, load_names = {"torch"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {a.asname for a in node.names if a.name == "torch" and a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            load_names |= {a.asname or a.name for a in node.names if a.name == "load"}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name) and f.value.id in torch_names) or \
                (isinstance(f, ast.Name) and f.id in load_names):
            yield node


def test_every_torch_load_is_weights_only() -> None:
    calls, bad = 0, []
    for pkg in ("ccpcsa", "export", "pipeline", "bench"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for call in _torch_load_calls(ast.parse(path.read_text(), str(path))):
                calls += 1
                flag = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    bad.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert calls >= 1  # the scan finds the checkpoint loader
    assert not bad, f"torch.load without weights_only=True: {bad}"
    # the scanner itself catches the unsafe spellings
    unsafe = "import torch as t\nfrom torch import load as L\nt.load('a')\nL('b', weights_only=False)\ntorch.load('c')\n"
    assert len(list(_torch_load_calls(ast.parse(unsafe)))) == 3
