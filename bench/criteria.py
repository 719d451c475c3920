"""Criteria side by side at equal FLOPs, and the realized deployment speedup (issue #8).

    python -m bench.criteria [--preset cpu|quick|gpu] [--quick] [--criteria ccpcsa l1 ...] [--targets 0.3 0.5 0.7]
                             [--steps N] [--finetune-epochs N] [--eval-images N] [--baseline CKPT] [--root DIR] [--dry-run]
    python -m bench.criteria --summary bench/results/<date>-<host>.json     # re-render the Markdown summary + plots
    python -m bench --only criteria [--quick]                                # the same through the bench driver

It reuses the pipeline (``python -m pipeline run``), never re-implements it:

1. one shared run (``<root>/_shared-<hash of the settings that shape it>``) up to ``attention``: the baseline (``baseline.checkpoint``, or one
   trained here with ``python -m ccpcsa train`` when the preset's checkpoint is absent) and one BAM model;
2. per (criterion, FLOPs target) a copy of the shared run (baseline and attention are then up to date)
   and the rest of the chain with ``prune.method``/``prune.target_flops_reduction`` set, identical
   fine-tune settings for every criterion, the accuracy guard and every accuracy/speedup/FLOPs gate off
   (so every criterion reaches the same FLOPs and is exported), BAM removed before the final fine-tune;
   plus CCPCSA at ``compare_target`` with each extra ``round_to`` value;
3. the metrics each run's ``validate`` stage already measured (accuracy, params, MACs, p50/p95 latency of
   PyTorch eager / ORT FP32 / INT8, pruned-vs-unpruned ORT speedup and FLOPs ratio) are read from its
   ``manifest.json``; the unpruned model is additionally measured here in every format (INT8 included), the
   pruned-vs-unpruned ORT FP32 latency is re-measured interleaved (robust to drifting load on shared cores), and
   onnxruntime's profiler gives per-node times of the unpruned and CCPCSA-pruned graphs.

Results are merged into ``bench/results/<date>-<host>[-quick].json`` (key ``criteria``) atomically after
every run, so an interrupted preset continues where it stopped: a run whose ``report.json`` exists and
whose manifest has the expected config hash is not run again. The Markdown summary and plots
(``bench/criteria_report.py``) are written at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.common import p50, ratio, repo_env
from bench.ort_profile import profile_models

ROOT = Path(__file__).resolve().parents[1]
ALL_CRITERIA = ("ccpcsa", "corr", "attention", "qsfm", "l1", "bn", "taylor", "random")
REFERENCE_CRITERION = "ccpcsa"
BATCHES = (1, 32)


@dataclass(frozen=True)
class Preset:
    """Everything that defines one benchmark session. Fine-tune budget per run (identical for all criteria):
    ``iterations`` training epochs interleaved with pruning (the loop trains one epoch before each scoring)
    plus ``final_finetune_epochs`` after BAM removal, each epoch ``steps_per_epoch`` steps of 128 images."""

    name: str
    config: str
    model: str
    criteria: tuple[str, ...] = ALL_CRITERIA
    targets: tuple[float, ...] = (0.3, 0.5, 0.7)
    round_to: int = 8
    round_to_extra: tuple[int, ...] = (1,)
    compare_target: float = 0.5
    iterations: int = 1
    steps_per_epoch: int | None = 100
    final_finetune_epochs: int = 3
    prune_lr: float = 0.02
    score_images: int = 256
    attention_epochs: int = 1
    attention_lr: float = 0.02
    eval_images: int | None = None  # test images for accuracy: None = all, N = the pipeline's fixed seeded sample
    latency_iters: int = 200
    latency_warmup: int = 10
    calibration_images: int = 512
    threads: int = 2
    device: str = "auto"
    data: str = "imagefolder:../shared/data/cifar10-jpg.tar.gz"
    baseline_checkpoint: str | None = None
    baseline_epochs: int = 8
    baseline_steps: int | None = None
    baseline_lr: float = 0.2
    baseline_schedule: str = "onecycle"
    profile_iters: dict[str, int] = field(default_factory=lambda: {"1": 300, "32": 40})
    # environment of the training stages only (baseline … prune): OpenMP threads that spin-wait slow training
    # several-fold when the cores are shared; the export/validate stages that time latency run with the defaults.
    train_env: dict[str, str] = field(default_factory=lambda: {"OMP_WAIT_POLICY": "PASSIVE"})
    budget_minutes: float = 120.0

    def runs(self) -> list[RunSpec]:
        """Every (criterion, target, round_to) of the session, grid first, then the round_to comparison."""
        out = [RunSpec(c, t, self.round_to) for t in self.targets for c in self.criteria]
        out += [RunSpec(REFERENCE_CRITERION, self.compare_target, r) for r in self.round_to_extra if r != self.round_to]
        return out


@dataclass(frozen=True)
class RunSpec:
    """One pipeline run: criterion, FLOPs reduction target (fraction) and ``round_to``."""

    criterion: str
    target: float
    round_to: int

    @property
    def key(self) -> str:
        return f"{self.criterion}-t{round(100 * self.target)}-r{self.round_to}"


PRESETS: dict[str, Preset] = {
    # ≤ 2 h on 2 CPU cores with runs/bench/resnet20_baseline.pt present: 8 criteria × 3 targets + CCPCSA at 50 % with
    # round_to 1 and 16 = 26 runs. One run took 317 s with 3 × 100 fine-tune steps, all 10k test images and 200 latency
    # iterations while other jobs shared the cores; with this budget (2 × 100 steps, a 5000-image seeded test sample,
    # 100 iterations) it took 226 s at a load average of ≈ 1.7 → ≈ 98 min of runs + ≈ 4 min shared/reference/profile.
    "cpu": Preset("cpu", "configs/default.yaml", "resnet20", steps_per_epoch=100, final_finetune_epochs=2, round_to_extra=(1, 16),
                  eval_images=5000, latency_iters=100, baseline_checkpoint="runs/bench/resnet20_baseline.pt", budget_minutes=120),
    # ≤ 15 min: four criteria at 50 % + round_to 1, tiny budgets (a smoke test of the whole benchmark, not a ranking).
    "quick": Preset("quick", "configs/default.yaml", "resnet20", criteria=("ccpcsa", "l1", "taylor", "random"), targets=(0.5,),
                    steps_per_epoch=40, final_finetune_epochs=1, attention_epochs=1, score_images=128, eval_images=2000, latency_iters=50,
                    latency_warmup=5, calibration_images=128, baseline_checkpoint="runs/bench/resnet20_baseline.pt",
                    baseline_epochs=1, baseline_steps=100, profile_iters={"1": 100, "32": 15}, budget_minutes=15),
    # GPU machine, paper-scale model (untested on this CPU-only machine): resnet56, full epochs.
    "gpu": Preset("gpu", "configs/resnet56_cifar10.yaml", "resnet56", steps_per_epoch=None, iterations=1, final_finetune_epochs=30,
                  prune_lr=0.01, attention_epochs=10, attention_lr=0.01, eval_images=None, baseline_checkpoint=None,
                  baseline_epochs=160, baseline_lr=0.1, baseline_schedule="cosine", budget_minutes=24 * 60),
}


# --------------------------------------------------------------------------------------------- config


def _fmt_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt_value(x) for x in v) + "]"
    return str(v)


def common_overrides(p: Preset, checkpoint: str) -> list[str]:
    """``--set`` overrides shared by the shared run and every pruning run (so baseline/attention stay up to date)."""
    kv: dict[str, Any] = {
        "run.name": f"bench-criteria-{p.name}", "run.device": p.device, "model.name": p.model, "data.spec": p.data,
        "data.fallback": None, "baseline.checkpoint": checkpoint, "train.max_steps_per_epoch": p.steps_per_epoch,
        "attention.enabled": True, "attention.epochs": p.attention_epochs, "attention.lr": p.attention_lr,
        # identical fine-tune for every criterion; no guard: every criterion reaches the FLOPs target
        "prune.tolerance": 1000.0, "prune.max_iterations": p.iterations, "prune.groups_per_iteration": None,
        "prune.target_params_reduction": None, "prune.finetune_epochs": 0, "prune.final_finetune_epochs": p.final_finetune_epochs,
        "prune.lr": p.prune_lr, "prune.calibration_images": p.score_images, "prune.remove_attention": True,
        # measure, don't gate: every run is exported and validated whatever its accuracy or speed
        "checks.max_accuracy_drop": 100.0, "checks.min_agreement_lowp": 0.0, "checks.min_agreement_int8": 0.0,
        "checks.require_speedup": False,
        "checks.require_flops_target": False, "checks.latency_budget_ms": None, "checks.eval_images": p.eval_images,
        "export.threads": p.threads, "export.latency_batches": list(BATCHES), "export.latency_iters": p.latency_iters,
        "export.latency_warmup": p.latency_warmup, "export.calibration_images": p.calibration_images, "export.engine": False,
        "export.int8": True, "export.simplify": True,
    }
    from pipeline.config import valid_keys

    keys = set(valid_keys())  # keys another version of the pipeline lacks are left out (e.g. min_agreement_int8)
    return [f"{k}={_fmt_value(v)}" for k, v in kv.items() if k in keys]


def run_overrides(p: Preset, spec: RunSpec) -> list[str]:
    """The per-run ``--set`` overrides (criterion, target, one-step-per-iteration schedule, round_to)."""
    return [f"prune.method={spec.criterion}", f"prune.target_flops_reduction={spec.target}",
            f"prune.step_flops_reduction={min(0.99, spec.target / p.iterations)}", f"prune.round_to={spec.round_to}"]


def expected_config_hash(p: Preset, overrides: list[str]) -> str:
    """The ``config_hash`` the pipeline will record for these overrides (pure: parses the config in-process)."""
    from pipeline.config import load_config

    return load_config(ROOT / p.config, overrides).section_hash()


# --------------------------------------------------------------------------------------------- running


class PipelineError(RuntimeError):
    """A pipeline invocation failed in a way that stops the benchmark (a user error, exit 2)."""


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_pipeline(p: Preset, run_dir: Path, overrides: list[str], *, until: str | None = None, dry_run: bool = False,
                 env: dict[str, str] | None = None) -> int:
    """``python -m pipeline run`` in ``run_dir`` with ``overrides`` (and ``env`` added to the environment); output
    appended to ``run_dir/pipeline.log``. Returns the exit code (0 ok, 1 a stage failed); exit 2 (a user error)
    raises :class:`PipelineError`."""
    cmd = [sys.executable, "-m", "pipeline", "run", "--config", p.config, "--run-dir", str(run_dir), "--no-progress"]
    if until:
        cmd += ["--until", until]
    for o in overrides:
        cmd += ["--set", o]
    if dry_run:
        print("  $ " + " ".join(cmd if until else cmd[:8] + ["--set <shared overrides>"] + cmd[-8:]), flush=True)
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "pipeline.log"
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(f'{k}={v}' for k, v in (env or {}).items())} {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=repo_env(env)).returncode
    if rc == 2 or rc < 0 or rc > 2:
        raise PipelineError(f"pipeline exited {rc} in {run_dir}; last lines of {log}:\n{_tail(log)}")
    return rc


def ensure_baseline(p: Preset, root: Path, checkpoint: str | None, dry_run: bool = False) -> str:
    """The baseline checkpoint to share: ``checkpoint``/the preset's when it exists, else one trained here
    (``python -m ccpcsa train``, the preset's ``baseline_*`` budget, resumable) into ``<root>/baseline.pt``."""
    ck = checkpoint or p.baseline_checkpoint
    cand = Path(checkpoint).resolve() if checkpoint else (ROOT / ck if ck else None)  # --baseline is relative to the cwd
    if cand is not None and cand.is_file():
        return str(cand.relative_to(ROOT)) if cand.is_relative_to(ROOT) else str(cand)
    out = root / "baseline.pt"
    if out.is_file() and not (root / "baseline.training").exists():
        return str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
    print(f"baseline: {ck or '(none)'} not found; training {p.model} for {p.baseline_epochs} epochs"
          f"{f' × {p.baseline_steps} steps' if p.baseline_steps else ''} → {out}", flush=True)
    cmd = [sys.executable, "-m", "ccpcsa", "train", "--model", p.model, "--data", p.data, "--epochs", str(p.baseline_epochs),
           "--lr", str(p.baseline_lr), "--schedule", p.baseline_schedule, "--channels-last", "true", "--device", p.device,
           "--out", str(out), "--resume", "--quiet"]
    if p.baseline_steps:
        cmd += ["--max-steps-per-epoch", str(p.baseline_steps)]
    if dry_run:
        print("  $ " + " ".join(cmd), flush=True)
        return str(out)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "baseline.training"
    marker.touch()
    with open(root / "baseline.log", "a") as fh:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=repo_env(p.train_env)).returncode
    if rc != 0:
        raise PipelineError(f"baseline training exited {rc}; see {root / 'baseline.log'}:\n{_tail(root / 'baseline.log')}")
    marker.unlink()
    return str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)


