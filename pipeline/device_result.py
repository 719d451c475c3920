"""Results from the target device (``validate_on_device.py`` of the bundle → ``result.json``), brought back
into the run: checked against the run, kept as ``device_results/<runtime>-<host>.json``, rendered in the report.

    python -m pipeline report --run-dir RUN --device-result result.json

A result is accepted only when it has the format tag :data:`FORMAT`, the run's name and config hash, and every model
file it ran has the SHA-256 the run recorded for that file (a stage output in ``manifest.json``). Otherwise one
:class:`~ccpcsa.errors.UserError` and the run directory is left as it was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ccpcsa.errors import UserError
from ccpcsa.io.artifacts import atomic_write_json

from .manifest import MANIFEST, Manifest, hash_outputs, run_lock
from .records import RunManifest, obj

FORMAT = "ccpcsa-device-result/1"
DEVICE_DIR = "device_results"
REQUIRED = ("run", "config_hash", "runtime", "models", "artifacts", "checks", "passed", "images")


def load_device_result(path: Path) -> dict[str, Any]:
    """``result.json`` read and checked for shape (UserError: missing, not JSON, another format, keys missing)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"cannot read the device result {path} ({exc.strerror})") from exc
    except ValueError as exc:
        raise UserError(f"device result {path} is not valid JSON ({exc}); give the result.json validate_on_device.py wrote") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path} is not a device result (format {got!r}, expected {FORMAT!r}); give the result.json "
                        "validate_on_device.py wrote")
    missing = [k for k in REQUIRED if k not in data]
    if missing or not isinstance(data.get("models"), dict) or not isinstance(data.get("runtime"), dict) \
            or not isinstance(data.get("artifacts"), list):
        raise UserError(f"device result {path} is malformed (missing or wrong: {', '.join(missing) or 'models/runtime/artifacts'})")
    return data


def run_artifacts(manifest: RunManifest | dict[str, Any]) -> dict[str, str]:
    """``{file name: SHA-256}`` of every stage output the run's manifest records (a dict is read with
    :meth:`RunManifest.from_dict`: UserError when damaged)."""
    return RunManifest.from_dict(manifest).artifacts()


def check_against_run(result: dict[str, Any], manifest: RunManifest | dict[str, Any], path: Path) -> None:
    """UserError unless ``result`` came from this run's bundle: same run name and config hash, and each model
    file's SHA-256 equal to the run's (engines built on the device are not run artifacts and are not compared)."""
    m = RunManifest.from_dict(manifest)
    if result["run"] != m.run:
        raise UserError(f"{path} was made for run {result['run']!r}, this run is {m.run!r}; "
                        "give the result of this run's bundle")
    if result["config_hash"] != m.config_hash:
        raise UserError(f"{path} has config hash {str(result['config_hash'])[:12]}…, this run {str(m.config_hash)[:12]}…: "
                        "it came from a bundle of another configuration; rerun validate_on_device.py with this run's bundle")
    known = m.artifacts()
    for name, digest in result["models"].items():
        if name.endswith(".engine"):
            continue
        if name not in known:
            raise UserError(f"{path} ran {name}, which this run did not produce")
        if known[name] != digest:
            raise UserError(f"{path} ran a {name} other than this run's (SHA-256 {str(digest)[:12]}… vs {known[name][:12]}…); "
                            "rerun validate_on_device.py with this run's bundle")


def slug(result: dict[str, Any]) -> str:
    """``<runtime>-<host or CPU>`` in lowercase letters, digits, dots and dashes: the stored file's stem."""
    rt = result["runtime"]
    who = result.get("host") or rt.get("device") or rt.get("cpu") or "device"
    return re.sub(r"[^a-z0-9.]+", "-", f"{rt.get('runtime', 'runtime')}-{who}".lower()).strip("-.")[:80] or "device"


def device_results(run_dir: Path) -> list[dict[str, Any]]:
    """The results stored in ``run_dir/device_results/`` (each with ``stored_as``), by file name."""
    out = []
    for p in sorted((run_dir / DEVICE_DIR).glob("*.json")):
        try:
            out.append({**json.loads(p.read_text()), "stored_as": f"{DEVICE_DIR}/{p.name}"})
        except (OSError, ValueError):
            continue
    return out


