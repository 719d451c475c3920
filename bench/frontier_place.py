"""One pipeline run placed over the accuracy-vs-speedup frontier of the same model: an optional section of its report.

    python -m bench.frontier place --run-dir runs/default [--frontier FILE ...]
    python -m bench.frontier place --config configs/default.yaml      # the run of that config (runs/<run.name>)

The frontier files are the ``--frontier`` ones, else the run's own config's ``report.frontier`` (one file or a list;
none named: one line, nothing written). :func:`place_run` writes ``frontier.md`` (:func:`frontier_section`'s lines,
stamped with the run's results, :func:`pipeline.report.section_stamp`) and ``plots/frontier.png`` into the run
directory, each atomically, and re-renders the run's report (:func:`pipeline.report.write_report`), which shows the
section. ``make deploy`` runs it after the pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.frontier_points import (
    LABELS,
    FrontierPoint,
    alignments,
    by_criterion,
    compare_at_speed,
    load_frontier,
    plot_frontier,
    run_point,
)
from ccpcsa.errors import UserError
from ccpcsa.io.artifacts import atomic_write_text
from pipeline.manifest import MANIFEST, Manifest, hash_outputs, run_lock
from pipeline.records import RunManifest, obj
from pipeline.report import FRONTIER_PLOT, FRONTIER_SECTION, build_report, section_stamp, write_report


def frontier_paths(value: str | list[str] | None) -> list[str]:
    """``report.frontier`` as a list of paths (one file, a list, or none)."""
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def frontier_section(run_dir: Path, manifest: RunManifest | dict[str, Any], report: dict[str, Any],
                     paths: list[str]) -> tuple[list[str], Path | None]:
    """``(lines, plot)``: the report's Frontier section of the run in ``run_dir`` over the frontier files ``paths``, and
    ``run_dir/plots/frontier.png`` when this run's point was drawn over one (written atomically; None when not drawn).
    Of several files, the first readable one of this model whose widths are in this run's channel block
    (:func:`alignments`; the run's CPU), else the first readable one, with a line saying its speeds come from another
    kind of CPU (also when the blocks agree but the frontier file's SIMD level —
    :func:`ccpcsa.surgery.alignment.simd_label`, e.g. AMX or not — is not this machine's); per batch the run against
    each criterion's frontier at its own speed (:func:`compare_at_speed`: the frontier's accuracy there, the
    difference ± SE, above / tie / below). A missing or other-model frontier file is said in one line; no lines and
    no plot when ``paths`` is empty."""
    manifest = RunManifest.from_dict(manifest, run_dir / MANIFEST)
    if not paths:
        return [], None
    model, prune = manifest.model, manifest.metrics("prune")
    mine = prune.get("alignment")
    said, found = _read_frontiers(paths, model)
    if not found:
        return ["## Frontier", "", *said, "No frontier drawn.", ""], None
    path, result, points = next((f for f in found if mine and int(mine) in alignments(f[1])), found[0])
    me = run_point(report, f"{prune.get('method', 'this run')} (this run)")
    base = float(obj(result.get("baseline")).get("accuracy") or obj(report.get("baseline")).get("accuracy") or 0.0)
    plot = plot_frontier(points, base, run_dir / FRONTIER_PLOT, run=me,
                         title=f"{model}: this run on the frontier of {Path(path).name}")
    machine = obj(result.get("machine"))
    lines = ["## Frontier", "", f"This run over the accuracy-vs-speedup frontier of `{path}` "
             f"({len(points)} points, {machine.get('cpu', '?')}): `plots/frontier.png`.", ""]
    lines += [*said, ""] if said else []
    lines += _like_for_like(mine, alignments(result), machine.get("simd"))
    lines += _same_budget(manifest, prune, obj(result.get("preset")))
    if me is None:
        return lines + ["This run has no speedup yet (validate did not run).", ""], plot
    return lines + _reading_lines(me, points) + [
        "", "(A criterion's frontier: the Pareto front of its runs; a tie is within one combined SE of both "
        "accuracies and of the speeds through the frontier's slope — `bench.frontier_points.compare_at_speed`.)", ""], plot


def _like_for_like(mine: Any, theirs_align: list[int], theirs_simd: str | None) -> list[str]:
    """The line saying the frontier's speeds come from another kind of CPU (other channel blocks, or the same blocks
    on another SIMD level than this machine's); none when they are alike."""
    if mine and theirs_align and int(mine) not in theirs_align:
        return [f"Not like for like: the frontier's widths are in blocks of {'/'.join(map(str, theirs_align))}, this "
                f"run's in blocks of {mine} (another CPU's SIMD width, `prune.widths.round_to: auto`): its speedups were timed "
                "on another kind of CPU. Point `report.frontier` at a frontier timed on this one "
                "(`python -m bench.frontier`).", ""]
    from ccpcsa.surgery.alignment import simd_label

    here = simd_label()
    if theirs_simd and theirs_simd != here:
        return [f"Not like for like: the frontier was timed on a CPU with {theirs_simd}, this run on one with "
                f"{here}; the same channel blocks, but the runtime's kernels differ, and so do speedups. Point "
                "`report.frontier` at a frontier timed on this kind of CPU (`python -m bench.frontier`).", ""]
    return []


def recovery_steps(steps_per_epoch: Any, finetune_epochs: Any, final_epochs: Any, iterations: Any) -> int | None:
    """Fine-tune steps of one pruning run: ``steps_per_epoch × (finetune_epochs × iterations + final_epochs)``
    (None when a factor is unknown, e.g. full epochs)."""
    try:
        return int(steps_per_epoch) * (int(finetune_epochs) * int(iterations) + int(final_epochs))
    except (TypeError, ValueError):
        return None


def _run_budget(manifest: RunManifest, prune: dict[str, Any]) -> int | None:
    """This run's fine-tune steps (:func:`recovery_steps`) from its config and the settings its loop ran
    (``prune_config``: nested, or flat in runs made before the prune sections)."""
    ran = obj(prune.get("prune_config"))
    recovery = obj(ran.get("recovery")) or ran
    return recovery_steps(obj(manifest.config.get("train")).get("max_steps_per_epoch"), recovery.get("finetune_epochs"),
                          recovery.get("final_finetune_epochs"), prune.get("iterations"))


def _same_budget(manifest: RunManifest, prune: dict[str, Any], preset: dict[str, Any]) -> list[str]:
    """The line saying the frontier's runs fine-tuned with another step budget than this run (a frontier point's
    accuracy depends on it as much as on its speed); none when they match or either is unknown."""
    mine = _run_budget(manifest, prune)
    theirs = recovery_steps(preset.get("steps_per_epoch"), preset.get("finetune_epochs"),
                            preset.get("final_finetune_epochs"), preset.get("iterations"))
    if mine is None or theirs is None or mine == theirs:
        return []
    return [f"Not like for like: the frontier's runs fine-tuned {theirs:,} steps each "
            f"(`{preset.get('name', 'its preset')}`), this run {mine:,}; accuracy differences mix budget with method. "
            "A frontier at this run's budget: `python -m bench.frontier --preset …` with its `steps_per_epoch` and "
            "epochs set alike.", ""]


def _read_frontiers(paths: list[str], model: str | None) -> tuple[list[str], list[tuple[str, dict[str, Any], list[FrontierPoint]]]]:
    """``(lines said, [(path, result, points)])`` of the frontier files of ``model`` among ``paths``: an unreadable
    file or one of another model is a line said, not a result."""
    said: list[str] = []
    found: list[tuple[str, dict[str, Any], list[FrontierPoint]]] = []
    for p in paths:
        try:
            result, points = load_frontier(Path(p).expanduser())
        except (OSError, ValueError) as exc:
            said.append(f"`report.frontier` {p} could not be read ({type(exc).__name__}: {exc}).")
            continue
        theirs = obj(result.get("preset")).get("model")
        if theirs != model:
            said.append(f"`report.frontier` {p} is a frontier of {theirs}, this run prunes {model}; not drawn.")
            continue
        found.append((p, result, points))
    return said, found


def _reading_lines(me: FrontierPoint, points: list[FrontierPoint]) -> list[str]:
    """One Markdown line per batch of ``me``'s speedups: ``me`` against each criterion's frontier at its own speed."""
    lines = []
    for b, (s, se) in sorted(me.speedup.items(), key=lambda kv: int(kv[0])):
        reads = []
        for crit, front in sorted(by_criterion(points, b).items()):
            row = next(iter(compare_at_speed([me], front, b)), None)
            name = LABELS.get(crit, crit)
            reads.append(f"{name} {row['other_accuracy']:.2f} % (this run {row['difference_pp']:+.2f} ± {row['se_pp']:.2f} pp: "
                         f"{row['verdict']})" if row else f"{name} outside its range")
        lines.append(f"- batch {b}: this run {me.accuracy:.2f} ± {me.accuracy_se:.2f} % at {s:.2f}× ± {se:.2f}; each "
                     f"criterion's frontier there: {'; '.join(reads)}" if reads else
                     f"- batch {b}: this run {me.accuracy:.2f} ± {me.accuracy_se:.2f} % at {s:.2f}× ± {se:.2f}; the frontier "
                     "has no speedup at this batch")
    return lines


def place_run(run_dir: Path, frontiers: list[str] | None = None) -> list[Path]:
    """Place the run in ``run_dir`` over the frontier files ``frontiers`` (None: its config's ``report.frontier``):
    under the run's lock, write ``frontier.md`` (:func:`frontier_section`'s lines after
    :func:`pipeline.report.section_stamp`) and ``plots/frontier.png`` atomically (a plot of an earlier placement is
    removed when none is drawn), re-render the report with its section and keep the manifest's report record current
    (its outputs the files just written). Returns the files written; ``[]``, and nothing changed, when no frontier
    file is named. UserError when ``run_dir`` holds no run."""
    manifest = RunManifest.load(run_dir)
    paths = frontier_paths(manifest.frontier if frontiers is None else frontiers)
    if not paths:
        return []
    with run_lock(run_dir):
        lines, plot = frontier_section(run_dir, manifest, build_report(manifest), paths)
        if plot is None:
            (run_dir / FRONTIER_PLOT).unlink(missing_ok=True)
        section = atomic_write_text(run_dir / FRONTIER_SECTION, "\n".join([section_stamp(manifest), *lines]) + "\n")
        m = Manifest.open(run_dir, str(manifest.run))
        written = write_report(run_dir, m.data)
        rec = m.stage("report")
        if rec is not None:
            rec["outputs"] = hash_outputs(run_dir, [p for p in written if p.is_file()])
            m.save()
    return list(dict.fromkeys([section, *([plot] if plot else []), *written]))  # write_report lists the section too


def run_dir_of(run_dir: str | None, config: str | None) -> Path:
    """The run directory to place: ``run_dir``, else ``runs/<run.name>`` of ``config`` (as ``python -m pipeline run``
    picks it). UserError when neither is given."""
    if run_dir:
        return Path(run_dir)
    if not config:
        raise UserError("say which run to place: --run-dir DIR, or --config FILE (its runs/<run.name>)")
    from pipeline.config import load_config

    return Path("runs") / load_config(config).run.name