def _manifest(run_dir: Path) -> dict[str, Any] | None:
    """:func:`pipeline.report.load_manifest`, or None for a run that has none (yet) or a torn one."""
    from pipeline.report import load_manifest

    try:
        return load_manifest(run_dir)
    except (OSError, json.JSONDecodeError):
        return None


def run_is_complete(run_dir: Path, config_hash: str) -> bool:
    """True when ``run_dir`` has a ``report.json`` and its manifest was made with ``config_hash``, validate ok."""
    m = _manifest(run_dir)
    return bool(m and (run_dir / "report.json").is_file() and m.get("config_hash") == config_hash
                and (m.get("stages", {}).get("validate") or {}).get("status") == "ok")


def _shared_keys(manifest: dict[str, Any] | None) -> list[str | None]:
    return [(((manifest or {}).get("stages") or {}).get(n) or {}).get("key") for n in ("baseline", "attention")]


def prepare_run_dir(shared: Path, run_dir: Path) -> bool:
    """Copy the shared run into ``run_dir`` (atomically, via a temporary folder), unless ``run_dir`` already grew
    from this shared run (its ``baseline`` and ``attention`` stage keys — hashes of their settings and inputs —
    equal the shared run's): then it is kept and the pipeline resumes it, re-running only the stages whose
    settings changed (an interrupted run, or a new export option). Returns True when it was kept."""
    mine = _shared_keys(_manifest(run_dir))
    if run_dir.exists() and all(mine) and mine == _shared_keys(_manifest(shared)):
        return True
    if run_dir.exists():
        shutil.rmtree(run_dir)
    tmp = run_dir.with_name(run_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(shared, tmp, ignore=shutil.ignore_patterns(".lock", "*.log", ".*.tmp"))
    os.replace(tmp, run_dir)
    return False


# --------------------------------------------------------------------------------------------- collecting


def collect_shared(shared: Path) -> dict[str, Any]:
    """Baseline and BAM model metrics recorded by the shared run's stages."""
    m = _manifest(shared) or {}
    st = m.get("stages", {})
    keep = ("accuracy", "val_accuracy", "params", "flops", "bam_after")
    return {name: {k: v for k, v in ((st.get(name) or {}).get("metrics") or {}).items() if k in keep} | {
        "seconds": (st.get(name) or {}).get("seconds"), "status": (st.get(name) or {}).get("status")} for name in ("baseline", "attention")}


def collect_run(run_dir: Path, spec: RunSpec, base: dict[str, Any]) -> dict[str, Any]:
    """One result row from ``run_dir``'s manifest (works for failed runs too: whatever stages finished)."""
    m = _manifest(run_dir) or {}
    st = m.get("stages", {})
    row: dict[str, Any] = {"key": spec.key, "criterion": spec.criterion, "target": spec.target, "round_to": spec.round_to,
                           "run_dir": str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir)}
    failed = [(n, s) for n, s in st.items() if s.get("status") == "failed"]
    row["status"] = "failed" if failed else ("ok" if (st.get("validate") or {}).get("status") == "ok" else "incomplete")
    if failed:
        row["failed_stage"], row["reason"] = failed[0][0], failed[0][1].get("reason", "")
    row["stage_seconds"] = {n: s.get("seconds") for n, s in st.items() if n not in ("baseline", "attention")}
    pm = (st.get("prune") or {}).get("metrics") or {}
    if pm:
        base_flops, base_params = base["flops"], base["params"]
        row.update({"flops": pm.get("flops"), "params": pm.get("params"), "accuracy": pm.get("accuracy"),
                    "val_accuracy": pm.get("val_accuracy"), "flops_reduction": 1 - pm["flops"] / base_flops,
                    "params_reduction": 1 - pm["params"] / base_params, "flops_reduction_vs_bam_model": pm.get("flops_reduction"),
                    "flops_ratio": base_flops / pm["flops"], "accuracy_drop_pp": base["accuracy"] - pm["accuracy"],
                    "stop_reason": pm.get("stop_reason"), "iterations": pm.get("iterations"), "prune_seconds": pm.get("seconds"),
                    "channels_after": pm.get("channels_after"),
                    "history": [{k: h.get(k) for k in ("iteration", "flops_reduction", "val_accuracy", "channels_removed", "seconds")}
                                for h in pm.get("history") or []]})
    vm = (st.get("validate") or {}).get("metrics") or {}
    formats = vm.get("formats") or {}
    if formats:
        keep = ("file", "size_bytes", "accuracy", "images_per_s", "top1_agreement")
        row["formats"] = {n: {**{k: f.get(k) for k in keep if k in f},
                              "latency_ms": {b: {q: v.get(q) for q in ("p50", "p95")} for b, v in (f.get("latency_ms") or {}).items()}}
                          for n, f in formats.items() if f.get("status") == "ok"}
        if "accuracy" in row and (formats.get("pytorch_pruned") or {}).get("accuracy") is not None:
            row["accuracy"] = formats["pytorch_pruned"]["accuracy"]
            ref_acc = (formats.get("pytorch_baseline") or {}).get("accuracy", base["accuracy"])  # same split, same run
            row["accuracy_drop_pp"] = ref_acc - row["accuracy"]
        fp32 = formats.get("onnx_simplified") or formats.get("onnx")
        int8, int8_cpu = formats.get("int8"), formats.get("int8_cpu")
        pt, ptb = formats.get("pytorch_pruned"), formats.get("pytorch_baseline")
        row["int8_accuracy"] = (int8 or {}).get("accuracy")  # the TensorRT flavour (S8S8)
        row["int8_cpu_accuracy"] = (int8_cpu or {}).get("accuracy")  # the onnxruntime-CPU flavour (U8S8)
        row["speedup"] = vm.get("speedup") or {}
        row["int8_speedup_vs_fp32"] = {b: ratio(p50(fp32, b), p50(int8, b)) for b in map(str, BATCHES)}
        row["int8_cpu_speedup_vs_fp32"] = {b: ratio(p50(fp32, b), p50(int8_cpu, b)) for b in map(str, BATCHES)}
        row["ort_speedup_vs_pytorch"] = {b: ratio(p50(pt, b), p50(fp32, b)) for b in map(str, BATCHES)}
        # the final CPU artifact (pruned + INT8 on onnxruntime: the CPU flavour when the run has it) and the fastest
        # pruned ORT format, both vs the unpruned FP32 PyTorch eager model timed in the same validate stage
        final = int8_cpu or int8
        row["final_format"] = "int8_cpu" if int8_cpu else "int8"
        row["final_accuracy"] = (final or {}).get("accuracy")
        row["final_speedup"] = {b: ratio(p50(ptb, b), p50(final, b)) for b in map(str, BATCHES)}
        cands = (("onnx_fp32", fp32), ("onnx_int8", int8), ("onnx_int8_cpu", int8_cpu))
        best = {b: min(((n, p50(f, b)) for n, f in cands if p50(f, b)), key=lambda t: t[1],
                       default=(None, None)) for b in map(str, BATCHES)}
        row["best_ort_speedup"] = {b: {"format": n, "speedup": ratio(p50(ptb, b), v)} for b, (n, v) in best.items()}
    return row


