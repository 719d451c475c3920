"""``make gpu-check`` / ``python -m bench.gpu_check``: prove on one CUDA GPU that the project runs there, at speed.

Steps, in this order, each in its own subprocess with a timeout, each recorded (``ok`` / ``failed`` / ``skipped``
with the reason) without stopping the others; the whole check fits in ``--budget-s`` (default 470 s ≈ 8 min):

1. ``cuda_tests``: the tests marked ``cuda`` (``pytest -m cuda`` on the test files that hold them);
2. ``smoke_pipeline``: ``configs/smoke.yaml`` end to end on ``run.device=cuda`` (validate's GPU latency rows
   at batch 1 and 32);
3. ``resnet56_pipeline``: ``configs/resnet56_cifar10_gpu.yaml`` from ``<shared>/models/resnet56_cifar10.pt`` with short
   budgets and permissive gates (``RESNET56_OVERRIDES``): every stage on CUDA, not the paper's accuracy; without
   the checkpoint it trains a 2-epoch baseline instead and says so;
4. ``epoch_timings``: one timed epoch (after a warm-up epoch) of resnet20 and resnet56, batch 256, channels_last,
   bf16 AMP, eager (``train.compile=off``): img/s and s/epoch (``bench/epoch_time.py``);
5. ``parallel``: 5 resnet56 timings at once on the one GPU, each one's img/s;
6. ``compiled_timing``: resnet56 again with ``train.compile=on`` (torch.compile, CUDA graphs) — the ≤ 1.5 s/epoch
   target; last, because compilation is the longest and least certain step.

Writes ``bench/results/<date>-<host>-gpu-check.json`` (fields: ``schema``, ``date``, ``host``, ``command``, ``dry_run``,
``seconds``, ``machine``, ``gpu``, ``dependencies``, ``steps`` {name: {``status``, ``reason``, ``seconds``, …}},
``summary``) and ``…-gpu-check.log`` (every subprocess's output). Exit status: 0 when every step passed, 1 when
one failed, 2 (one ``error:`` line, nothing written) when no CUDA GPU is visible. ``--dry-run`` runs the same
plumbing on the CPU with tiny budgets, so the script can be checked before GPU time is spent on it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ccpcsa.errors import first_line
from pipeline.artifacts import MANIFEST, VALIDATION

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("cuda_tests", "smoke_pipeline", "resnet56_pipeline", "epoch_timings", "parallel", "compiled_timing")
DEPENDENCIES = ("torch", "torch-pruning", "onnx", "onnxruntime", "onnxsim", "numpy", "pyyaml", "tqdm", "pillow",
                "matplotlib", "pytest", "safetensors", "triton")
#: Short budgets for the resnet56 pipeline: every stage runs, in minutes; gates relaxed (this is not the paper run).
RESNET56_OVERRIDES = (
    "train.batch_size=256", "attention.epochs=1", "prune.steps.groups_per_iteration=8", "prune.steps.max_iterations=1",
    "prune.recovery.finetune_epochs=0", "prune.recovery.final_finetune_epochs=1", "prune.criterion.calibration_images=256",
    "checks.eval_images=2000", "export.calibration_images=128", "export.latency_iters=20",
    "checks.max_accuracy_drop=100", "checks.require_flops_target=false", "checks.require_speedup=false", "checks.min_speedup_efficiency=null",
    "checks.min_agreement_int8=0", "checks.min_agreement_lowp=0",
)
TARGET_S_PER_EPOCH = 1.5  # issue 14: resnet56, one H200, batch 256


class GpuCheckError(Exception):
    """A precondition of the whole check failed (no GPU): one line, exit 2."""


# ----------------------------------------------------------------------------------------------- plumbing
class Log:
    """Appends every line to the log file and echoes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = path.open("a")

    def __call__(self, text: str) -> None:
        """Write ``text`` (one or more lines) to the log and stdout."""
        self.fh.write(text.rstrip("\n") + "\n")
        self.fh.flush()
        print(text.rstrip("\n"), flush=True)


