"""Crash safety of the pipeline (issue #7, hardening).

1. SIGKILL trials: the smoke chain is killed at a seeded random moment inside every stage (engine is
   skipped here, it is instant), 11 times; after each kill the manifest parses and refers only to
   complete files with their recorded SHA-256, and a plain rerun (no ``--from``) clears the stale lock
   and temporary files and redoes the killed stage with the clean run's results; the last rerun exits 0
   and reproduces the clean run's report (architecture, params, FLOPs exactly; accuracy within noise;
   latency ignored) and its ONNX files byte for byte.
2. The run lock: a second concurrent run is refused with one ``error:`` line (exit 2); a stale lock
   (dead pid, a really SIGKILLed run, an old empty/half-written file) is cleared and the run goes on;
   SIGTERM unwinds cleanly (exit 143, lock released, no temporary file left).
3. Unsafe checkpoints: a pickle that runs code when loaded is refused (``UserError`` / exit 2) and its
   code provably never runs; every ``torch.load`` in the code base passes ``weights_only=True``.
4. Determinism: two independent smoke runs give the same pruned architecture, the same ONNX graphs,
   byte-identical ONNX files and bit-identical weights (see :func:`test_two_independent_runs_are_identical`).

Every pipeline run is a subprocess (``python -m pipeline``) with ``cwd`` = the repository, so a kill
hits a real process. Run single-process: ``pytest -q -p no:xdist deploy_tests/test_crash_safety.py -s``
prints one line per trial.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pathlib
import pickle
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from ccpcsa.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
STAGES = ["baseline", "attention", "prune", "onnx", "simplify", "int8", "int8_cpu", "engine", "validate", "report", "bundle"]
TIMEOUT = 600.0  # seconds for one pipeline subprocess: generous, the machine is shared
ACC_TOL = 0.5  # percentage points: below one image of the 300-image evaluation split
LOCK = ".lock"

# The SIGKILL trials: (stage, fraction of that stage's clean duration to wait after its banner before the
# kill). Fractions come from a seeded RNG, so the trials are reproducible. Long stages are killed twice;
# baseline once early (before its first epoch checkpoint, as a rule) and once late (after one: the next run
# must resume that training and still reproduce the clean run bit for bit).
_RNG = random.Random(20261122)
KILLS: list[tuple[str, float]] = [("baseline", round(_RNG.uniform(0.05, 0.25), 3)), ("baseline", round(_RNG.uniform(0.6, 0.9), 3))] + [
    (s, round(_RNG.uniform(0.1, 0.9), 3)) for s in ("attention", "prune", "prune", "onnx", "simplify", "int8", "int8_cpu", "validate", "report", "bundle")]


# ── helpers ─────────────────────────────────────────────────────────────────────────────────────────────


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


def _temp_files(run_dir: Path) -> list[Path]:
    """Leftovers of ``atomic_path`` (``.<name>.<random>.tmp``) anywhere under the run directory."""
    return sorted(p for p in run_dir.rglob("*.tmp"))


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


def _check_complete(run_dir: Path) -> dict[str, Any]:
    m = _check_manifest(run_dir)
    assert list(m["stages"]) == STAGES
    for name, rec in m["stages"].items():
        want = "skipped" if name == "engine" else "ok"
        assert rec["status"] == want, (name, rec["status"], rec.get("reason"))
    assert not (run_dir / LOCK).exists(), "the lock file outlived the run"
    assert not _temp_files(run_dir), _temp_files(run_dir)
    return m


def _report_mismatches(clean: Path, other: Path) -> list[str]:
    """Differences between two runs' reports that are not timing noise: channels per layer, params and
    FLOPs, statuses and sizes exactly; accuracy/agreement within :data:`ACC_TOL`; latency ignored."""
    bad: list[str] = []
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (clean, other))
    pa, pb = (_manifest(d)["stages"]["prune"]["metrics"] for d in (clean, other))

    def same(what: str, a: Any, b: Any) -> None:
        if a != b:
            bad.append(f"{what}: {a!r} != {b!r}")

    def close(what: str, a: Any, b: Any, tol: float = ACC_TOL) -> None:
        if a is None or b is None or abs(float(a) - float(b)) > tol:
            bad.append(f"{what}: {a!r} vs {b!r} (tolerance {tol})")

    for key in ("channels_before", "channels_after", "params", "flops"):
        same(f"prune.{key}", pa[key], pb[key])
    same("config_hash", ra["config_hash"], rb["config_hash"])
    for key in ("params", "flops"):
        same(f"baseline.{key}", ra["baseline"][key], rb["baseline"][key])
    close("baseline.accuracy", ra["baseline"]["accuracy"], rb["baseline"]["accuracy"])
    stages_b = {s["name"]: s for s in rb["stages"]}
    for sa in ra["stages"]:
        sb = stages_b.get(sa["name"])
        if sb is None:
            bad.append(f"stage {sa['name']} missing")
            continue
        same(f"{sa['name']}.status", sa["status"], sb["status"])
        same(f"{sa['name']}.artifact", sa["artifact"], sb["artifact"])
        for key in ("params", "flops", "size_bytes"):
            same(f"{sa['name']}.{key}", sa["metrics"][key], sb["metrics"][key])
        if sa["metrics"]["accuracy"] is not None or sb["metrics"]["accuracy"] is not None:
            close(f"{sa['name']}.accuracy", sa["metrics"]["accuracy"], sb["metrics"]["accuracy"])
    fb = {f["name"]: f for f in rb["formats"]}
    same("formats", [f["name"] for f in ra["formats"]], list(fb))
    for fa in ra["formats"]:
        f = fb.get(fa["name"], {})
        for key in ("file", "status", "precision", "params", "flops", "size_bytes"):
            same(f"{fa['name']}.{key}", fa.get(key), f.get(key))
        for key in ("accuracy", "top1_agreement"):
            if fa.get(key) is not None:
                close(f"{fa['name']}.{key}", fa[key], f.get(key))
        if fa.get("max_abs_diff") is not None:
            close(f"{fa['name']}.max_abs_diff", fa["max_abs_diff"], f.get("max_abs_diff"), 1e-4)
    for b, s in ra["speedup"].items():
        same(f"speedup[{b}].flops_ratio", s["flops_ratio"], rb["speedup"][b]["flops_ratio"])
    return bad


class Watched:
    """A pipeline subprocess whose merged stdout/stderr is read line by line by a thread."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1)
        self.lines: list[str] = []
        self.eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> bool:
        """Block until a line containing ``text`` was printed (True) or the output ended / timed out (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def signal(self, sig: int) -> int:
        """Send ``sig`` (unless the process already ended) and return the exit status once the output is drained."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        rc = self.proc.wait(timeout=TIMEOUT)
        self._thread.join(timeout=60)
        return rc

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def stage_state(self) -> tuple[str | None, bool]:
        """(last stage whose banner was printed, whether that stage printed its end line)."""
        last, done = None, False
        for line in self.output.splitlines():
            if line.startswith("══ stage "):
                last, done = line.split()[2], False
            elif last and line.startswith(f"── {last}: "):
                done = True
        return last, done


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete, uninterrupted smoke run (the reference of every trial)."""
    run_dir = tmp_path_factory.mktemp("clean") / "run"
    r = _run(run_dir)
    assert r.returncode == 0, _tail(r.stdout + r.stderr)
    _check_complete(run_dir)
    return run_dir


# ── 1. SIGKILL inside every stage ───────────────────────────────────────────────────────────────────────


@dataclass
class Trial:
    stage: str
    delay_s: float
    attempts: int
    leftovers: int
    next_run: str = ""


def _stage_mismatches(clean: dict[str, Any], other: dict[str, Any], stage: str) -> list[str]:
    """Differences of one finished stage's metrics from the clean run's (accuracy within :data:`ACC_TOL`)."""
    a, b = clean["stages"][stage], other["stages"][stage]
    bad = [f"{stage}.status: {b['status']}"] if b["status"] != a["status"] else []
    for key in ("params", "flops", "channels_after", "nodes", "nodes_after", "size_bytes"):
        if key in a["metrics"] and a["metrics"][key] != b["metrics"].get(key):
            bad.append(f"{stage}.{key}: {a['metrics'][key]!r} != {b['metrics'].get(key)!r}")
    if "accuracy" in a["metrics"] and abs(a["metrics"]["accuracy"] - b["metrics"].get("accuracy", float("inf"))) > ACC_TOL:
        bad.append(f"{stage}.accuracy: {a['metrics']['accuracy']} vs {b['metrics'].get('accuracy')}")
    return bad


def test_sigkill_inside_every_stage_then_rerun(clean_run: Path, tmp_path: Path) -> None:
    """SIGKILL at a random moment inside every stage; after each kill a plain rerun (no ``--from``) goes on.

    The trials form one chain on a fresh run directory, like a user's run that keeps being killed: run →
    kill inside S1 → plain rerun → kill inside S2 → … → plain rerun to the end. So every kill is followed by
    a rerun without ``--from`` that must clear the killed run's stale lock and finish every stage up to the
    next kill with the clean run's results; the last one must exit 0 with the clean run's report (and ONNX
    files). One chain covers what a copy + full rerun per kill would, at about a third of the CPU time.
    A kill that misses its stage (a fast stage already finished) is retried with ``--from`` and a shorter delay.
    """
    clean_m = _manifest(clean_run)
    run_dir = tmp_path / "run"
    trials: list[Trial] = []
    stale_pid: int | None = None  # the last SIGKILLed run, whose lock file is left behind
    expect_resume: bool | None = None  # whether the next baseline must resume an epoch checkpoint

    def after_previous_kill(w: Watched) -> str:
        """Checks on a run that followed a kill; returns what it did, for the summary."""
        nonlocal stale_pid, expect_resume
        did = []
        if stale_pid is not None:
            assert f"cleared a stale lock (pid {stale_pid} " in w.output, _tail(w.output)
            did.append("cleared stale lock")
        if expect_resume is not None and "══ stage baseline " in w.output:
            assert ("resuming the interrupted training" in w.output) == expect_resume, _tail(w.output)
            did.append("resumed training" if expect_resume else "trained from scratch")
        if "removed" in w.output and "temporary file" in w.output:
            did.append("removed temp files")
        stale_pid, expect_resume = None, None
        return ", ".join(did)

    for stage, fraction in KILLS:
        typical = float(clean_m["stages"][stage]["seconds"])
        for attempt in range(1, 6):
            delay = fraction * typical / 4 ** (attempt - 1)
            w = Watched(_cli(run_dir, *(["--from", stage] if attempt > 1 else [])))
            reached = w.wait_for(f"══ stage {stage} ")
            if reached:
                time.sleep(delay)
            rc = w.signal(signal.SIGKILL)
            assert reached, _tail(w.output)
            if trials and not trials[-1].next_run:
                trials[-1].next_run = after_previous_kill(w)
            elif attempt > 1:
                after_previous_kill(w)
            last, finished = w.stage_state()
            # (a) whatever the moment: the manifest parses and refers only to complete files with their hashes
            m = _check_manifest(run_dir)
            if rc == -signal.SIGKILL:
                held = json.loads((run_dir / LOCK).read_text())
                assert held["pid"] == w.proc.pid and held["host"] == socket.gethostname()  # the stale lock
                stale_pid = w.proc.pid
            else:
                assert rc == 0 and not (run_dir / LOCK).exists(), _tail(w.output)  # it had finished: no lock left
            if rc == -signal.SIGKILL and last == stage and not finished and m["stages"].get(stage, {}).get("status") == "running":
                break
        else:
            pytest.fail(f"could not kill the pipeline inside stage {stage} (last banner {last}, finished {finished})")
        # the runs since the last kill finished every earlier stage with the clean run's results
        for name in STAGES[:STAGES.index(stage)]:
            bad = _stage_mismatches(clean_m, m, name)
            assert not bad, f"after the kill in {stage}: {bad}"
        if stage == "baseline":
            expect_resume = bool(list(run_dir.glob("baseline.train*.pt")))
        t = Trial(stage, delay, attempt, len(_temp_files(run_dir)))
        trials.append(t)
        since = f"; this run after the previous kill: {trials[-2].next_run}" if len(trials) > 1 else ""
        print(f"\nSIGKILL trial {len(trials):2d}: inside {t.stage:9s} after {t.delay_s:6.2f}s (attempt {t.attempts}), "
              f"{t.leftovers} temp file(s) left{since}", end="", flush=True)

    # the last rerun: exit 0, every stage ok, the clean run's report and ONNX files
    r = _run(run_dir)
    assert r.returncode == 0, _tail(r.stdout + r.stderr)
    assert f"cleared a stale lock (pid {stale_pid} " in r.stdout
    trials[-1].next_run = "cleared stale lock, finished with exit 0"
    _check_complete(run_dir)
    bad = _report_mismatches(clean_run, run_dir)
    assert not bad, f"the chain killed {len(trials)} times differs from the clean run: {bad}"
    for name in ("model.onnx", "model.sim.onnx", "model.int8.onnx", "model.int8.cpu.onnx"):  # deterministic: see test_two_independent_runs_are_identical
        assert _sha(run_dir / name) == _sha(clean_run / name), name

    per_stage = {s: sum(t.stage == s for t in trials) for s in STAGES if s != "engine"}
    print(f"\nfinal rerun: {trials[-1].next_run}; report and ONNX files equal the clean run's"
          f"\nSIGKILL trials: {len(trials)}, all passed; per stage {per_stage}", flush=True)
    assert len(trials) >= 10 and all(per_stage.values())


def test_stale_training_checkpoint_of_other_config_is_not_resumed(clean_run: Path, tmp_path: Path) -> None:
    """A killed baseline leaves its per-epoch checkpoint; a rerun with *other* settings must not resume it."""
    from ccpcsa.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
    from deploy_tests.byo_model import tiny_net

    run_dir = tmp_path / "run"
    shutil.copytree(clean_run, run_dir)
    # what a run with other settings (same epoch count) killed after its last epoch would leave: zero weights
    model = tiny_net(10, 16)
    for param in model.parameters():
        torch.nn.init.zeros_(param)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = {"epoch": 2, "epochs": 3, "optimizer": opt.state_dict(), "history": []}
    leftovers = [run_dir / "baseline.train.pt", run_dir / f"baseline.train.{'0' * 16}.pt"]
    for path in leftovers:
        save_checkpoint(path, model, ModelSpec("deploy_tests.byo_model:tiny_net", 10, 32, {"width": 16}), train_state=state)
    r = _run(run_dir, "--from", "baseline", "--until", "baseline")
    assert r.returncode == 0, _tail(r.stdout + r.stderr)
    assert "resuming" not in r.stdout
    assert not list(run_dir.glob("baseline.train*.pt"))
    new, ref = (load_checkpoint(d / "baseline.pt").model.state_dict() for d in (run_dir, clean_run))
    assert all(torch.equal(new[k], ref[k]) for k in ref)  # trained from scratch, as the clean run did


# ── 2. the run lock ─────────────────────────────────────────────────────────────────────────────────────


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


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


def test_live_run_refuses_second_then_its_sigkill_leaves_a_stale_lock(clean_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = Watched(_cli(run_dir, "--set", "train.epochs=1000"))  # keeps training until killed
    try:
        assert first.wait_for("══ stage baseline "), _tail(first.output)
        second = _run(run_dir)
        assert first.proc.poll() is None, "the first run ended before the second tried"
    finally:
        first.signal(signal.SIGKILL)
    assert second.returncode == 2, _tail(second.stdout + second.stderr)
    assert f"locked by pid {first.proc.pid} " in _one_error_line(second.stderr)
    assert json.loads((run_dir / LOCK).read_text())["pid"] == first.proc.pid  # left by the killed run
    r = _run(run_dir, "--until", "baseline", "--set", f"baseline.checkpoint={clean_run / 'baseline.pt'}")
    assert r.returncode == 0, _tail(r.stdout + r.stderr)
    assert f"cleared a stale lock (pid {first.proc.pid} " in r.stdout
    assert not (run_dir / LOCK).exists()
    assert not list(run_dir.glob("baseline.train*.pt"))  # the killed run's training checkpoint: other settings
    m = _check_manifest(run_dir)
    assert m["stages"]["baseline"]["status"] == "ok"


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


def test_sigterm_unwinds_cleanly(clean_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(clean_run, run_dir)
    w = Watched(_cli(run_dir, "--from", "prune"))
    assert w.wait_for("══ stage prune "), _tail(w.output)
    time.sleep(0.3 * float(_manifest(clean_run)["stages"]["prune"]["seconds"]))
    assert w.proc.poll() is None
    rc = w.signal(signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM, _tail(w.output)
    assert w.output.strip().splitlines()[-1].startswith("terminated (SIGTERM)")
    assert not (run_dir / LOCK).exists()
    assert not _temp_files(run_dir)
    m = _check_manifest(run_dir)
    assert m["stages"]["prune"]["status"] == "running"
    assert [m["stages"][s]["status"] for s in ("baseline", "attention")] == ["ok", "ok"]


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
    from ccpcsa.checkpoint import load_checkpoint

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


# ── 4. determinism ──────────────────────────────────────────────────────────────────────────────────────


def _onnx_structure(path: Path) -> dict[str, Any]:
    import onnx

    g = onnx.load(str(path)).graph
    return {"nodes": [(n.op_type, list(n.input), list(n.output)) for n in g.node],
            "initializers": [(t.name, list(t.dims)) for t in g.initializer],
            "inputs": [i.name for i in g.input], "outputs": [o.name for o in g.output]}


def test_two_independent_runs_are_identical(clean_run: Path, tmp_path: Path) -> None:
    """Same config and seed in two fresh directories (two processes, 1 thread each).

    What holds on CPU (checked here, the strongest level): the pruned architecture, the ONNX graph
    structure, AND the bytes of every ONNX file plus bit-identical weights in every checkpoint
    (training is bit-deterministic with one thread; export and quantization are deterministic). The
    checkpoint *files* and history.json are not byte-identical only because their metadata records
    durations (``seconds``); validation.json, report.*, plots and the bundle (mtimes) hold timings too.
    """
    other = tmp_path / "run"
    r = _run(other)
    assert r.returncode == 0, _tail(r.stdout + r.stderr)
    _check_complete(other)
    pa, pb = (_manifest(d)["stages"]["prune"]["metrics"] for d in (clean_run, other))
    assert pa["channels_after"] == pb["channels_after"]  # level 1: architecture
    for name in ("model.onnx", "model.sim.onnx", "model.int8.onnx", "model.int8.cpu.onnx", "baseline.onnx"):
        assert _onnx_structure(clean_run / name) == _onnx_structure(other / name), name  # level 2: graph structure
    for name in ("model.onnx", "model.sim.onnx", "model.int8.onnx", "model.int8.cpu.onnx", "baseline.onnx", "build_engine.sh"):
        assert _sha(clean_run / name) == _sha(other / name), name  # level 3: bytes
    from ccpcsa.checkpoint import load_checkpoint

    for name in ("baseline.pt", "attention.pt", "pruned.pt"):
        a, b = (load_checkpoint(d / name).model.state_dict() for d in (clean_run, other))
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), name  # level 3: weights, bit for bit
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (clean_run, other))
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in ha]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in hb]
    assert not _report_mismatches(clean_run, other)
