"""CCPCSA ablation (issue #13): every option of the channel score, and the allocation, as a row at equal MACs.

    python -m bench.ccpcsa_ablation [--model resnet20] [--targets 0.3 0.5] [--finetune-steps 0] [--rows NAME ...]
                                    [--test-images N] [--stats-images 2048] [--out bench/results/<date>-<host>-ablation.json]

Protocol (cheap enough to run every row on 2 CPU cores; the fine-tuned comparison of the criteria is
``bench/criteria.py``): the shared trained checkpoint (``../shared/models/<model>_cifar10.pt``) gets BAM attached and
retrained (``--bam-epochs`` × ``--bam-steps``, cached in ``runs/bench/ablation/``); channel statistics are
collected once per feature site (after BN, after BN + ReLU, before BN) over ``--stats-images`` train images in eval
mode; then per row and MACs target: score → order the blocks (allocation) → prune one-shot to the target
(``--round-to``, global MACs search; the criterion's weight compensation when it has one: QSFM's twins, CCPCSA's least
squares with ``compensate``) → remove BAM → re-estimate BatchNorm statistics on 1,024 unlabeled train images
(no gradient step) → top-1 on the test split (all 10,000 images unless ``--test-images``); with
``--finetune-steps N`` also after N SGD steps (lr 0.02, cosine, batch 128; ``--distill``: with knowledge distillation
from the unpruned model).

Each row is one change from the current ``ccpcsa`` definition (or another criterion, for reference). Results are
merged into the JSON after every row (the benchmark resumes: a row already in the file is not recomputed).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = ROOT.parent / "shared" / "models"

#: CCPCSA as defined until this ablation (README before issue #13): a_c · (1 − mean |ρ|), channel attention σ(Mc).
OLD = {"correlation": "mean", "attention": "channel", "magnitude": "none", "combine": "product", "features": "bn",
       "group": "mean", "compensate": False}
#: the winner, now ``ccpcsa``'s default: filter L1 × (1 − mean |ρ|) × BAM gain, least-squares compensation.
FINAL = {**OLD, "attention": "gain", "magnitude": "l1", "compensate": True}


def _v(**change: Any) -> dict[str, Any]:
    return {**OLD, **change}


# (row name, criterion, criterion options, allocation): every CCPCSA row is the old definition with one change
ROWS: list[tuple[str, str, dict[str, Any], str]] = [
    ("ccpcsa as of #8: a·(1−ρ̄)", "ccpcsa", _v(), "global"),
    ("stats after BN+ReLU", "ccpcsa", _v(features="relu"), "global"),
    ("stats before BN", "ccpcsa", _v(features="conv"), "global"),
    ("max |ρ| (nearest twin)", "ccpcsa", _v(correlation="max"), "global"),
    ("partial R² (unique variance)", "ccpcsa", _v(correlation="partial", attention="none"), "global"),
    ("channel+spatial attention", "ccpcsa", _v(attention="full"), "global"),
    ("no attention (= corr)", "ccpcsa", _v(attention="none"), "global"),
    ("rank combination", "ccpcsa", _v(combine="rank"), "global"),
    ("+ magnitude: energy", "ccpcsa", _v(magnitude="energy"), "global"),
    ("+ magnitude: l1", "ccpcsa", _v(magnitude="l1"), "global"),
    ("+ magnitude: bn", "ccpcsa", _v(magnitude="bn"), "global"),
    ("+ magnitude: l1, rank", "ccpcsa", _v(magnitude="l1", combine="rank"), "global"),
    ("group: max over members", "ccpcsa", _v(group="max"), "global"),
    ("allocation: cost (importance per MAC)", "ccpcsa", _v(), "cost"),
    ("mean ρ × l1 × BAM gain, allocation: params", "ccpcsa", _v(attention="gain", magnitude="l1"), "params"),
    ("allocation: uniform", "ccpcsa", _v(), "uniform"),
    ("partial R² × l1", "ccpcsa", _v(correlation="partial", attention="none", magnitude="l1"), "global"),
    ("partial R² × l1 × BAM gain", "ccpcsa", _v(correlation="partial", attention="gain", magnitude="l1"), "global"),
    ("partial R² × energy × BAM gain", "ccpcsa", _v(correlation="partial", attention="gain", magnitude="energy"), "global"),
    ("mean ρ × l1 × BAM gain", "ccpcsa", _v(attention="gain", magnitude="l1"), "global"),
    ("mean ρ × l1 × BAM gain + LS compensation (= ccpcsa)", "ccpcsa", FINAL, "global"),
    ("l1", "l1", {}, "global"),
    ("l1, allocation: cost", "l1", {}, "cost"),
    ("l1, allocation: params", "l1", {}, "params"),
    ("l1, allocation: uniform", "l1", {}, "uniform"),
    ("bn", "bn", {}, "global"),
    ("taylor", "taylor", {}, "global"),
    ("qsfm", "qsfm", {}, "global"),
    ("random", "random", {}, "global"),
]


def bam_model(model_name: str, data: Any, epochs: int, steps: int | None, lr: float, device: str, cache: Path) -> Any:
    """The shared checkpoint with BAM attached and retrained (cached in ``cache``)."""
    from ccpcsa.io.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
    from ccpcsa.models.attention import attach_bam
    from ccpcsa.training.engine import TrainConfig, fit

    if cache.is_file():
        return load_checkpoint(cache).model
    ck = load_checkpoint(SHARED_MODELS / f"{model_name}_cifar10.pt")
    model = ck.model
    opts = {"reduction": 16, "dilation": 4}
    attach_bam(model, ck.spec.input_size, **opts)
    fit(model, data, TrainConfig(epochs=epochs, lr=lr, schedule="cosine", warmup_epochs=0.0, max_steps_per_epoch=steps,
                                 batch_size=128, channels_last=True), device=device, progress=False, desc="bam")
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(cache, model, replace(ck.spec, attention=opts) if isinstance(ck.spec, ModelSpec) else ck.spec,
                    data.classes, data.mean, data.std)
    return model


def collect_stats(model: Any, data: Any, features: str, images: int, device: str) -> Any:
    """Channel statistics at ``features`` over ``images`` train images (eval mode)."""
    import torch

    from ccpcsa.criteria.stats import stats_collector
    from ccpcsa.pruning.loop import calibration_batches
    from ccpcsa.surgery.prune import ChannelPruner

    pruner = ChannelPruner(model, 32, round_to=1, min_channels=1)
    model.eval()
    with stats_collector(model, pruner, features, training_only=False, consumers=True) as col, torch.no_grad():
        for x, _ in calibration_batches(data, images, 256, device, seed=0):
            model(x)
    return col.stats


def run_row(model: Any, data: Any, stats: dict[str, Any], row: tuple[str, str, dict[str, Any], str], target: float,
            a: argparse.Namespace, test: Any) -> dict[str, Any]:
    """Prune a copy of ``model`` as ``row`` says to ``target`` MACs reduction and measure it (module docstring)."""
    from ccpcsa.criteria import ScoreContext, get_criterion
    from ccpcsa.models import count_complexity
    from ccpcsa.models.attention import detach_bam
    from ccpcsa.pruning.allocation import order_blocks
    from ccpcsa.pruning.loop import calibration_batches
    from ccpcsa.surgery.cost import MacsCost
    from ccpcsa.surgery.macs_target import prune_to_target
    from ccpcsa.surgery.prune import ChannelPruner, channels_per_layer
    from ccpcsa.training.engine import TrainConfig, evaluate, fit, recalibrate_batchnorm

    name, crit, options, allocation = row
    t0 = time.perf_counter()
    m = copy.deepcopy(model)
    criterion = get_criterion(crit, **options)
    plain = copy.deepcopy(m)
    detach_bam(plain)
    base = count_complexity(plain)
    pruner = ChannelPruner(m, 32, a.round_to, 8, 0.9)

    def batches():  # type: ignore[no-untyped-def]
        return calibration_batches(data, a.score_images, 64, a.device, 0)

    ctx = ScoreContext(m, pruner, stats.get(getattr(criterion, "features", "bn")), batches, seed=0)
    scores = criterion.score(ctx)
    order = order_blocks(pruner, scores, allocation, MacsCost(pruner) if allocation == "cost" else None)
    # the target is on the deployable model: BAM's own MACs are not part of it
    comp: list[Any] = []
    prune_to_target(pruner, scores, target_macs=(1 - target) * base.macs, ranked=order, exclude_attention=True,
                    before_apply=(lambda plan: comp.append(criterion.compensate(pruner, plan))) if hasattr(criterion, "compensate")
                    else None)
    detach_bam(m)
    final = count_complexity(m)
    recalibrate_batchnorm(m, lambda: calibration_batches(data, 1024, 256, a.device, 1))
    acc = evaluate(m, test, data.mean, data.std, device=a.device)[0]
    out = {"row": name, "criterion": crit, "options": options, "allocation": allocation, "target": target,
           "flops_reduction": 1 - final.macs / base.macs, "params_reduction": 1 - final.params / base.params,
           "accuracy_oneshot_bnrecal": acc, "channels": channels_per_layer(m),
           "compensated_groups": len(comp[0].compensated) if comp else 0}
    if a.finetune_steps:
        from ccpcsa.training.speed import Distillation

        kd = Distillation(copy.deepcopy(model).eval(), 0.7, 4.0) if a.distill else None  # the unpruned (BAM) model teaches
        fit(m, data, TrainConfig(epochs=1, lr=0.02, schedule="cosine", warmup_epochs=0.0, max_steps_per_epoch=a.finetune_steps,
                                 batch_size=128, channels_last=True), device=a.device, progress=False, desc="ft", distill=kd)
        out["accuracy_finetuned"] = evaluate(m, test, data.mean, data.std, device=a.device)[0]
        out["finetune_steps"] = a.finetune_steps
        out["distill"] = bool(a.distill)
    out["seconds"] = time.perf_counter() - t0
    return out


def se_pp(acc: float, n: int) -> float:
    """Standard error of an accuracy (percent) measured on ``n`` images, in percentage points."""
    p = acc / 100
    return 100 * math.sqrt(max(p * (1 - p), 0) / n)


def write_summary(json_path: Path) -> Path:
    """``<stem>.md`` beside the results: per model, a row per ablation row with its options, allocation, MACs removed and
    accuracy one-shot (+ BN re-estimation) and after the fine-tune, per target — computed from the JSON only."""
    from ccpcsa.io.artifacts import atomic_write_text

    data = json.loads(json_path.read_text())
    ab = data["results"]["ablation"]
    rows = ab["rows"]
    md = [f"# CCPCSA ablation — {data.get('date')} on `{(data.get('machine') or {}).get('host')}`", "",
          "Generated by `python -m bench.ccpcsa_ablation` (protocol in its docstring); raw results: "
          f"[`{json_path.name}`]({json_path.name}). Accuracy: top-1 % on the test images given per model, ± its standard "
          "error (≈ 0.45 pp at 75 %, 0.5 pp at 50 %, 0.37 pp at 83 % on 10,000 images).", ""]
    for model, ref in (ab.get("reference") or {}).items():
        mine = [r for r in rows if r.get("model") == model]
        targets = sorted({r["target"] for r in mine})
        fts = sorted({r.get("finetune_steps", 0) for r in mine if r.get("finetune_steps")})
        md += [f"## {model} (BAM model {ref['bam_model_accuracy']:.2f} % on {ref['test_images']} test images, round_to "
               f"{ref['round_to']})", ""]
        head = ["row", "criterion", "allocation"] + [f"−{100 * t:.0f} % one-shot" for t in targets]
        head += [f"−{100 * t:.0f} % + {n} steps{' KD' if any(r.get('distill') for r in mine if r.get('finetune_steps') == n) else ''}"
                 for t in targets for n in fts]
        md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        names = list(dict.fromkeys(r["row"] for r in mine))
        for name in names:
            cells = [name, next(r["criterion"] for r in mine if r["row"] == name), next(r["allocation"] for r in mine if r["row"] == name)]
            for t in targets:
                r = next((r for r in mine if r["row"] == name and r["target"] == t and not r.get("finetune_steps")), None)
                cells.append(f"{r['accuracy_oneshot_bnrecal']:.2f} ({100 * r['flops_reduction']:.1f} %)" if r else "—")
            for t in targets:
                for n in fts:
                    r = next((r for r in mine if r["row"] == name and r["target"] == t and r.get("finetune_steps") == n), None)
                    cells.append(f"{r['accuracy_finetuned']:.2f}" if r else "—")
            md.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        md.append("")
    md += ["Options of every row: the JSON's `options` (CCPCSA rows: the definition before this ablation with one change)."]
    out = json_path.with_suffix(".md")
    atomic_write_text(out, "\n".join(md) + "\n").chmod(0o644)
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from bench.common import RESULTS_DIR, merge_results, results_stem
    from ccpcsa.data import load_data
    from ccpcsa.training.engine import evaluate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--rows", nargs="*", default=None, help="row names (default: all)")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--finetune-steps", type=int, default=0)
    ap.add_argument("--distill", action="store_true", help="fine-tune with knowledge distillation from the unpruned model")
    ap.add_argument("--test-images", type=int, default=None)
    ap.add_argument("--stats-images", type=int, default=2048)
    ap.add_argument("--score-images", type=int, default=256)
    ap.add_argument("--bam-epochs", type=int, default=1)
    ap.add_argument("--bam-steps", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="imagefolder:../shared/data/cifar10-jpg.tar.gz")
    ap.add_argument("--out", default=None)
    ap.add_argument("--summary", metavar="JSON", default=None, help="only (re)write the Markdown table of this results file")
    a = ap.parse_args(argv)
    if a.summary:
        print(f"wrote {write_summary(Path(a.summary))}")
        return 0
    torch.set_num_threads(a.threads)
    data = load_data(a.data, progress=False)
    test = data.test.sample(a.test_images, seed=0)
    cache = ROOT / "runs" / "bench" / "ablation" / f"{a.model}-bam-e{a.bam_epochs}-s{a.bam_steps}.pt"
    model = bam_model(a.model, data, a.bam_epochs, a.bam_steps, 0.02, a.device, cache)
    out = Path(a.out) if a.out else RESULTS_DIR / f"{results_stem(False)}-ablation.json"
    done = json.loads(out.read_text()).get("results", {}).get("ablation", {}) if out.is_file() else {}
    def key(row: str, target: float, steps: int, distill: bool, round_to: int, model: str) -> tuple[Any, ...]:
        return row, target, steps, bool(distill) if steps else False, round_to, model

    rows_done = {key(r["row"], r["target"], r.get("finetune_steps", 0), r.get("distill", False), r.get("round_to", 8), r.get("model"))
                 for r in done.get("rows", [])}
    ref = {"model": a.model, "test_images": len(test), "bam_model_accuracy": evaluate(model, test, data.mean, data.std, device=a.device)[0],
           "round_to": a.round_to, "stats_images": a.stats_images}
    print(json.dumps(ref), flush=True)
    stats = {f: collect_stats(model, data, f, a.stats_images, a.device) for f in ("bn", "relu", "conv")}
    rows = [r for r in ROWS if a.rows is None or r[0] in a.rows]
    results = list(done.get("rows", []))
    for target in a.targets:
        for row in rows:
            if key(row[0], target, a.finetune_steps, a.distill, a.round_to, a.model) in rows_done:
                continue
            r = {**run_row(model, data, stats, row, target, a, test), "model": a.model, "test_images": len(test), "round_to": a.round_to}
            r["se_pp"] = se_pp(r["accuracy_oneshot_bnrecal"], len(test))
            print(json.dumps({k: v for k, v in r.items() if k != "channels"}), flush=True)
            results.append(r)
            merge_results(out, {"ablation": {"reference": {**done.get("reference", {}), a.model: ref}, "rows": results}},
                          quick=False, command="python -m bench.ccpcsa_ablation " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"wrote {write_summary(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