def _pm(v: float | None, se: float | None, unit: str = "", digits: int = 2) -> str:
    if v is None:
        return "—"
    return f"{v:.{digits}f}{unit}" + (f" ± {se:.2f}" if se is not None else "")


def device_section(results: list[dict[str, Any]]) -> list[str]:
    """Markdown "Results from the target device": per result, each artifact's accuracy next to its unpruned
    reference's, p50 latency, the paired speedup against the promise per batch, and the checks (empty without
    results)."""
    if not results:
        return []
    md = ["## Results from the target device", ""]
    for r in results:
        rt = r["runtime"]
        md += [f"### {rt.get('runtime')} {rt.get('version', '')} on {rt.get('device') or rt.get('cpu')} "
               f"(`{r['stored_as']}`)", "",
               f"{r['images'].get('count')} images of `{r['images'].get('folder')}`, {rt.get('threads')} threads, "
               f"host `{r.get('host', '?')}`, {r.get('created', '')}; {'all checks passed' if r['passed'] else '**a check failed**'}.", "",
               "| file | accuracy % ± SE | unpruned % ± SE | batch | p50 ms | unpruned p50 ms | speedup ± SE | promised | off by "
               "| predicted for this target | off by |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for a in r["artifacts"]:
            speedups, ref_lats = obj(a.get("speedup")), obj(a.get("reference_latency_ms"))
            for b, lat in obj(a.get("latency_ms")).items():
                s, ref_lat = obj(speedups.get(b)), obj(ref_lats.get(b))
                rel, pred = s.get("relative_error"), s.get("prediction_error")
                md.append(f"| `{a['file']}` | {_pm(a.get('accuracy'), a.get('accuracy_se'))} | "
                          f"{_pm(a.get('reference_accuracy'), a.get('reference_accuracy_se'))} | {b} | {_pm(lat.get('p50'), None, digits=3)} | "
                          f"{_pm(ref_lat.get('p50'), None, digits=3)} | {_pm(s.get('speedup'), s.get('se'), '×')} | "
                          f"{_pm(s.get('promised'), None, '×')} | {'—' if rel is None else f'{100 * rel:+.0f} %'} | "
                          f"{_pm(s.get('predicted'), None, '×')} | {'—' if pred is None else f'{100 * pred:+.0f} %'} |")
        bad = [c for c in r["checks"] if not c["passed"]]
        md += ["", "Checks: " + ("; ".join(f"{c['name']} {'(informational) ' if c.get('informational') else ''}"
                                           f"{c['value']:.4g} vs {c['threshold']}" for c in bad) + " did not pass."
                                 if bad else f"all {len(r['checks'])} passed."), ""]
    return md


def device_report(run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """``(summaries for report.json, markdown lines)`` of the stored device results (both empty when none)."""
    results = device_results(run_dir)
    keys = ("stored_as", "runtime", "host", "created", "images", "artifacts", "checks", "passed")
    return [{k: r.get(k) for k in keys} for r in results], device_section(results)


def add_device_result(run_dir: Path, result_path: Path, render: Callable[[Path, dict[str, Any]], list[Path]]) -> Path:
    """Check ``result_path`` against the run in ``run_dir``, store it as ``device_results/<slug>.json`` and re-render
    the report with ``render`` (:func:`pipeline.report.write_report`; its record in the manifest updated to the new
    files). Returns the stored file. UserError, and nothing changed, for a missing run, a malformed result or one from
    another run."""
    mpath = run_dir / MANIFEST
    if not mpath.is_file():
        raise UserError(f"{run_dir} is not a run directory (no {MANIFEST}); give the --run-dir of the run the bundle came from")
    result = load_device_result(result_path)
    manifest = RunManifest.load(run_dir)
    check_against_run(result, manifest, result_path)
    with run_lock(run_dir):
        dest = atomic_write_json(run_dir / DEVICE_DIR / f"{slug(result)}.json", result)
        m = Manifest.open(run_dir, str(manifest.run))
        paths = render(run_dir, m.data)
        rec = m.stage("report")
        if rec is not None:  # keep the report stage current: its recorded outputs are the files just written
            rec["outputs"] = hash_outputs(run_dir, [p for p in paths if p.is_file()])
            m.save()
    return dest
