"""``python -m bench.torchvision_zoo``: torchvision's classification zoo (and 5 timm families) through ``pipeline run``.

For every architecture of :data:`ccpcsa.models.torchvision_zoo.TORCHVISION_ZOO` (and :data:`TIMM_ZOO` unless
``--no-timm``): build it as a user would (``torchvision.models.NAME(weights=None, num_classes=10)`` /
``timm.create_model(NAME, pretrained=False, num_classes=10)``), train it a few steps on the run's synthetic images
(``--train-steps``), save ``model.state_dict()`` — the weights as a torchvision user has them — and run the whole
chain with ``configs/torchvision_zoo.yaml`` in a subprocess: baseline from that state_dict → prune to −30 % MACs →
ONNX → simplified → both INT8 flavours → validate → report → bundle. One row per architecture: MACs and params
before/after, groups pruned / left whole and why, ONNX max |Δlogit| (absolute and relative to the logit scale),
INT8 top-1 agreement of both flavours, status (the first failed stage and its reason, or the run's ``error:`` line).

Writes ``bench/results/<date>-<host>-torchvision-zoo.json`` and ``….md`` (the table for bench/README.md); run
directories go to ``--root`` (default ``bench/work/torchvision-zoo``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ccpcsa.errors import first_line
from pipeline.artifacts import BASELINE_CKPT, MANIFEST, PRUNED_CKPT, REPORT_JSON

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "torchvision_zoo.yaml"
#: targets of the issue: MACs removed per architecture, ONNX parity relative to the logit scale
MIN_MACS_REMOVED = 0.25
MAX_REL_DIFF = 1e-3
#: architectures that need their native input side: VGG's ``AdaptiveAvgPool2d((7, 7))`` *upsamples* the 2×2 map of a
#: 64×64 image, which ONNX cannot express (an adaptive pooling's output must divide its input); at 224 it is a no-op.
NATIVE_SIZE = {"vgg11_bn": 224}


def architectures(timm: bool = True) -> list[tuple[str, str, dict[str, Any]]]:
    """``(row name, model.name, model.kwargs)`` of every benchmarked architecture: torchvision's 15, then timm's 5."""
    from ccpcsa.models.torchvision_zoo import TIMM_ZOO, TORCHVISION_ZOO

    rows = [(name, f"torchvision.models:{name}", dict(kw)) for name, kw in TORCHVISION_ZOO.items()]
    if timm:
        rows += [(f"timm/{name}", "timm:create_model", dict(kw)) for name, kw in TIMM_ZOO.items()]
    return rows


def save_user_weights(model_name: str, kwargs: dict[str, Any], data_spec: str, path: Path, train_steps: int,
                      seed: int = 0) -> dict[str, Any]:
    """Build the architecture, train it ``train_steps`` steps (batch 32) on ``data_spec`` and ``torch.save`` its
    ``state_dict()`` to ``path`` — the weights a user brings. Returns ``{"params", "train_seconds"}``."""
    import torch

    from ccpcsa.data import load_data
    from ccpcsa.models import build_model
    from ccpcsa.training.engine import TrainConfig, fit

    torch.manual_seed(seed)
    model = build_model(model_name, 10, **kwargs)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the pipeline runs (configs/torchvision_zoo.yaml run.threads)
    try:
        if train_steps > 0:
            data = load_data(data_spec, seed=seed, progress=False)
            fit(model, data, TrainConfig(epochs=1, batch_size=32, lr=0.01, schedule="cosine", max_steps_per_epoch=train_steps),
                progress=False)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return {"params": sum(p.numel() for p in model.parameters()), "train_seconds": round(time.perf_counter() - t0, 1)}


def surgery_check(model_name: str, kwargs: dict[str, Any], size: int, *, target: float = 0.7, seed: int = 0) -> dict[str, Any]:
    """The pruner's surgery checked exactly (as ``deploy_tests/test_byo_battery.py`` does) on the architecture with
    random BN statistics: random channel scores, the plan to ``target`` of the MACs, its channels first silenced (every
    member's output rows zeroed, so they carry exactly 0 downstream), then removed — the logits must not move. Returns
    ``{"surgery_max_abs_diff", "surgery_logit_scale", "surgery_macs_ratio", "groups", "left_whole"}``."""
    import numpy as np
    import torch

    from bench.common import randomize_batchnorm
    from ccpcsa.models import build_model, count_complexity
    from ccpcsa.surgery.macs_target import prune_to_target
    from ccpcsa.surgery.prune import ChannelPruner

    torch.manual_seed(seed)
    model = build_model(model_name, 10, **kwargs).eval()
    randomize_batchnorm(model)  # non-trivial BN statistics, so a mis-wired channel would show
    base = count_complexity(model, size)
    pruner = ChannelPruner(model, size, round_to=8, min_channels=8)
    fixed, groups = dict(pruner.fixed), len(pruner.groups)
    x = torch.randn(2, 3, size, size)
    seen: dict[str, torch.Tensor] = {}

    def silence_then_record(plan: dict[str, list[int]]) -> None:
        if set(plan) & set(pruner.fixed):
            raise AssertionError(f"a group left whole is in the plan: {sorted(set(plan) & set(pruner.fixed))}")
        with torch.no_grad(), pruner.silenced(plan):
            seen["before"] = model(x)

    rng = np.random.default_rng(seed + 1)
    _, after = prune_to_target(pruner, {g.key: rng.random(g.size) for g in pruner.groups}, target_macs=target * base.macs,
                               before_apply=silence_then_record)
    with torch.no_grad():
        got = model(x)
    return {"surgery_max_abs_diff": float((got - seen["before"]).abs().max()),
            "surgery_logit_scale": float(seen["before"].abs().max()), "surgery_macs_ratio": after.macs / base.macs,
            "groups": groups + sum(k not in {g.key for g in pruner.groups} for k in fixed), "left_whole": fixed}


def pipeline_args(run_dir: Path, model_name: str, kwargs: dict[str, Any], weights: Path, *extra: str) -> list[str]:
    """``pipeline run`` arguments for one architecture with ``configs/torchvision_zoo.yaml``."""
    return ["run", "--config", str(CONFIG), "--run-dir", str(run_dir), "--no-progress", "--set", f"model.name={model_name}",
            "--set", f"model.kwargs={json.dumps(kwargs)}", "--set", f"baseline.checkpoint={weights}", *extra]


def _widths(path: Path) -> dict[str, int]:
    from ccpcsa.io.checkpoint import load_checkpoint

    model = load_checkpoint(path).model
    return {n: int(getattr(m, "out_channels", getattr(m, "out_features", 0)) or 0) for n, m in model.named_modules()}


def group_summary(run_dir: Path, input_size: int, left_whole: dict[str, str] | None = None) -> dict[str, Any]:
    """Groups of the baseline (torch-pruning's coupled channel sets, rooted at a conv or linear) and which of them the
    pruned model narrowed: ``{"groups", "pruned", "left_whole": {root: why}}`` (``left_whole`` as the prune stage
    reported it when given)."""
    from ccpcsa.io.checkpoint import load_checkpoint
    from ccpcsa.surgery.prune import ChannelPruner

    pruner = ChannelPruner(load_checkpoint(run_dir / BASELINE_CKPT).model, input_size, round_to=8, min_channels=8)
    before, after = _widths(run_dir / BASELINE_CKPT), _widths(run_dir / PRUNED_CKPT)
    pruned = [g.key for g in pruner.groups if after.get(g.key, before[g.key]) < before[g.key]]
    return {"groups": len(pruner.groups) + sum(k not in {g.key for g in pruner.groups} for k in pruner.fixed),
            "pruned": len(pruned), "left_whole": dict(pruner.fixed if left_whole is None else left_whole)}


#: short names of the pruner's reasons for leaving a group whole (ccpcsa/prune.py), for the table
REASONS = (("channel shuffle", "channel shuffle"), ("normalized together by LayerNorm", "LayerNorm over channels"),
           ("normalized together by GroupNorm", "GroupNorm over channels"), ("grouped conv", "grouped-conv slices"),
           ("unequal parts", "unequal split"), ("torch-pruning cannot follow", "torch-pruning failure"),
           ("residual stream", "residual stream (scope)"))


def short_reason(why: str) -> str:
    """The table's name for one of the pruner's left-whole reasons."""
    return next((short for key, short in REASONS if key in why), why[:40])


def row_from_run(run_dir: Path, proc: subprocess.CompletedProcess[str] | None, input_size: int) -> dict[str, Any]:
    """One result row from a finished (or failed) run directory and the process that ran it."""
    row: dict[str, Any] = {"status": "ok"}
    manifest_path = run_dir / MANIFEST
    stages = json.loads(manifest_path.read_text())["stages"] if manifest_path.is_file() else {}
    failed = next(((n, s) for n, s in stages.items() if s.get("status") == "failed"), None)
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error:")] if proc else []
    if failed:
        row["status"] = f"failed at {failed[0]}: {failed[1].get('reason', '')}"[:200]
    elif errors or (proc is not None and proc.returncode != 0):
        row["status"] = (errors[-1] if errors else f"exit {proc.returncode if proc else '?'}")[:300]
    row["chain_seconds"] = round(sum(float(s.get("seconds") or 0) for s in stages.values()), 1)
    prune = (stages.get("prune") or {}).get("metrics") or {}
    if prune:
        row.update(macs_before=prune["base"]["macs"], macs_after=prune["final"]["macs"], params_before=prune["base"]["params"],
                   params_after=prune["final"]["params"], macs_removed=prune["flops_reduction"])
        try:
            row.update(group_summary(run_dir, input_size, prune.get("left_whole")))
        except Exception as exc:  # e.g. a pruned.pt that does not load: the row says so instead of ending the benchmark
            row["groups_error"] = first_line(exc, with_type=True)
    for stage, key in (("onnx", "onnx"), ("simplify", "onnx_simplified")):
        m = (stages.get(stage) or {}).get("metrics") or {}
        if "max_abs_diff" in m:
            scale = m.get("logit_scale") or float("nan")
            row[f"{key}_max_abs_diff"] = m["max_abs_diff"]
            row[f"{key}_logit_scale"] = scale
            row[f"{key}_rel_diff"] = m["max_abs_diff"] / max(scale, 1e-12)
    for stage in ("int8", "int8_cpu"):
        m = (stages.get(stage) or {}).get("metrics") or {}
        if "top1_agreement" in m:
            row[f"{stage}_agreement"] = m["top1_agreement"]
    report = run_dir / REPORT_JSON
    if report.is_file():
        fmts = {f["name"]: f for f in json.loads(report.read_text()).get("formats", [])}
        row["accuracy"] = {k: fmts[k].get("accuracy") for k in ("pytorch_baseline", "pytorch_pruned", "int8_cpu") if k in fmts}
    if row["status"] == "ok" and row.get("macs_removed", 0) < MIN_MACS_REMOVED:
        row["status"] = f"only {100 * row.get('macs_removed', 0):.1f} % MACs removed"
    if row["status"] == "ok" and row.get("onnx_rel_diff", 0) > MAX_REL_DIFF:
        row["status"] = f"ONNX parity {row['onnx_rel_diff']:.1e} of the logit scale > {MAX_REL_DIFF:g}"
    return row


def run_architecture(name: str, model_name: str, kwargs: dict[str, Any], root: Path, *, size: int, train_steps: int,
                     timeout: int, retrain: bool = False, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Weights (kept from an earlier session unless ``retrain``, so a rerun only redoes what changed), then the whole
    chain in a subprocess; the row for this architecture (also on failure)."""
    from bench.common import repo_env

    run_dir, weights = root / name.replace("/", "-"), root / "weights" / f"{name.replace('/', '-')}.pth"
    size = NATIVE_SIZE.get(name, size)
    spec = f"synthetic?size={size}&train=640&test=200"
    t0 = time.perf_counter()
    row: dict[str, Any] = {"arch": name, "model": model_name, "kwargs": kwargs, "size": size, "train_steps": train_steps}
    try:
        if retrain or not weights.is_file():
            row.update(save_user_weights(model_name, kwargs, spec, weights, train_steps))
    except Exception as exc:  # the architecture does not even build or train: that is its row
        row.update(status=f"error: building/training {name}: {first_line(exc, with_type=True)}")
        return row
    try:
        row.update(surgery_check(model_name, kwargs, size))
    except Exception as exc:  # recorded, and the chain still runs: the pipeline says what it makes of this model
        row["surgery_error"] = first_line(exc, with_type=True)
    args = pipeline_args(run_dir, model_name, kwargs, weights, "--set", f"data.spec={spec}", *extra)
    try:
        proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True,
                              env=repo_env({"OMP_NUM_THREADS": "1"}), timeout=timeout)
    except subprocess.TimeoutExpired:
        row.update(status=f"timeout after {timeout} s", seconds=round(time.perf_counter() - t0, 1))
        return row
    (run_dir / "pipeline.log").write_text(proc.stdout + proc.stderr)
    left = [ln for ln in proc.stdout.splitlines() if ln.startswith("left whole:")]
    row.update(row_from_run(run_dir, proc, size), seconds=round(time.perf_counter() - t0, 1), left_whole_line=left[:1])
    exact = row.get("surgery_max_abs_diff", float("inf")) <= 1e-5 * max(1.0, row.get("surgery_logit_scale", 1.0))
    if row["status"] == "ok" and not exact:
        row["status"] = f"surgery not exact: {row.get('surgery_error') or row.get('surgery_max_abs_diff')}"
    return row


def _fmt_m(v: float | None) -> str:
    return "—" if v is None else f"{v / 1e6:.1f} M"


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    """The results table (one line per architecture) with the targets' verdicts below it."""
    lines = [header, "", "| architecture | MACs before → after | removed | params before → after | groups pruned | "
             "left whole (why) | surgery \\|Δ\\| | ONNX max \\|Δlogit\\| (rel. to scale) | INT8 agreement TRT / ORT-CPU | "
             "status | chain s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        why: dict[str, int] = {}
        for reason in (r.get("left_whole") or {}).values():
            why[short_reason(reason)] = why.get(short_reason(reason), 0) + 1
        left = ", ".join(f"{n} {k}" for k, n in why.items()) or "—"
        onnx = (f"{r['onnx_max_abs_diff']:.1e} ({r['onnx_rel_diff']:.1e})" if "onnx_max_abs_diff" in r else "—")
        int8 = " / ".join(f"{r[k]:.0f} %" if k in r else "—" for k in ("int8_agreement", "int8_cpu_agreement"))
        removed = f"{100 * r['macs_removed']:.1f} %" if "macs_removed" in r else "—"
        groups = f"{r['pruned']} / {r['groups']}" if "pruned" in r else "—"
        surgery = f"{r['surgery_max_abs_diff']:.0e}" if "surgery_max_abs_diff" in r else r.get("surgery_error", "—")
        lines.append(f"| {r['arch']} | {_fmt_m(r.get('macs_before'))} → {_fmt_m(r.get('macs_after'))} | {removed} | "
                     f"{_fmt_m(r.get('params_before'))} → {_fmt_m(r.get('params_after'))} | {groups} | {left} | {surgery} | "
                     f"{onnx} | {int8} | {r.get('status', '?')} | {r.get('chain_seconds', '—')} |")
    tv = [r for r in rows if not r["arch"].startswith("timm/")]
    done = [r for r in tv if r.get("status") == "ok"]
    lines += ["", f"torchvision: {len(done)} of {len(tv)} complete the chain with ≥ {100 * MIN_MACS_REMOVED:.0f} % MACs "
              f"removed and ONNX max |Δlogit| ≤ {MAX_REL_DIFF:g} of the logit scale."]
    tm = [r for r in rows if r["arch"].startswith("timm/")]
    if tm:
        lines.append(f"timm: {sum(r.get('status') == 'ok' for r in tm)} of {len(tm)}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from bench.common import RESULTS_DIR, merge_results, results_stem

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", help="row names (e.g. resnet18 timm/convnext_atto)")
    ap.add_argument("--no-timm", action="store_true", help="torchvision's 15 only")
    ap.add_argument("--size", type=int, default=64, help="synthetic image side (default 64)")
    ap.add_argument("--train-steps", type=int, default=40,
                    help="training steps before the weights are saved (default 40: after 8, regnet_x's and squeezenet's "
                         "logits were nearly equal for every image and INT8 rounding flipped their top-1)")
    ap.add_argument("--table", action="store_true", help="only rewrite the markdown table from the results file")
    ap.add_argument("--retrain", action="store_true", help="train and save new weights even where earlier ones exist")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per architecture (default 1800)")
    ap.add_argument("--root", default=str(ROOT / "bench" / "work" / "torchvision-zoo"), help="run directories")
    ap.add_argument("--stem", default=None, help="results file stem (default <date>-<host>-torchvision-zoo)")
    a = ap.parse_args(argv)
    archs = [t for t in architectures(not a.no_timm) if not a.only or t[0] in a.only]
    if not archs:
        print(f"error: no architecture matches {a.only}", file=sys.stderr)
        return 2
    root = Path(a.root).resolve()
    stem = a.stem or f"{results_stem(False)}-torchvision-zoo"
    out_json, out_md = RESULTS_DIR / f"{stem}.json", RESULTS_DIR / f"{stem}.md"
    command = "python -m bench.torchvision_zoo " + " ".join(argv if argv is not None else sys.argv[1:])
    previous = json.loads(out_json.read_text()).get("results", {}).get("torchvision_zoo", []) if out_json.is_file() else []
    rows = {r["arch"]: r for r in previous}
    for name, model_name, kwargs in archs if not a.table else []:
        print(f"── {name}", flush=True)
        row = run_architecture(name, model_name, kwargs, root, size=a.size, train_steps=a.train_steps, timeout=a.timeout,
                               retrain=a.retrain)
        print(json.dumps({k: row.get(k) for k in ("arch", "status", "macs_removed", "pruned", "groups", "onnx_rel_diff",
                                                   "int8_agreement", "int8_cpu_agreement", "seconds")}), flush=True)
        rows[name] = row
        ordered = [rows[n] for n, _, _ in architectures(True) if n in rows]
        merge_results(out_json, {"torchvision_zoo": ordered}, quick=False, command=command)
    from ccpcsa.io.artifacts import atomic_write_text

    ordered = [rows[n] for n, _, _ in architectures(True) if n in rows]

    header = (f"`{command.strip()}` — {time.strftime('%Y-%m-%d')}, synthetic {a.size}×{a.size} images "
              f"({', '.join(f'{k} {v}×{v}' for k, v in NATIVE_SIZE.items())}), {a.train_steps} training steps before the "
              "state_dict is saved, `configs/torchvision_zoo.yaml`")
    atomic_write_text(out_md, markdown(ordered, header)).chmod(0o644)
    print(f"wrote {out_json} and {out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