# --------------------------------------------------------------------------------------------- measuring here


def _eval_and_calibration(p: Preset, n_calib: int) -> tuple[Any, Any, Any, Any]:
    """(normalized eval images, labels, calibration images, data) exactly as the pipeline's stages pick them."""

    from ccpcsa.data import load_data, normalize_batch
    from pipeline.config import load_config
    from pipeline.stages_export import calibration_images
    from pipeline.stages_train import evaluation_sample

    data = load_data(p.data, progress=False)
    test = evaluation_sample(data.test, p.eval_images)
    x = normalize_batch(test.images, data.mean, data.std).numpy()
    return x, test.labels, calibration_images(data, n_calib, load_config(ROOT / p.config).run.seed), data


def measure_reference(p: Preset, shared: Path, work: Path) -> dict[str, Any]:
    """The unpruned baseline in every format, same harness and threads as ``validate``: PyTorch eager,
    ORT FP32 (simplified ONNX) and ORT INT8 (QDQ, both flavours) — the pipeline never quantizes the unpruned model."""
    import torch

    from ccpcsa.checkpoint import load_checkpoint
    from export.compare import run_batched
    from export.latency import measure_latency
    from export.metadata import DeployMetadata
    from export.onnx_export import export_onnx
    from export.quantize import quantize_int8
    from export.runtime import OrtRunner, TorchRunner
    from export.simplify import simplify_onnx

    torch.set_num_threads(p.threads)
    x, y, calib, data = _eval_and_calibration(p, p.calibration_images)
    ck = load_checkpoint(shared / "baseline.pt")
    work.mkdir(parents=True, exist_ok=True)
    meta = DeployMetadata(class_names=data.classes, mean=data.mean, std=data.std, input_size=ck.spec.input_size, run_id="bench-reference")
    onnx_p, sim_p = work / "baseline.onnx", work / "baseline.sim.onnx"
    int8_p, int8_cpu_p = work / "baseline.int8.onnx", work / "baseline.int8.cpu.onnx"
    export_onnx(ck.model, onnx_p, meta)
    simplify_onnx(onnx_p, sim_p)
    quantize_int8(sim_p, int8_p, calib, num_calibration=len(calib))
    quantize_int8(sim_p, int8_cpu_p, calib, num_calibration=len(calib), activations="uint8")
    files = {"ort_fp32": sim_p, "ort_int8": int8_p, "ort_int8_cpu": int8_cpu_p}
    out: dict[str, Any] = {}
    for name, runner in (("pytorch_fp32", TorchRunner(ck.model, input_size=ck.spec.input_size, threads=p.threads)),
                         *((k, OrtRunner(f, threads=p.threads)) for k, f in files.items())):
        rep = measure_latency(runner, batch_sizes=BATCHES, warmup=p.latency_warmup, iters=p.latency_iters)
        acc = float(100.0 * (run_batched(runner, x, 250).argmax(1) == y).mean())
        out[name] = {"accuracy": acc, "latency_ms": {str(r.batch_size): {"p50": r.p50_ms, "p95": r.p95_ms} for r in rep.results},
                     "images_per_s": {str(r.batch_size): r.images_per_s for r in rep.results},
                     "size_bytes": files.get(name, sim_p).stat().st_size}
    out["files"] = {"fp32": str(sim_p), "int8": str(int8_p), "int8_cpu": str(int8_cpu_p)}
    return out


