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

The lock tests that need no live pipeline run (2) and the unsafe checkpoints (3) are in
:mod:`deploy_tests.test_locks_and_unsafe_checkpoints`; the smoke-run helpers both use in :mod:`deploy_tests.smoke_cli`.
4. Determinism: two independent smoke runs give the same pruned architecture, the same ONNX graphs,
   byte-identical ONNX files and bit-identical weights (see :func:`test_two_independent_runs_are_identical`).

Every pipeline run is a subprocess (``python -m pipeline``) with ``cwd`` = the repository, so a kill
hits a real process. Run single-process: ``pytest -q -p no:xdist deploy_tests/test_crash_safety.py -s``
prints one line per trial.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from deploy_tests.smoke_cli import (
    LOCK,
    ROOT,
    TIMEOUT,
    _check_manifest,
    _cli,
    _env,
    _manifest,
    _one_error_line,
    _run,
    _sha,
    _tail,
)

STAGES = ["baseline", "attention", "prune", "onnx", "simplify", "int8", "int8_cpu", "engine", "validate", "report", "bundle"]
ACC_TOL = 0.5  # percentage points: below one image of the 300-image evaluation split

# The SIGKILL trials: (stage, fraction of that stage's clean duration to wait after its banner before the
# kill). Fractions come from a seeded RNG, so the trials are reproducible. Long stages are killed twice;
# baseline once early (before its first epoch checkpoint, as a rule) and once late (after one: the next run
# must resume that training and still reproduce the clean run bit for bit).
_RNG = random.Random(20261122)
KILLS: list[tuple[str, float]] = [("baseline", round(_RNG.uniform(0.05, 0.25), 3)), ("baseline", round(_RNG.uniform(0.6, 0.9), 3))] + [
    (s, round(_RNG.uniform(0.1, 0.9), 3)) for s in ("attention", "prune", "prune", "onnx", "simplify", "int8", "int8_cpu", "validate", "report", "bundle")]


# ── helpers ─────────────────────────────────────────────────────────────────────────────────────────────


def _temp_files(run_dir: Path) -> list[Path]:
    """Leftovers of ``atomic_path`` (``.<name>.<random>.tmp``) anywhere under the run directory."""
    return sorted(p for p in run_dir.rglob("*.tmp"))


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
            if rc == -signal.SIGKILL and (run_dir / LOCK).exists():
                held = json.loads((run_dir / LOCK).read_text())
                assert held["pid"] == w.proc.pid and held["host"] == socket.gethostname()  # the stale lock
                stale_pid = w.proc.pid
            else:  # it had finished: exit 0, or killed while the interpreter shut down after it released its lock
                assert rc in (0, -signal.SIGKILL) and not (run_dir / LOCK).exists(), _tail(w.output)
                assert m["stages"].get(STAGES[-1], {}).get("status") == "ok", _tail(w.output)
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
    from ccpcsa.io.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
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


# ── 2. the run lock, held by a live run ─────────────────────────────────────────────────────────────────


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


def test_speedups_are_timed_against_the_unpruned_model_through_the_same_export_path(clean_run: Path) -> None:
    """The pruned FP32 artifact is the simplified ONNX, so the unpruned reference is simplified too (and quantized from
    that for INT8): what onnxsim alone buys is not credited to pruning. Each reference is recorded with its hash."""
    from export.metadata import read_metadata

    v = json.loads((clean_run / "validation.json").read_text())
    assert v["speedup_reference"] == {"fp32": "baseline.sim.onnx", "int8": "baseline.int8.cpu.onnx"}
    assert read_metadata(clean_run / "model.sim.onnx")["stage"] == "simplified"
    sim = read_metadata(clean_run / "baseline.sim.onnx")
    assert sim["stage"] == "simplified" and sim["parent_sha256"] == _sha(clean_run / "baseline.onnx")
    assert read_metadata(clean_run / "baseline.int8.cpu.onnx")["parent_sha256"] == _sha(clean_run / "baseline.sim.onnx")
    outputs = _manifest(clean_run)["stages"]["validate"]["outputs"]
    for name in ("baseline.onnx", "baseline.sim.onnx", "baseline.int8.cpu.onnx"):
        assert outputs[name] == _sha(clean_run / name), name


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
    for name in ("model.onnx", "model.sim.onnx", "model.int8.onnx", "model.int8.cpu.onnx", "baseline.onnx", "baseline.sim.onnx"):
        assert _onnx_structure(clean_run / name) == _onnx_structure(other / name), name  # level 2: graph structure
    for name in ("model.onnx", "model.sim.onnx", "model.int8.onnx", "model.int8.cpu.onnx", "baseline.onnx", "baseline.sim.onnx",
                 "build_engine.sh"):
        assert _sha(clean_run / name) == _sha(other / name), name  # level 3: bytes
    from ccpcsa.io.checkpoint import load_checkpoint

    for name in ("baseline.pt", "attention.pt", "pruned.pt"):
        a, b = (load_checkpoint(d / name).model.state_dict() for d in (clean_run, other))
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), name  # level 3: weights, bit for bit
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (clean_run, other))
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in ha]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in hb]
    assert not _report_mismatches(clean_run, other)
