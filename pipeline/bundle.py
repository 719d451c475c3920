"""The ``bundle`` stage: ``bundle.tar.gz``, everything the edge device needs to run the pruned model and to check,
on the device itself, what the run promises about it.

Members (flat, under ``bundle/``): the pruned FP32 model (simplified), ``model.int8.onnx`` (TensorRT's S8S8 flavour),
``model.int8.cpu.onnx`` (onnxruntime CPU / OpenVINO, U8S8), the unpruned references ``validate`` timed them against
(``baseline.sim.onnx`` or ``baseline.onnx``, ``baseline.int8.cpu.onnx``), ``labels.json`` (preprocessing),
``promise.json`` (what was observed here: accuracies, speedups per runtime / precision / batch, the accuracy gate),
``build_engine.sh``, the standalone scripts of :mod:`export.edge` (``infer.py``, ``validate_on_device.py``,
``sessions.py``, ``timing.py``, ``target_probe.py`` when it exists), ``README.md`` and one ``requirements-*.txt`` per
runtime family.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from ccpcsa.io.artifacts import atomic_path, sha256_file
from export.tensorrt.engine_file import engine_name

from .artifacts import (
    BASELINE_INT8_CPU_ONNX,
    BASELINE_INT8_ONNX,
    BASELINE_ONNX,
    BASELINE_SIM_ONNX,
    BASELINE_STEM,
    BUILD_ENGINE_SH,
    BUNDLE,
    BUNDLE_README,
    LABELS,
    MODEL_INT8_CPU_ONNX,
    MODEL_INT8_ONNX,
    MODEL_STEM,
    PROMISE,
)
from .orchestrate import StageContext, StageOutcome
from .report import speedups_by_runtime
from .stages_export import _fp32_onnx, baseline_fp32_name

EDGE = Path(__file__).resolve().parents[1] / "export" / "edge"
EDGE_SCRIPTS = ("infer.py", "validate_on_device.py", "sessions.py", "timing.py", "target_probe.py")  # the last if present
PROMISE_FORMAT = "ccpcsa-bundle-promise/1"
CPU_RUNTIMES = ["onnxruntime-cpu", "openvino-cpu"]


def edge_scripts() -> dict[str, Path]:
    """The standalone scripts the bundle ships, by name (``target_probe.py`` only where it exists)."""
    return {n: EDGE / n for n in EDGE_SCRIPTS if (EDGE / n).is_file()}


def bundle_inputs(cfg: Any) -> dict[str, str]:
    """Part of the bundle stage's key: the whole config's hash (``promise.json`` and ``labels.json`` carry it) and the
    SHA-256 of each edge script, so a changed script or config rebuilds the bundle."""
    return {"config_hash": cfg.section_hash(), **{f"export/edge/{n}": sha256_file(p) for n, p in edge_scripts().items()}}


def _version(pkg: str) -> str | None:
    try:
        return importlib_metadata.version(pkg)
    except importlib_metadata.PackageNotFoundError:
        return None


def labels_json(ctx: StageContext, fp32: Path) -> dict[str, Any]:
    """``labels.json``: classes and preprocessing from the FP32 model's ONNX metadata, the run's name and hash."""
    from export.metadata import read_metadata

    meta = read_metadata(fp32)
    size = meta.get("input_size") or [32, 32]
    return {"classes": list(meta.get("class_names", [])), "input_size": list(size) if isinstance(size, list) else [size, size],
            "mean": list(meta.get("mean", [])), "std": list(meta.get("std", [])), "channel_order": meta.get("channel_order", "RGB"),
            "layout": "NCHW", "default_model": fp32.name, "run": ctx.cfg.run.name, "config_hash": ctx.cfg.section_hash()}


def artifacts(ctx: StageContext, fp32: Path, validate: dict[str, Any]) -> list[dict[str, Any]]:
    """The pruned artifacts of the bundle: file, precision, the runtimes that run it, the unpruned reference it is
    timed against on the device (None where the run wrote none). TensorRT engines and their references
    (``baseline.<precision>.engine``) are built on the device by ``build_engine.sh`` from the ONNX files named in
    ``built_from`` / ``reference_built_from``, which the bundle carries."""
    ref = validate.get("speedup_reference") or {}
    base_fp32 = ref.get("fp32") or next((n for n in (BASELINE_SIM_ONNX, BASELINE_ONNX) if ctx.path(n).exists()), None)
    base_int8 = ref.get("int8") or (BASELINE_INT8_CPU_ONNX if ctx.path(BASELINE_INT8_CPU_ONNX).exists() else None)
    out = [{"file": fp32.name, "precision": "fp32", "runtimes": CPU_RUNTIMES, "reference": base_fp32,
            "what": "the pruned model, FP32"}]
    if ctx.path(MODEL_INT8_CPU_ONNX).exists():
        out.append({"file": MODEL_INT8_CPU_ONNX, "precision": "int8", "runtimes": CPU_RUNTIMES, "reference": base_int8,
                    "what": "the pruned model, INT8 QDQ U8S8 (CPU integer kernels)"})
    if ctx.path(BUILD_ENGINE_SH).exists():
        out.append({"file": engine_name(MODEL_STEM, "fp16"), "precision": "fp16", "runtimes": ["tensorrt"],
                    "reference": engine_name(BASELINE_STEM, "fp16"),
                    "built_from": fp32.name, "reference_built_from": baseline_fp32_name(ctx),
                    "what": "TensorRT FP16 engine, built on the device by build_engine.sh"})
        if ctx.path(MODEL_INT8_ONNX).exists():
            out.append({"file": engine_name(MODEL_STEM, "int8"), "precision": "int8", "runtimes": ["tensorrt"],
                        "reference": engine_name(BASELINE_STEM, "int8"),
                        "built_from": MODEL_INT8_ONNX, "reference_built_from": BASELINE_INT8_ONNX,
                        "what": "TensorRT INT8 engine, built on the device by build_engine.sh"})
    for a in out:  # a reference the run did not write (or cannot be built from what it wrote) is no reference
        source = a.get("reference_built_from", a["reference"])
        if a["reference"] and not (source and ctx.path(source).exists()):
            a["reference"] = None
            a.pop("reference_built_from", None)
    return out


def promise_json(ctx: StageContext, fp32: Path, arts: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """``promise.json``: the run, which file is for which runtime, what ``validate`` found (accuracies, speedups per
    runtime / precision / batch) and the accuracy gate the device checks against."""
    stages = ctx.manifest.data.get("stages", {})
    v = (stages.get("validate") or {}).get("metrics") or {}
    speedups = speedups_by_runtime(v)
    accuracy = {name: {k: f.get(k) for k in ("file", "accuracy", "accuracy_se", "accuracy_n")}
                for name, f in (v.get("formats") or {}).items() if f.get("status", "ok") == "ok" and f.get("accuracy") is not None}
    return {"format": PROMISE_FORMAT, "run": ctx.cfg.run.name, "config_hash": ctx.cfg.section_hash(), "classes": classes,
            "artifacts": arts, "files": file_roles(fp32, arts),
            "accuracy": accuracy, "evaluation": v.get("evaluation"), "speedup": speedups,
            "speedup_reference": v.get("speedup_reference") or {}, "threads": ctx.cfg.export.threads,
            "checks": {"max_accuracy_drop_pp": ctx.cfg.checks.max_accuracy_drop},
            "measured_with": {p: _version(p) for p in ("onnxruntime", "openvino") if _version(p)},
            **({"predicted": pred} if (pred := predicted_speedup(stages)) else {})}


def predicted_speedup(stages: dict[str, Any]) -> dict[str, Any] | None:
    """What the prune stage expected of the target it pruned for, when it priced steps in that target's latency
    (``target.profile`` or a built-in runtime with a latency target or allocation): ``{runtime, threads, precision,
    batch, speedup, target}`` — the speedup being the profile's calibrated estimate (or the on-the-fly measurement of
    a built-in target) for the final pruned model; None when the prune stage used no latency."""
    p = (stages.get("prune") or {}).get("metrics") or {}
    lat, target = p.get("latency") or {}, p.get("target") or {}
    if lat.get("final_speedup") is None or not target.get("name"):
        return None
    return {"runtime": target["name"], "threads": (target.get("identity") or {}).get("threads"),
            "precision": target.get("precision", "fp32"), "batch": lat.get("batch", 1), "speedup": lat["final_speedup"],
            "target": target.get("label") or target["name"]}


def file_roles(fp32: Path, arts: list[dict[str, Any]]) -> dict[str, str]:
    """One line per bundle file (and engine built on the device): what it is and which runtime runs it."""
    roles = {a["file"]: f"{a['what']} — runtime: {', '.join(a['runtimes'])}" for a in arts}
    refs = {a["reference"]: f"unpruned reference of {a['file']} (timed against it) — runtime: {', '.join(a['runtimes'])}"
            for a in arts if a.get("reference")}
    sources = {a["reference_built_from"]: f"the unpruned model for TensorRT (build_engine.sh → {a['reference']})"
               for a in arts if a.get("reference_built_from") and a["reference_built_from"] not in refs}
    return {**sources, **roles, **refs,
            MODEL_INT8_ONNX: "INT8 QDQ S8S8 for TensorRT only (build_engine.sh → model.int8.engine); NOT a CPU model",
            LABELS: "classes and preprocessing (read by the scripts)",
            PROMISE: "what the run observed and promises (read by validate_on_device.py)",
            BUILD_ENGINE_SH: "trtexec lines: model.fp16.engine, model.int8.engine and their unpruned references "
                               "(baseline.*.engine) on the TensorRT device",
            "infer.py": "classify image files on any runtime, warmed p50 latency",
            "validate_on_device.py": "accuracy and paired speedup vs the unpruned reference on this device → result.json",
            "sessions.py": "opens a model on onnxruntime-cpu / openvino-cpu / tensorrt (used by the scripts)",
            "timing.py": "the interleaved paired timer (used by the scripts)",
            "target_probe.py": "measures this device's speed profile → target.json"}


def readme(labels: dict[str, Any], promise: dict[str, Any], members: list[str]) -> str:
    """``README.md`` of the bundle: what each file is for and for which runtime, and how to run the scripts."""
    roles = promise["files"]
    lines = [f"# Edge bundle of run `{promise['run']}`", "", f"config hash `{promise['config_hash']}`; "
             f"{len(labels['classes'])} classes; input {labels['input_size'][0]}×{labels['input_size'][1]} {labels['channel_order']}, "
             "NCHW float32, `x = (pixel/255 − mean) / std` (labels.json).", "", "## Files", "", "| file | what / runtime |", "|---|---|"]
    lines += [f"| `{m}` | {roles.get(m, 'requirements of one runtime: pip install -r ' + m if m.startswith('requirements') else '')} |"
              for m in members if m != BUNDLE_README]
    lines += [f"| `{a['file']}` (built here) | {roles[a['file']]} |" for a in promise["artifacts"] if a["file"] not in members]
    lines += ["", "`model.int8.onnx` is the S8S8 flavour TensorRT wants: on a CPU it runs slowly (Q/DQ as float "
              "operations) — on onnxruntime CPU or OpenVINO use `model.int8.cpu.onnx`.", "",
              "## Install", "", "    pip install -r requirements-onnxruntime.txt   # or requirements-openvino.txt / "
              "requirements-tensorrt.txt", "",
              "## Classify images", "", "    python infer.py img1.jpg img2.png --runtime onnxruntime-cpu --model model.int8.cpu.onnx",
              "", "`--model` is a path or a file name of this folder; the latency printed is the p50 of warmed calls.", "",
              "## TensorRT engines", "", "    bash build_engine.sh        # → model.fp16.engine, model.int8.engine, baseline.*.engine (needs trtexec)",
              "    python infer.py img.jpg --runtime tensorrt --model model.int8.engine", "",
              "## Check the promise on this device", "",
              "    python validate_on_device.py --images DIR --runtime onnxruntime-cpu --batch 1 32 --out result.json", "",
              "`DIR`: one subfolder per class named as in labels.json, with jpg/png images. It measures the accuracy of "
              "each artifact for the runtime and of its unpruned reference on the same images, the paired speedup "
              "(± SE) at each batch, and checks them against `promise.json`: the accuracy drop ≤ "
              f"{promise['checks']['max_accuracy_drop_pp']} pp, a speedup > 1, and the speedup within ±10 % of the "
              f"one the pipeline timed at {promise.get('threads')} threads and, on the target the run was pruned for"
              f"{_target_line(promise)}, of the one it predicted (informational unless `--strict`). Exit 0: all passed; "
              "1: a check failed; 2: a mistake in the input.", "", "Bring `result.json` back to the machine of the run:", "",
              f"    python -m pipeline report --run-dir runs/{promise['run']} --device-result result.json", "",
              "It is checked against the run (same run, config hash and model files) and the report gains a "
              "\"Results from the target device\" section.", ""]
    return "\n".join(lines)


def _target_line(promise: dict[str, Any]) -> str:
    """`` (<target>: --runtime R --threads N, <precision> at batch B, predicted S×)`` or ``""`` without a prediction."""
    p = promise.get("predicted")
    if not p:
        return ""
    threads = f" --threads {p['threads']}" if p.get("threads") else ""
    return (f" ({p['target']}: `--runtime {p['runtime']}{threads}`, {p['precision']} at batch {p['batch']}, predicted "
            f"{p['speedup']:.2f}×)")


def requirements(promise: dict[str, Any]) -> dict[str, bytes]:
    """``requirements-<runtime>.txt`` per runtime family (the versions the run timed with, as comments)."""
    seen = promise.get("measured_with") or {}

    def note(pkg: str) -> str:
        return f"  # the run timed with {seen[pkg]}" if pkg in seen else ""

    return {"requirements-onnxruntime.txt": f"numpy\npillow\nonnxruntime{note('onnxruntime')}\n".encode(),
            "requirements-openvino.txt": f"numpy\npillow\nopenvino{note('openvino')}\n".encode(),
            "requirements-tensorrt.txt": (b"# TensorRT itself comes with the device's SDK (JetPack) or `pip install tensorrt`\n"
                                          b"# matching its CUDA; build the engines with build_engine.sh (trtexec).\n"
                                          b"numpy\npillow\npycuda\n")}


def stage_bundle(ctx: StageContext) -> StageOutcome:
    """``bundle.tar.gz`` for the edge device (module doc): models, unpruned references, labels.json, promise.json,
    build_engine.sh, the edge scripts, README.md and requirements files."""
    fp32 = _fp32_onnx(ctx)
    labels = labels_json(ctx, fp32)
    validate = (ctx.manifest.data.get("stages", {}).get("validate") or {}).get("metrics") or {}
    arts = artifacts(ctx, fp32, validate)
    promise = promise_json(ctx, fp32, arts, labels["classes"])
    members: dict[str, bytes] = {LABELS: json.dumps(labels, indent=2).encode(),
                                 PROMISE: json.dumps(promise, indent=2).encode(),
                                 **{n: p.read_bytes() for n, p in edge_scripts().items()}, **requirements(promise)}
    files = [fp32.name, MODEL_INT8_ONNX, MODEL_INT8_CPU_ONNX, BUILD_ENGINE_SH,
             *(a.get("reference_built_from") or a["reference"] for a in arts if a.get("reference"))]
    for name in dict.fromkeys(files):
        if ctx.path(name).exists():
            members[name] = ctx.path(name).read_bytes()
    members[BUNDLE_README] = readme(labels, promise, sorted([*members, BUNDLE_README])).encode()
    out = ctx.path(BUNDLE)
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(f"bundle/{name}")
            info.size, info.mtime = len(data), int(time.time())
            info.mode = 0o755 if name.endswith((".py", ".sh")) else 0o644
            tar.addfile(info, io.BytesIO(data))
    return StageOutcome(outputs=[out], metrics={"files": sorted(members), "artifacts": arts})