def ab_latency(p: Preset, reference: str | Path, models: dict[str, str], rounds: int = 3) -> dict[str, Any]:
    """Pruned vs unpruned ORT FP32 latency measured interleaved (unpruned, pruned, unpruned, … ``rounds`` times per
    batch size, same harness and threads as ``validate``) so that drifting load on shared cores hits both alike.
    ``{key: {batch: {"unpruned_ms", "pruned_ms", "speedup"}}}`` with the median of the per-round p50s."""
    from export.latency import measure_latency
    from export.runtime import OrtRunner

    ref = OrtRunner(reference, threads=p.threads)
    iters = {1: max(20, p.latency_iters // 2), 32: max(10, p.latency_iters // 4)}
    out: dict[str, Any] = {}
    for key, path in models.items():
        runner = OrtRunner(path, threads=p.threads)
        res: dict[str, Any] = {}
        for b in BATCHES:
            a_ms, b_ms = [], []
            for _ in range(rounds):
                for r, acc in ((ref, a_ms), (runner, b_ms)):
                    rep = measure_latency(r, batch_sizes=[b], warmup=max(2, p.latency_warmup // 2), iters=iters.get(b, 20), max_seconds=5.0)
                    acc.append(rep.results[0].p50_ms)
            u, q = statistics.median(a_ms), statistics.median(b_ms)
            res[str(b)] = {"unpruned_ms": u, "pruned_ms": q, "speedup": u / q, "rounds": rounds}
        out[key] = res
    return out


def _round(obj: Any, nd: int = 4) -> Any:
    """Floats rounded to ``nd`` significant-ish decimals (keeps the committed JSON small and diffable)."""
    if isinstance(obj, float):
        return float(f"{obj:.{nd}g}") if abs(obj) < 1e4 else round(obj, 1)
    if isinstance(obj, dict):
        return {k: _round(v, nd) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v, nd) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------- driver


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _describe(row: dict[str, Any]) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status')}: {row.get('failed_stage', '')} {row.get('reason', '')}".strip()
    sp = row.get("speedup") or {}
    return (f"acc {row['accuracy']:.2f}% (Δ {-row['accuracy_drop_pp']:+.2f} pp) MACs -{100 * row['flops_reduction']:.1f}% "
            f"ORT b1 {sp.get('1', {}).get('speedup', 0):.2f}× b32 {sp.get('32', {}).get('speedup', 0):.2f}× "
            f"(FLOPs ratio {row['flops_ratio']:.2f}×)")


def run_benchmark(p: Preset, *, root: Path | None = None, out_json: Path | None = None, checkpoint: str | None = None,
                  summary: bool = True, dry_run: bool = False, command: str = "") -> dict[str, Any]:
    """Run (or resume) the preset, merging results into ``out_json`` after every run; return the criteria result dict."""
    from bench.common import RESULTS_DIR, merge_results, results_stem

    t_start = time.perf_counter()
    root = root or ROOT / "runs" / "bench-criteria" / p.name
    out_json = out_json or RESULTS_DIR / f"{results_stem(p.name == 'quick')}.json"
    quick = p.name == "quick"
    command = command or "python -m bench.criteria " + " ".join(sys.argv[1:])
    from ccpcsa.criteria import list_criteria

    unknown = [c for c in p.criteria if c not in list_criteria()]
    if unknown:
        raise PipelineError(f"unknown criterion {', '.join(unknown)}; known: {', '.join(list_criteria())}")
    print(f"criteria benchmark, preset {p.name}: {len(p.runs())} runs under {root}, results → {out_json}", flush=True)
    ckpt = ensure_baseline(p, root, checkpoint, dry_run)
    common = common_overrides(p, ckpt)
    # one shared folder per set of settings that shape the baseline and BAM model (run/model/data/train/baseline/
    # attention sections); fine-tune, export and check settings reuse it. Accuracy baselines for the tables come from
    # each run's own validate stage (same evaluation split as the pruned model), never from the shared stage metrics.
    import hashlib

    shaping = [o for o in common if o.split(".", 1)[0] in ("run", "model", "data", "train", "baseline", "attention")]
    shared = root / f"_shared-{hashlib.sha256(json.dumps(shaping).encode()).hexdigest()[:10]}"
    if not dry_run:
        for old in root.glob("_shared*"):
            if old != shared and old.is_dir():
                shutil.rmtree(old)
    t = time.perf_counter()
    rc = run_pipeline(p, shared, common, until="attention", dry_run=dry_run, env=p.train_env)
    if rc != 0:
        raise PipelineError(f"shared baseline/attention run failed; see {shared / 'pipeline.log'}:\n{_tail(shared / 'pipeline.log')}")
    print(f"shared baseline + BAM model ready ({time.perf_counter() - t:.0f}s)", flush=True)
    result: dict[str, Any] = {"preset": asdict(p), "root": str(root.relative_to(ROOT) if root.is_relative_to(ROOT) else root),
                              "baseline_checkpoint": ckpt, "overrides": common, "complete": False, "runs": []}
    if not dry_run:
        result.update(collect_shared(shared))
    specs = p.runs()
    done_times: list[float] = []
    rows: list[dict[str, Any]] = []
    hashes = {} if dry_run else {s.key: expected_config_hash(p, common + run_overrides(p, s)) for s in specs}
    earlier: dict[str, dict[str, Any]] = {}  # rows of an interrupted session: keep their wall time and load
    try:
        prev = json.loads(out_json.read_text())["results"]["criteria"]
        earlier = {r["key"]: r for r in prev.get("runs") or [] if prev.get("root") == result["root"]}
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        pass
    warned = False
    for i, spec in enumerate(specs, 1):
        ov = common + run_overrides(p, spec)
        run_dir = root / spec.key
        if dry_run:
            print(f"[{i}/{len(specs)}] {spec.key}", flush=True)
            run_pipeline(p, run_dir, ov, dry_run=True)
            continue
        h = hashes[spec.key]
        t = time.perf_counter()
        wall: float | None = None
        before = (earlier.get(spec.key) or {}).get("wall_seconds")
        if not run_is_complete(run_dir, h):
            kept = prepare_run_dir(shared, run_dir)
            # training (prune) with train_env, then export → validate (latency) in a fresh process with the defaults
            if run_pipeline(p, run_dir, ov, until="prune", env=p.train_env) == 0:
                run_pipeline(p, run_dir, ov)
            wall = time.perf_counter() - t
            done_times.append(wall)
            if kept and before:  # resumed: the run's time is the earlier session's plus this one's
                wall, before = before + wall, None
        row = collect_run(run_dir, spec, result["baseline"])
        row["wall_seconds"] = wall if wall is not None else before
        row["load_avg_1min"] = (os.getloadavg()[0] if hasattr(os, "getloadavg") else None) if wall is not None \
            else (earlier.get(spec.key) or {}).get("load_avg_1min")
        rows.append(row)
        result["runs"] = rows
        _baseline_from_runs(result)
        left = sum(1 for s in specs[i:] if not run_is_complete(root / s.key, hashes[s.key]))
        eta = _hms(sum(done_times) / len(done_times) * left) if done_times else ("0m00s" if not left else "?")
        print(f"[{i}/{len(specs)}] {spec.key:20s} {'done earlier' if wall is None else f'{wall:.0f}s':>12s}  {_describe(row)}"
              f"  | elapsed {_hms(time.perf_counter() - t_start)}, ETA {eta} (+ reference/profile)", flush=True)
        projected = time.perf_counter() - t_start + (sum(done_times) / len(done_times) * left if done_times else 0.0) + 240
        if done_times and projected > 60 * p.budget_minutes and not warned:
            warned = True
            print(f"note: projected session time {_hms(projected)} exceeds the preset's {p.budget_minutes:.0f} min budget "
                  "(shared cores?); it can be interrupted and resumed with the same command", flush=True)
        merge_results(out_json, {"criteria": _round(result)}, quick=quick, command=command)
    if dry_run:
        return result
    print("measuring the unpruned reference in every format and profiling on onnxruntime …", flush=True)
    t = time.perf_counter()
    errors: dict[str, str] = {}
    try:
        result["reference"] = measure_reference(p, shared, root / "_reference")
    except Exception as exc:  # a measurement failure must not lose the runs' results
        errors["reference"] = f"{type(exc).__name__}: {exc}"
        result["reference"] = {}
    models = {"unpruned": result["reference"].pop("files")} if "files" in result["reference"] else {}
    for row in rows:
        if row["criterion"] == REFERENCE_CRITERION and row.get("status") == "ok":
            d = ROOT / row["run_dir"]
            models[row["key"]] = {"fp32": str(d / "model.sim.onnx"), "int8": str(d / "model.int8.onnx"),
                                  "int8_cpu": str(d / "model.int8.cpu.onnx")}
    try:
        result["profile"] = profile_models(models, threads=p.threads, iters=p.profile_iters, batches=BATCHES)
    except Exception as exc:
        errors["profile"] = f"{type(exc).__name__}: {exc}"
    try:
        ab = ab_latency(p, models["unpruned"]["fp32"], {r["key"]: str(ROOT / r["run_dir"] / "model.sim.onnx") for r in rows
                                                         if r.get("status") == "ok"}) if "unpruned" in models else {}
    except Exception as exc:
        errors["interleaved_latency"], ab = f"{type(exc).__name__}: {exc}", {}
    for r in rows:
        if r["key"] in ab:
            r["speedup_interleaved"] = {b: {**v, "flops_ratio": r["flops_ratio"], "efficiency": v["speedup"] / r["flops_ratio"]}
                                        for b, v in ab[r["key"]].items()}
    for k, v in errors.items():
        print(f"warning: {k} failed: {v}", file=sys.stderr, flush=True)
    result["errors"] = errors
    print(f"reference, interleaved latency and profiles done ({time.perf_counter() - t:.0f}s)", flush=True)
    result["complete"] = all(r.get("status") == "ok" for r in rows) and not errors
    result["wall_seconds"] = time.perf_counter() - t_start
    result["run_seconds"] = done_times
    result["run_seconds_total"] = sum(r["wall_seconds"] for r in rows if r.get("wall_seconds"))
    merge_results(out_json, {"criteria": _round(result)}, quick=quick, command=command)
    print(f"wrote {out_json}", flush=True)
    if summary:
        from bench.criteria_report import write_summary

        for path in write_summary(json.loads(out_json.read_text()), out_json):
            print(f"wrote {path}", flush=True)
    return result


def _baseline_from_runs(result: dict[str, Any]) -> None:
    """Baseline accuracy := what the runs' ``validate`` stages measured for the unpruned model (the pruned models'
    evaluation split); the shared stage's own number is kept as ``accuracy_shared_stage``."""
    accs = [r["formats"]["pytorch_baseline"]["accuracy"] for r in result["runs"] if (r.get("formats") or {}).get("pytorch_baseline")]
    if accs:
        result["baseline"].setdefault("accuracy_shared_stage", result["baseline"].get("accuracy"))
        result["baseline"]["accuracy"] = statistics.median(accs)


def preset_from_args(a: argparse.Namespace) -> Preset:
    """The named preset with any command-line overrides applied."""
    p = PRESETS["quick" if a.quick else a.preset]
    changes: dict[str, Any] = {}
    for attr, key in (("criteria", "criteria"), ("targets", "targets")):
        if getattr(a, attr):
            changes[key] = tuple(getattr(a, attr))
    for attr in ("steps_per_epoch", "final_finetune_epochs", "iterations", "eval_images", "latency_iters"):
        if getattr(a, attr, None) is not None:
            changes[attr] = getattr(a, attr)
    if a.no_round_to:
        changes["round_to_extra"] = ()
    return replace(p, **changes)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The criteria benchmark's options (shared with ``python -m bench``)."""
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="budget preset (default cpu; --quick = quick)")
    ap.add_argument("--criteria", nargs="+", default=None, help=f"subset of {' '.join(ALL_CRITERIA)}")
    ap.add_argument("--targets", nargs="+", type=float, default=None, help="FLOPs reduction targets (fractions)")
    ap.add_argument("--steps", dest="steps_per_epoch", type=int, default=None, help="training steps per (fine-tune) epoch")
    ap.add_argument("--finetune-epochs", dest="final_finetune_epochs", type=int, default=None, help="final fine-tune epochs")
    ap.add_argument("--iterations", type=int, default=None, help="pruning iterations to reach each target")
    ap.add_argument("--eval-images", type=int, default=None,
                    help="test images for accuracy (a fixed seeded sample; default: the preset's, cpu = all 10000)")
    ap.add_argument("--latency-iters", type=int, default=None)
    ap.add_argument("--no-round-to", action="store_true", help="skip the round_to comparison run(s)")
    ap.add_argument("--baseline", default=None, help="trained unpruned checkpoint (default: the preset's; trained when absent)")
    ap.add_argument("--root", default=None, help="run folder (default runs/bench-criteria/<preset>)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the pipeline commands, run nothing")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.criteria``."""
    ap = argparse.ArgumentParser(prog="python -m bench.criteria", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the quick preset (≤ 15 min on 2 cores)")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/<date>-<host>[-quick].json)")
    ap.add_argument("--summary", metavar="JSON", default=None, help="only (re)write the Markdown summary + plots of this results file")
    add_arguments(ap)
    a = ap.parse_args(argv)
    if a.summary:
        from bench.criteria_report import write_summary

        for path in write_summary(json.loads(Path(a.summary).read_text()), Path(a.summary)):
            print(f"wrote {path}")
        return 0
    p = preset_from_args(a)
    try:
        run_benchmark(p, root=Path(a.root).resolve() if a.root else None, out_json=Path(a.out).resolve() if a.out else None,
                      checkpoint=a.baseline, dry_run=a.dry_run)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