def run_cmd(cmd: list[str], timeout: float, log: Log, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` in the repository root with a timeout; its output goes to the log. Returns
    ``{"exit_code", "timed_out", "seconds", "tail"}`` (``tail``: the last 20 output lines). Never raises."""
    log(f"$ {shlex.join(cmd)}   (timeout {timeout:.0f} s)")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env or child_env(), capture_output=True, text=True, timeout=max(1.0, timeout))
        out, code, timed_out = proc.stdout + proc.stderr, proc.returncode, False
    except subprocess.TimeoutExpired as exc:
        out = _text(exc.stdout) + _text(exc.stderr)
        code, timed_out = None, True
    except OSError as exc:
        out, code, timed_out = f"cannot start: {exc}", None, False
    log(out)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return {"exit_code": code, "timed_out": timed_out, "seconds": round(time.perf_counter() - t0, 1), "tail": lines[-20:]}


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def child_env() -> dict[str, str]:
    """This environment with the repository root first on PYTHONPATH and unbuffered output."""
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"}


def run_step(name: str, fn: Callable[[], dict[str, Any]], results: dict[str, Any], log: Log) -> None:
    """``results[name] = fn()`` plus ``seconds``; an exception is recorded as ``failed`` with its one-line reason
    (the check goes on with the next step)."""
    log(f"\n===== {name} =====")
    t0 = time.perf_counter()
    try:
        rec = fn()
    except Exception as exc:  # noqa: BLE001 — every step is isolated; its failure is data
        rec = {"status": "failed", "reason": first_line(exc, with_type=True)}
    rec.setdefault("status", "ok")
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    results[name] = rec
    log(f"----- {name}: {rec['status']}{' — ' + rec['reason'] if rec.get('reason') else ''} ({rec['seconds']} s)")


def status_of(run: dict[str, Any], what: str) -> dict[str, Any]:
    """``status``/``reason`` for a finished subprocess: ok on exit 0, else failed (timed out / exit code + last line)."""
    if run["timed_out"]:
        return {"status": "failed", "reason": f"{what} timed out after {run['seconds']} s"}
    if run["exit_code"] != 0:
        last = run["tail"][-1] if run["tail"] else ""
        return {"status": "failed", "reason": f"{what} exited {run['exit_code']}: {last[:300]}"}
    return {"status": "ok"}


def json_rows(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON objects among ``lines`` (lines that start with ``{`` and parse)."""
    rows = []
    for ln in lines:
        if ln.startswith("{"):
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:
                pass
    return rows


# -------------------------------------------------------------------------------------------------- steps
class Check:
    """The check's settings and the steps (each returns its record)."""

    def __init__(self, a: argparse.Namespace, log: Log, work: Path) -> None:
        self.a, self.log, self.work = a, log, work
        self.py = sys.executable
        self.device = "cpu" if a.dry_run else "cuda"
        self.deadline = time.perf_counter() + a.budget_s
        shared = Path(a.shared)
        self.shared = shared if shared.is_absolute() else (ROOT / shared)
        archive = self.shared / "data" / "cifar10-jpg.tar.gz"
        self.cifar = f"imagefolder:{archive}" if archive.is_file() else "synthetic:50000:10000"
        if a.dry_run:
            self.cifar = "synthetic?size=32&train=512&test=128"

    def left(self, want: float) -> float:
        """Seconds this step may take: ``want``, capped by the budget left (minus a 5 s margin)."""
        return min(want, self.deadline - time.perf_counter() - 5)

    def _budget_ok(self, need: float) -> dict[str, Any] | None:
        if self.deadline - time.perf_counter() - 5 < need:
            return {"status": "skipped", "reason": f"budget: under {need:.0f} s left of --budget-s {self.a.budget_s:.0f}"}
        return None

    def cuda_tests(self) -> dict[str, Any]:
        if skip := self._budget_ok(20):
            return skip
        files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy_tests").glob("test_*.py")
                       if "pytest.mark.cuda" in p.read_text())
        xml = self.work / "cuda-tests.xml"
        run = run_cmd([self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-m", "cuda",
                       f"--junitxml={xml}", *files], self.left(self.a.tests_timeout), self.log)
        rec: dict[str, Any] = {"files": files, **junit_counts(xml)}
        st = status_of(run, "pytest")
        if run["exit_code"] == 5:  # no test collected
            st = {"status": "failed", "reason": "no cuda test was collected"}
        if self.a.dry_run and run["exit_code"] == 0 and rec.get("passed", 0) == 0:
            st = {"status": "ok", "reason": "dry run: every cuda test skipped (no GPU)"}
        return {**st, **rec}

    def _pipeline(self, name: str, config: str, overrides: list[str], timeout: float, until: str | None = None) -> dict[str, Any]:
        run_dir = self.work / name
        cmd = [self.py, "-m", "pipeline", "run", "--no-progress", "--config", config, "--run-dir", str(run_dir),
               "--set", f"run.device={self.device}"]
        for o in overrides:
            cmd += ["--set", o]
        if until:
            cmd += ["--until", until]
        run = run_cmd(cmd, self.left(timeout), self.log)
        return {**status_of(run, "pipeline"), "overrides": overrides, **pipeline_summary(run_dir)}

    def smoke_pipeline(self) -> dict[str, Any]:
        if skip := self._budget_ok(30):
            return skip
        over = ["export.latency_batches=[1,32]"]
        if self.a.dry_run:
            return self._pipeline("smoke", "configs/smoke.yaml", [*over, "train.epochs=1", "train.max_steps_per_epoch=2"], 120,
                                  until="baseline")
        return self._pipeline("smoke", "configs/smoke.yaml", over, self.a.smoke_timeout)

    def resnet56_pipeline(self) -> dict[str, Any]:
        if skip := self._budget_ok(60):
            return skip
        ckpt = self.shared / "models" / "resnet56_cifar10.pt"
        over = [f"data.spec={self.cifar}", *RESNET56_OVERRIDES]
        note = f"baseline from {ckpt}"
        if ckpt.is_file() and not self.a.dry_run:
            over.insert(0, f"baseline.checkpoint={ckpt}")
        else:
            over.insert(0, "train.epochs=2")
            note = f"{ckpt} not found: baseline trained for 2 epochs instead" if not ckpt.is_file() else "dry run"
        if self.a.dry_run:
            over += ["train.epochs=1", "train.max_steps_per_epoch=2", "model.name=resnet20"]
            rec = self._pipeline("resnet56", "configs/resnet56_cifar10_gpu.yaml", over, 120, until="baseline")
        else:
            rec = self._pipeline("resnet56", "configs/resnet56_cifar10_gpu.yaml", over, self.a.resnet56_timeout)
        return {**rec, "baseline": note}

    def _epoch_time(self, models: list[str], compile_mode: str, out: Path) -> list[str]:
        if self.a.dry_run:
            return [self.py, "-m", "bench.epoch_time", "--models", *models, "--device", "cpu", "--batch-size", "16", "--steps", "2",
                    "--data", self.cifar, "--compile", compile_mode, "--out", str(out)]
        return [self.py, "-m", "bench.epoch_time", "--models", *models, "--device", "cuda", "--batch-size", "256", "--full-epoch",
                "--channels-last", "--data", self.cifar, "--compile", compile_mode, "--out", str(out)]

    def _timing(self, models: list[str], compile_mode: str, timeout: float, tag: str) -> dict[str, Any]:
        out = self.work / f"timing-{tag}.json"
        run = run_cmd(self._epoch_time(models, compile_mode, out), self.left(timeout), self.log)
        rows = read_rows(out) or json_rows(run["tail"])
        rec = {**status_of(run, "epoch_time"), "rows": rows, "data": self.cifar}
        if rec["status"] == "ok" and len(rows) < len(models):
            rec.update(status="failed", reason=f"{len(rows)} of {len(models)} timings came back")
        return rec

    def epoch_timings(self) -> dict[str, Any]:
        if skip := self._budget_ok(30):
            return skip
        return self._timing(["resnet20", "resnet56"] if not self.a.dry_run else ["resnet20"], "off", self.a.timing_timeout, "eager")

    def parallel(self) -> dict[str, Any]:
        if skip := self._budget_ok(45):
            return skip
        n = self.a.parallel
        model = "resnet56" if not self.a.dry_run else "resnet20"
        outs = [self.work / f"parallel-{i}.json" for i in range(n)]
        logs = [self.work / f"parallel-{i}.log" for i in range(n)]
        cmds = [self._epoch_time([model], "off", out) for out in outs]
        self.log(f"$ {n} × {shlex.join(cmds[0])}")
        t0 = time.perf_counter()
        procs = []
        for cmd, lp in zip(cmds, logs, strict=True):
            with lp.open("w") as fh:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=fh, stderr=subprocess.STDOUT))
        timeout = self.left(self.a.parallel_timeout)
        timed_out = 0
        for p in procs:
            try:
                p.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                timed_out += 1
        for lp in logs:
            self.log(lp.read_text(errors="replace"))
        rows = [r for out in outs for r in read_rows(out)]
        ips = [r.get("images_per_s") for r in rows]
        rec: dict[str, Any] = {"runs": n, "model": model, "rows": rows, "images_per_s": ips,
                               "total_images_per_s": round(sum(x for x in ips if x), 1), "exit_codes": [p.returncode for p in procs]}
        if timed_out:
            rec.update(status="failed", reason=f"{timed_out} of {n} runs timed out")
        elif len(rows) < n:
            rec.update(status="failed", reason=f"{len(rows)} of {n} runs reported a timing (exit codes {rec['exit_codes']})")
        return rec

    def compiled_timing(self) -> dict[str, Any]:
        if self.a.dry_run:
            return {"status": "skipped", "reason": "dry run: torch.compile is only timed on a GPU"}
        if skip := self._budget_ok(60):
            return skip
        rec = self._timing(["resnet56"], "on", self.a.compile_timeout, "compiled")
        speed = (rec["rows"][0].get("speed") or {}) if rec["rows"] else {}
        if speed and not speed.get("compiled"):
            rec["reason"] = f"ran eager: {speed.get('compile_note')}"
        return rec


def junit_counts(xml: Path) -> dict[str, Any]:
    """``{"tests", "passed", "failed", "skipped", "failures": [names]}`` from a pytest JUnit XML file ({} if unreadable)."""
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        return {}
    cases = list(root.iter("testcase"))
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in cases if c.find("failure") is not None or c.find("error") is not None]
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    return {"tests": len(cases), "passed": len(cases) - len(failed) - skipped, "failed": len(failed), "skipped": skipped,
            "failures": failed}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The ``rows`` of a ``bench/epoch_time.py --out`` file ([] when absent or unreadable)."""
    try:
        return list(json.loads(path.read_text()).get("rows", []))
    except (OSError, ValueError, AttributeError):
        return []


def pipeline_summary(run_dir: Path) -> dict[str, Any]:
    """Per-stage status (and reason) from the run's manifest and validate's GPU rows (p50 ms per batch)."""
    out: dict[str, Any] = {}
    try:
        man = json.loads((run_dir / MANIFEST).read_text())
        out["stages"] = {k: v.get("status") + (f" ({v['reason']})" if v.get("reason") else "") for k, v in man.get("stages", {}).items()}
    except (OSError, ValueError, TypeError):
        pass
    try:
        fmts = json.loads((run_dir / VALIDATION).read_text()).get("formats", {})
        out["latency_p50_ms"] = {name: {b: s.get("p50") for b, s in (r.get("latency_ms") or {}).items()} or r.get("status")
                                 for name, r in fmts.items()}
        out["gpu_rows"] = {name: {k: r.get(k) for k in ("status", "reason", "runner", "accuracy", "max_abs_diff", "top1_agreement")}
                           for name, r in fmts.items() if r.get("device") == "cuda"}
    except (OSError, ValueError, AttributeError):
        pass
    return out


# ----------------------------------------------------------------------------------------------- whole run
def gpu_info() -> dict[str, Any]:
    """GPU name, capability, memory, torch/CUDA versions; raises :class:`GpuCheckError` when no CUDA GPU is visible."""
    import torch

    if not torch.cuda.is_available():
        raise GpuCheckError("no CUDA GPU visible (torch.cuda.is_available() is False); run gpu-check on a machine with an "
                            "NVIDIA GPU and a CUDA build of torch (or pass --dry-run to check the plumbing on the CPU)")
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
            "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count(), "torch": torch.__version__,
            "cuda": torch.version.cuda}


def dependencies() -> dict[str, str | None]:
    """Installed versions of the packages the project needs there (None: missing)."""
    out: dict[str, str | None] = {}
    for name in DEPENDENCIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def summarize(steps: dict[str, Any]) -> dict[str, Any]:
    """The headline: resnet56 s/epoch and img/s (eager and compiled), the parallel runs' img/s, failed steps."""
    def row(step: str, model: str) -> dict[str, Any]:
        return next((r for r in (steps.get(step) or {}).get("rows", []) if r.get("model") == model), {})

    eager, comp = row("epoch_timings", "resnet56"), row("compiled_timing", "resnet56")
    best = min((r["epoch_seconds_projected"] for r in (eager, comp) if r.get("epoch_seconds_projected")), default=None)
    return {
        "resnet20_img_s": row("epoch_timings", "resnet20").get("images_per_s"),
        "resnet56_img_s_eager": eager.get("images_per_s"), "resnet56_s_per_epoch_eager": eager.get("epoch_seconds_projected"),
        "resnet56_img_s_compiled": comp.get("images_per_s"), "resnet56_s_per_epoch_compiled": comp.get("epoch_seconds_projected"),
        "resnet56_target_s_per_epoch": TARGET_S_PER_EPOCH,
        "resnet56_target_met": best is not None and best <= TARGET_S_PER_EPOCH,
        "parallel_img_s": (steps.get("parallel") or {}).get("images_per_s"),
        "failed_steps": [k for k, v in steps.items() if v.get("status") == "failed"],
        "skipped_steps": [k for k, v in steps.items() if v.get("status") == "skipped"],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared", help="folder with data/cifar10-jpg.tar.gz and models/ (default ../shared)")
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    ap.add_argument("--dry-run", action="store_true", help="the same plumbing on the CPU with tiny budgets (no GPU needed)")
    ap.add_argument("--budget-s", type=float, default=470.0, help="whole-check budget in seconds")
    ap.add_argument("--parallel", type=int, default=5, help="concurrent timing runs in the parallel step")
    ap.add_argument("--tests-timeout", type=float, default=150)
    ap.add_argument("--smoke-timeout", type=float, default=120)
    ap.add_argument("--resnet56-timeout", type=float, default=200)
    ap.add_argument("--timing-timeout", type=float, default=120)
    ap.add_argument("--parallel-timeout", type=float, default=120)
    ap.add_argument("--compile-timeout", type=float, default=240)
    a = ap.parse_args(argv)
    if a.parallel < 1 or a.budget_s <= 0:
        ap.error("--parallel must be ≥ 1 and --budget-s > 0")
    return a


def main(argv: list[str] | None = None) -> int:
    """Run the check; see the module docstring for the exit status."""
    a = parse_args(argv)
    try:
        gpu = {"dry_run": True} if a.dry_run else gpu_info()
    except GpuCheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stem = f"{time.strftime('%Y-%m-%d')}-{socket.gethostname()}-gpu-check" + ("-dry-run" if a.dry_run else "")
    out_dir = Path(a.out_dir)
    log = Log(out_dir / f"{stem}.log")
    t0 = time.perf_counter()
    log(f"gpu-check {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}: {json.dumps(gpu)}")
    steps: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        check = Check(a, log, Path(tmp))
        for name in STEPS:
            if name in a.only:
                run_step(name, getattr(check, name), steps, log)
    from bench.common import machine_info

    result = {"schema": "gpu-check/1", "date": time.strftime("%Y-%m-%d"), "host": socket.gethostname(),
              "command": shlex.join([Path(sys.executable).name, "-m", "bench.gpu_check", *(argv if argv is not None else sys.argv[1:])]),
              "dry_run": a.dry_run, "seconds": round(time.perf_counter() - t0, 1), "machine": machine_info(), "gpu": gpu,
              "dependencies": dependencies(), "steps": steps, "summary": summarize(steps)}
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    log(f"\nwrote {path} and {log.path}\nsummary: {json.dumps(result['summary'])}")
    return 1 if result["summary"]["failed_steps"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
