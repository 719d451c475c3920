#!/usr/bin/env python3
"""Check the bundle's promise on the target device: accuracy and paired speedup of every artifact this runtime runs.

    python validate_on_device.py --images DIR [--runtime onnxruntime-cpu] [--threads N] [--batch 1 32]
                                 [--max-images N] [--out result.json] [--strict]

Standalone (numpy, pillow and the runtime only; the bundle ships it beside ``sessions.py``, ``timing.py``,
``infer.py``, ``labels.json`` and ``promise.json``). ``DIR`` is an ImageFolder: one subfolder per class, named as the
classes of ``labels.json``, holding jpg/png/… files. For each pruned artifact of ``promise.json`` that ``--runtime``
runs, and its unpruned reference (the unpruned model through the same export path):

- top-1 accuracy ± standard error √(p(1−p)/n) (pp) of both on the same images;
- warmed p50/p95 latency of both and the paired speedup ± SE (:func:`timing.paired_calls`, interleaved rounds) per
  ``--batch`` (default: the batch sizes the promise has, else 1 32);
- checks: (a) pruned accuracy ≥ reference accuracy − the promise's ``max_accuracy_drop_pp``; (b) speedup > 1 at each
  batch; (c) the speedup on this device against the one the pipeline timed for this runtime (at the same thread count),
  as a relative error — flagged outside ±10 %, informational unless ``--strict``; (d) on the target the run was pruned
  for (``promise.json``'s ``predicted``: runtime, threads, precision, batch), the speedup on this device against the one the
  run predicted from that target's profile, the same way.

Writes ``--out`` (``result.json``, atomically; bring it back with ``python -m pipeline report --run-dir RUN
--device-result result.json``). Exit 0: every check passed; 1: a check failed; 2: a mistake (one ``error:`` line,
nothing written).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

try:
    from .infer import HERE, IMAGE_SUFFIXES, OneLineParser, latency, load_image, load_labels
    from .sessions import EdgeError, Session, family, installed, open_session, read_json, runtime_identity
    from .timing import paired_calls
except ImportError:  # flat in the bundle folder
    from infer import HERE, IMAGE_SUFFIXES, OneLineParser, latency, load_image, load_labels  # type: ignore[no-redef]
    from sessions import EdgeError, Session, family, installed, open_session, read_json, runtime_identity  # type: ignore[no-redef]
    from timing import paired_calls  # type: ignore[no-redef]

FORMAT = "ccpcsa-device-result/1"
PROMISE_TOLERANCE = 0.10  # relative error of the device's vs the promised speedup beyond which (c) is flagged
EVAL_BATCH = 32
PROMISE_FILE = "promise.json"  #: what the run promises (``pipeline.artifacts.PROMISE``)


def load_promise(folder: Path = HERE) -> dict[str, Any]:
    """``promise.json`` of the bundle folder (EdgeError when missing or malformed)."""
    path = folder / PROMISE_FILE
    promise = read_json(path, "run this script from an unpacked bundle")
    if not isinstance(promise, dict) or not isinstance(promise.get("artifacts"), list):
        raise EdgeError(f"{path} has no 'artifacts' list; unpack the bundle again")
    return promise


def artifacts_for(promise: dict[str, Any], runtime: str, folder: Path = HERE) -> list[dict[str, Any]]:
    """The promise's pruned artifacts that ``runtime`` runs (by runtime family), each ``{file, precision, reference}``;
    EdgeError when there is none or a file (artifact or reference) is missing from ``folder``."""
    fam = family(runtime)
    rows = [a for a in promise["artifacts"] if any(family(r) == fam for r in a.get("runtimes", []))]
    if not rows:
        known = sorted({r for a in promise["artifacts"] for r in a.get("runtimes", [])})
        raise EdgeError(f"the bundle has no artifact for runtime '{runtime}'; it has artifacts for: {', '.join(known)}")
    for a in rows:
        for name in (a["file"], a.get("reference")):
            if name and not (folder / name).is_file():
                hint = "; build the engines first: bash build_engine.sh" if name.endswith(".engine") else "; unpack the bundle again"
                raise EdgeError(f"artifact '{name}' is missing from {folder}{hint}")
    return rows


def scan_images(folder: Path, classes: list[str], max_images: int | None = None) -> tuple[list[Path], np.ndarray]:
    """The ImageFolder ``folder`` → (image paths, label indices into ``classes``); with ``max_images``, a seeded
    sample of that many. EdgeError for a missing folder, no class subfolders, unknown class names, no images."""
    if not folder.is_dir():
        raise EdgeError(f"image folder '{folder}' does not exist or is not a folder")
    subs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subs:
        raise EdgeError(f"'{folder}' has no class subfolders; give an ImageFolder: one subfolder per class, named as "
                        f"labels.json's classes ({', '.join(classes[:5])}{', …' if len(classes) > 5 else ''})")
    unknown = [d.name for d in subs if d.name not in classes]
    if unknown:
        raise EdgeError(f"class folder(s) {', '.join(repr(u) for u in unknown[:5])}{' …' if len(unknown) > 5 else ''} of "
                        f"'{folder}' are not classes of labels.json ({', '.join(classes[:10])}{', …' if len(classes) > 10 else ''})")
    paths, labels = [], []
    for d in subs:
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(f)
                labels.append(classes.index(d.name))
    if not paths:
        raise EdgeError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of '{folder}'")
    if max_images is not None and max_images < len(paths):
        keep = np.sort(np.random.default_rng(0).permutation(len(paths))[:max_images])
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    return paths, np.asarray(labels, dtype=np.int64)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def accuracy_record(correct: int, n: int) -> dict[str, Any]:
    """``{"accuracy", "accuracy_se", "accuracy_n", "correct"}``: percent, standard error √(p(1−p)/n) in pp."""
    p = correct / n
    return {"accuracy": 100.0 * p, "accuracy_se": 100.0 * float(np.sqrt(p * (1 - p) / n)), "accuracy_n": n, "correct": correct}


def _progress(text: str, last: list[float], final: bool = False) -> None:
    if final or time.monotonic() - last[0] > 2.0:
        print(text, file=sys.stderr, flush=True)
        last[0] = time.monotonic()


def evaluate(sessions: dict[str, Session], paths: list[Path], labels: np.ndarray, meta: dict[str, Any],
             batch: int = EVAL_BATCH) -> dict[str, dict[str, Any]]:
    """Top-1 accuracy of each session on the images (each chunk preprocessed once for all of them; the last chunk
    padded to ``batch`` so a static-shape model sees one batch size) → ``{name: accuracy_record}``."""
    correct = dict.fromkeys(sessions, 0)
    last = [time.monotonic()]
    what = ", ".join(sessions)
    for i in range(0, len(paths), batch):
        x = np.stack([load_image(p, meta) for p in paths[i : i + batch]]).astype(np.float32)
        n = len(x)
        if n < batch:
            x = np.concatenate([x, np.repeat(x[-1:], batch - n, axis=0)])
        for name, s in sessions.items():
            correct[name] += int((s.run(x)[:n].argmax(1) == labels[i : i + n]).sum())
        _progress(f"evaluating {what}: {i + n}/{len(paths)}", last, final=i + n == len(paths))
    return {name: accuracy_record(c, len(paths)) for name, c in correct.items()}


def promised_speedup(promise: dict[str, Any], runtime: str, precision: str, batch: int) -> float | None:
    """``promise["speedup"][runtime][precision][batch]`` (its ``speedup`` when a dict), None when absent."""
    entry = (((promise.get("speedup") or {}).get(runtime) or {}).get(precision) or {}).get(str(batch))
    if isinstance(entry, dict):
        entry = entry.get("speedup")
    return float(entry) if isinstance(entry, (int, float)) else None


def predicted_for(promise: dict[str, Any], runtime: str, threads: int, precision: str, batch: int) -> float | None:
    """The speedup the run predicted for the target it was pruned for (``promise["predicted"]``), when that target is
    this runtime, thread count, precision and batch; None otherwise."""
    p = promise.get("predicted") or {}
    if (p.get("runtime") != runtime or p.get("precision") != precision or int(p.get("batch") or 0) != batch
            or (p.get("threads") is not None and int(p["threads"]) != threads)):
        return None
    return float(p["speedup"])


def batch_input(paths: list[Path], meta: dict[str, Any], batch: int) -> np.ndarray:
    """A batch of ``batch`` real images (the first ones, repeated when there are fewer)."""
    xs = [load_image(p, meta) for p in paths[: min(batch, len(paths))]]
    return np.ascontiguousarray(np.stack([xs[i % len(xs)] for i in range(batch)]), dtype=np.float32)


def measure(promise: dict[str, Any], runtime: str, threads: int, rows: list[dict[str, Any]], sessions: dict[str, Session],
            paths: list[Path], meta: dict[str, Any], batches: list[int], rounds: int,
            round_seconds: float) -> list[dict[str, Any]]:
    """Per artifact: its and its reference's p50/p95 latency and the paired speedup (± SE) per batch, with the
    promised speedup (what ``validate`` timed on this runtime, compared only at the promise's thread count) and the
    relative error against it, and — on the target the run was pruned for — the predicted speedup and its error."""
    out = []
    for a in rows:
        new, ref = sessions[a["file"]], sessions.get(a.get("reference") or "")
        row: dict[str, Any] = {"latency_ms": {}, "reference_latency_ms": {}, "speedup": {}}
        for b in batches:
            print(f"timing {a['file']}" + (f" vs {a['reference']}" if ref else "") + f" at batch {b}", file=sys.stderr, flush=True)
            x = batch_input(paths, meta, b)
            row["latency_ms"][str(b)] = latency(new, x)
            if ref is None:
                continue
            row["reference_latency_ms"][str(b)] = latency(ref, x)
            pc = paired_calls(lambda r=ref, x=x: r.run(x), lambda n=new, x=x: n.run(x), rounds=rounds, round_seconds=round_seconds)
            same_threads = promise.get("threads") in (None, threads)
            promised = promised_speedup(promise, runtime, a["precision"], b) if same_threads else None
            rel = None if promised is None else float(pc["speedup"]) / promised - 1.0
            predicted = predicted_for(promise, runtime, threads, a["precision"], b)
            row["speedup"][str(b)] = {**pc, "promised": promised, "relative_error": rel,
                                      "within_tolerance": None if rel is None else abs(rel) <= PROMISE_TOLERANCE,
                                      "predicted": predicted,
                                      "prediction_error": None if predicted is None else float(pc["speedup"]) / predicted - 1.0}
        out.append(row)
    return out


def checks_for(artifacts: list[dict[str, Any]], max_drop: float, strict: bool) -> list[dict[str, Any]]:
    """(a) accuracy drop vs the reference ≤ ``max_drop``; (b) speedup > 1 per batch; (c) the device's vs the promised speedup
    within ±10 % (``informational`` unless ``strict``)."""
    checks = []
    for a in artifacts:
        if a.get("reference_accuracy") is not None:
            drop = a["reference_accuracy"] - a["accuracy"]
            checks.append({"name": f"{a['file']}_accuracy_drop_pp", "passed": drop <= max_drop, "value": drop,
                           "threshold": max_drop, "informational": False})
        for b, s in a["speedup"].items():
            checks.append({"name": f"{a['file']}_speedup_b{b}", "passed": s["speedup"] > 1.0, "value": s["speedup"],
                           "threshold": 1.0, "informational": False})
            if s["relative_error"] is not None:
                checks.append({"name": f"{a['file']}_speedup_vs_promise_b{b}", "passed": bool(s["within_tolerance"]),
                               "value": s["relative_error"], "threshold": PROMISE_TOLERANCE, "informational": not strict})
            if s.get("prediction_error") is not None:
                checks.append({"name": f"{a['file']}_speedup_vs_prediction_b{b}",
                               "passed": abs(s["prediction_error"]) <= PROMISE_TOLERANCE, "value": s["prediction_error"],
                               "threshold": PROMISE_TOLERANCE, "informational": not strict})
    return checks


def table(result: dict[str, Any]) -> str:
    """The result as a readable text table (accuracies, latencies, speedups, checks)."""
    lines = [f"{result['runtime']['runtime']} {result['runtime']['version']} on {result['runtime']['device']} "
             f"({result['runtime']['threads']} threads), {result['images']['count']} images of {result['images']['folder']}", ""]
    for a in result["artifacts"]:
        acc = f"{a['accuracy']:.2f} ± {a['accuracy_se']:.2f} %"
        ref = f"{a['reference_accuracy']:.2f} ± {a['reference_accuracy_se']:.2f} %" if a.get("reference") else "—"
        lines.append(f"{a['file']} ({a['precision']}): accuracy {acc}; unpruned {a.get('reference') or '—'}: {ref}")
        for b, lat in a["latency_ms"].items():
            s = a["speedup"].get(b)
            text = f"  batch {b}: p50 {lat['p50']:.3f} ms, p95 {lat['p95']:.3f} ms"
            if s:
                text += f"; unpruned p50 {a['reference_latency_ms'][b]['p50']:.3f} ms; speedup {s['speedup']:.2f}× ± {s['se']:.2f}"
                if s["promised"] is not None:
                    text += f" (promised {s['promised']:.2f}×, {100 * s['relative_error']:+.0f} %)"
                if s.get("predicted") is not None:
                    text += f" (predicted for this target {s['predicted']:.2f}×, {100 * s['prediction_error']:+.0f} %)"
            lines.append(text)
    lines += ["", "checks:"] + [f"  {'PASS' if c['passed'] else ('note' if c['informational'] else 'FAIL')} {c['name']}: "
                                f"{c['value']:.4g} (threshold {c['threshold']})" for c in result["checks"]]
    lines.append("PASSED" if result["passed"] else "FAILED")
    return "\n".join(lines)


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    """``obj`` as indented JSON at ``path``: a temporary file beside it, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def validate(a: argparse.Namespace, folder: Path = HERE) -> dict[str, Any]:
    """Everything the command line does but print and write: the result dict."""
    meta, promise = load_labels(folder), load_promise(folder)
    if not installed(a.runtime):  # (family() of an unknown name raises its own EdgeError)
        raise EdgeError(f"runtime '{a.runtime}' is not installed here; pip install -r requirements-{family(a.runtime)}.txt")
    if a.threads is not None and a.threads < 1:
        raise EdgeError(f"--threads must be >= 1, got {a.threads}")
    if any(b < 1 for b in a.batch or []) or (a.max_images is not None and a.max_images < 1) or a.rounds < 2:
        raise EdgeError("--batch and --max-images must be >= 1 and --rounds >= 2")
    out = Path(a.out)
    if not out.parent.is_dir():
        raise EdgeError(f"folder of --out '{out}' does not exist")
    rows = artifacts_for(promise, a.runtime, folder)
    paths, labels = scan_images(Path(a.images), list(meta["classes"]), a.max_images)
    promised = (promise.get("speedup") or {}).get(a.runtime) or {}
    batches = a.batch or sorted({int(b) for p in promised.values() for b in p}) or [1, 32]
    threads = a.threads or os.cpu_count() or 1
    files = list(dict.fromkeys(n for r in rows for n in (r["file"], r.get("reference")) if n))
    sessions = {n: open_session(a.runtime, folder / n, threads=threads, spinning=False) for n in files}
    acc = evaluate(sessions, paths, labels, meta)
    timed = measure(promise, a.runtime, threads, rows, sessions, paths, meta, batches, a.rounds, a.round_seconds)
    for s in sessions.values():
        s.close()
    artifacts = []
    for r, t in zip(rows, timed, strict=True):
        ref = acc.get(r.get("reference") or "")
        artifacts.append({"file": r["file"], "precision": r["precision"], "reference": r.get("reference"), **acc[r["file"]],
                          **({f"reference_{k}": v for k, v in ref.items()} if ref else {}), **t})
    max_drop = float((promise.get("checks") or {}).get("max_accuracy_drop_pp", 1.0))
    checks = checks_for(artifacts, max_drop, a.strict)
    return {"format": FORMAT, "run": promise.get("run"), "config_hash": promise.get("config_hash"),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
            "runtime": runtime_identity(a.runtime, threads), "threads": threads, "batches": batches,
            "images": {"folder": str(Path(a.images).resolve()), "count": len(paths), "classes": len(set(labels.tolist()))},
            "models": {n: sha256(folder / n) for n in files}, "artifacts": artifacts, "checks": checks,
            "max_accuracy_drop_pp": max_drop, "strict": a.strict,
            "passed": all(c["passed"] for c in checks if not c["informational"])}


def main(argv: list[str] | None = None) -> int:
    """Command line (module doc); returns the exit status."""
    ap = OneLineParser(prog="validate_on_device.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="ImageFolder: one subfolder per class (labels.json's names)")
    ap.add_argument("--runtime", default="onnxruntime-cpu", help="onnxruntime-cpu, openvino-cpu or tensorrt")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes to time (default: the promise's)")
    ap.add_argument("--max-images", type=int, default=None, help="evaluate a seeded sample of this many images")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds per speedup (default 15)")
    ap.add_argument("--round-seconds", type=float, default=0.03, help="seconds of reference calls per round")
    ap.add_argument("--out", default="result.json", help="where to write the result (default result.json)")
    ap.add_argument("--strict", action="store_true", help="a speedup on this device off the promise by > 10 %% fails")
    a = ap.parse_args(argv)
    try:
        result = validate(a)
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json_atomic(Path(a.out), result)
    print(table(result))
    print(f"wrote {a.out}; bring it back: python -m pipeline report --run-dir RUN --device-result {Path(a.out).name}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
