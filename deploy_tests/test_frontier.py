"""The accuracy-vs-speedup frontier: reading, interpolation, comparison at equal speed, targets, summary,
and one run placed over a frontier of the same model (``python -m bench.frontier place``): an optional section of its
report, which the pipeline shows and never computes."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from bench.frontier import main as frontier_main
from bench.frontier import summary_lines, target_lines, write_summary
from bench.frontier_place import place_run
from bench.frontier_points import (
    FrontierPoint,
    by_criterion,
    by_method,
    compare_at_speed,
    interpolate,
    load_frontier,
    pareto,
    points_from_runs,
)
from pipeline.__main__ import main
from pipeline.report import build_report, load_manifest, write_report

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def _row(criterion: str, target: float, acc: float, s1: float, s32: float, se: float = 0.3) -> dict:
    return {"key": f"{criterion}-t{round(100 * target)}", "criterion": criterion, "target": target, "status": "ok",
            "flops_ratio": 1 / (1 - target), "alignment": 8, "accuracy": acc, "accuracy_n": 10000, "accuracy_se": se,
            "speedup": {"1": {"speedup": s1, "speedup_se": 0.02}, "32": {"speedup": s32, "speedup_se": 0.03}},
            "speedup_int8": {"1": {"speedup": s1 - 0.1, "speedup_se": 0.02}}, "int8_cpu_accuracy": acc - 0.1,
            "wall_seconds": 600.0}


def _results(model: str = "resnet20") -> dict:
    runs = [_row("ccpcsa", 0.2, 87.0, 1.2, 1.25), _row("ccpcsa", 0.4, 86.2, 1.5, 1.6), _row("ccpcsa", 0.6, 84.0, 2.0, 2.1),
            _row("l1", 0.2, 86.9, 1.2, 1.2), _row("l1", 0.4, 85.0, 1.55, 1.6), _row("l1", 0.6, 83.9, 2.1, 2.2),
            {"key": "l1-t70", "criterion": "l1", "target": 0.7, "status": "failed"}]
    return {"date": "2026-12-03", "machine": {"cpu": "test CPU", "cpus": 2, "simd": "AVX2, no VNNI"},
            "command": "python -m bench.frontier --preset frontier-test --no-anchor",
            "results": {"criteria": {"preset": {"name": "frontier-test", "model": model},
                                     "baseline": {"accuracy": 87.48, "accuracy_n": 10000}, "runs": runs}}}


def test_points_interpolation_and_comparison_at_equal_speed(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(_results()))
    result, points = load_frontier(path)
    assert len(points) == 6 and result["machine"]["cpu"] == "test CPU"  # the failed run is no point
    curves = by_method(points, "1")
    assert [p.target for p in curves["l1"]] == [0.2, 0.4, 0.6]
    acc, se = interpolate(curves["l1"], 1.375, "1")  # halfway between 1.2× (86.9) and 1.55× (85.0)
    assert acc == pytest.approx(85.95) and se == pytest.approx(0.3)
    assert interpolate(curves["l1"], 1.1, "1") is None and interpolate(curves["l1"], 2.2, "1") is None
    rows = compare_at_speed(curves["ccpcsa"], curves["l1"], "1")
    # 1.2×: 87.0 vs 86.9 → tie (band √2·0.3 = 0.42); 1.5×: 86.2 vs 85.27 → above; 2.0×: 84.0 vs 84.14 → tie
    assert [r["verdict"] for r in rows] == ["tie", "above", "tie"]
    assert rows[1]["other_accuracy"] == pytest.approx(86.9 + (1.5 - 1.2) / 0.35 * (85.0 - 86.9))
    # the band holds the speeds' error carried through l1's slope there (−1.9 pp over 0.35×; speed SEs 0.02 each)
    slope = (85.0 - 86.9) / 0.35
    assert rows[1]["slope_pp_per_x"] == pytest.approx(slope)
    assert rows[1]["se_pp"] == pytest.approx(math.sqrt(2 * 0.3**2 + (slope * math.hypot(0.02, 0.02)) ** 2))
    # on a steep frontier (−30 pp/×) a noisy speed is a wide band: 0.8 pp under l1 at 1.5× is below with speed SEs of
    # 0.005× (band 0.47 pp), a tie when ccpcsa's speed is known to ±0.1× (band 3.0 pp)
    steep = [FrontierPoint("l1", t, 1.0, a, 0.3, {"1": (x, 0.005)}) for t, a, x in ((0.4, 86.0, 1.4), (0.6, 80.0, 1.6))]
    under = FrontierPoint("ccpcsa", 0.5, 2.0, 82.2, 0.3, {"1": (1.5, 0.005)})
    assert compare_at_speed([under], steep, "1")[0]["verdict"] == "below"
    assert compare_at_speed([replace(under, speedup={"1": (1.5, 0.1)})], steep, "1")[0]["verdict"] == "tie"
    low = [FrontierPoint("ccpcsa", 0.4, 1.67, 84.0, 0.3, {"1": (1.5, 0.0)})]
    assert compare_at_speed(low, curves["l1"], "1")[0]["verdict"] == "below"
    # another allocation of the same criterion is a line of its own, never a point of ccpcsa's
    other = {**_row("ccpcsa", 0.45, 86.5, 1.6, 1.7), "allocation": "sensitivity", "key": "ccpcsa-t45-asensitivity"}
    curves = by_method(points_from_runs([*_results()["results"]["criteria"]["runs"], other]), "1")
    assert [p.target for p in curves["ccpcsa"]] == [0.2, 0.4, 0.6]
    assert [p.key for p in curves["ccpcsa (sensitivity)"]] == ["ccpcsa-t45-asensitivity"]
    # a criterion's frontier is the Pareto front of all its runs: the sensitivity run (1.6×, 86.5 %) beats ccpcsa −40 %
    # (1.5×, 86.2 %) on both axes, so it replaces it; a scope run is a line of its own but joins the criterion's front
    scope = {**_row("ccpcsa", 0.5, 84.5, 1.9, 2.0), "scope": "all", "key": "ccpcsa-t50-scall"}
    points = points_from_runs([*_results()["results"]["criteria"]["runs"], other, scope])
    assert [p.key for p in by_method(points, "1")["ccpcsa (scope all)"]] == ["ccpcsa-t50-scall"]
    fronts = by_criterion(points, "1")
    assert [p.key for p in fronts["ccpcsa"]] == ["ccpcsa-t20", "ccpcsa-t45-asensitivity", "ccpcsa-t50-scall", "ccpcsa-t60"]
    assert [p.key for p in fronts["l1"]] == ["l1-t20", "l1-t40", "l1-t60"]  # none of l1's is dominated
    # speeds within their combined SE are one speed: a point 0.01× faster but 0.6 pp less accurate leaves the front
    # (speed SEs 0.02 → band 0.028×); 0.05× faster, it stays
    twin = FrontierPoint("ccpcsa", 0.5, 2.0, 83.9, 0.3, {"1": (2.01, 0.02)}, key="twin")
    assert [p.key for p in pareto([*fronts["ccpcsa"], twin], "1")][-2:] == ["ccpcsa-t50-scall", "ccpcsa-t60"]
    assert [p.key for p in pareto([*fronts["ccpcsa"], replace(twin, speedup={"1": (2.05, 0.02)})], "1")][-1] == "twin"
    # and a point beyond the other frontier's end by less than the speeds' SE is read at that end point
    l1 = by_criterion(points, "1")["l1"]  # 1.2× … 2.1×
    assert interpolate(l1, 2.12, "1") is None and interpolate(l1, 2.12, "1", slack=0.03) == (83.9, 0.3)
    near = [FrontierPoint("ccpcsa", 0.6, 2.5, 84.0, 0.3, {"1": (2.12, 0.02)}, key="near"),
            FrontierPoint("ccpcsa", 0.7, 3.3, 80.0, 0.3, {"1": (2.2, 0.02)}, key="far")]
    assert [(r["key"], r["verdict"]) for r in compare_at_speed(near, l1, "1")] == [("near", "tie")]
    # two seeds of one recipe are one point — their mean, ± the larger of the runs' SE and the between-seed SE — never
    # two draws at the front
    seeds = [{**_row("l1", 0.4, acc, s1, 1.6), "key": f"l1-t40-s{n}", "seed": n} for n, acc, s1 in ((0, 85.0, 1.55), (1, 85.6, 1.57))]
    two = [p for p in points_from_runs([*_results()["results"]["criteria"]["runs"][:3], *seeds]) if p.criterion == "l1"]
    assert len(two) == 1 and two[0].key == "l1-t40-s0+1" and two[0].seeds == 2
    assert two[0].accuracy == pytest.approx(85.3) and two[0].accuracy_se == pytest.approx(0.3)  # sd 0.42 / √2 > 0.21
    assert two[0].speedup["1"] == pytest.approx((1.56, math.sqrt(2 * 0.02**2) / 2))  # within (0.014) > between (0.010)
    # across criteria: only l1's fastest point (2.2×) is beaten by no ccpcsa point at batch 32
    assert [p.key for p in pareto(points, "32")] == ["ccpcsa-t20", "ccpcsa-t45-asensitivity", "ccpcsa-t50-scall", "ccpcsa-t60",
                                                     "l1-t60"]


def test_targets_say_met_or_by_how_much_missed():
    points = points_from_runs(_results()["results"]["criteria"]["runs"])
    lines = target_lines(points, 87.48, "resnet20")
    assert "#21: ≥ 1.3× (b1 and b32) within 1.0 pp: **missed by 0.28 pp**" in lines[0]  # best ≥1.3×: 86.2 (−1.28)
    assert "#21: ≥ 1.6× (b1 and b32) within 2.0 pp: **missed by 1.48 pp**" in lines[1]  # best ≥1.6× at both: 84.0 (−3.48)
    # #38 asks INT8 too: the rows time INT8 at batch 1 only, so no point qualifies …
    assert "#38: ≥ 1.5× (b1 and b32, FP32 and INT8) within 0.5 pp: **missed** — fastest point" in lines[2]
    # … until one is as fast in INT8 at both batches; a point fast in FP32 only still does not count
    int8 = {"speedup_int8": {"1": {"speedup": 1.52, "speedup_se": 0.02}, "32": {"speedup": 1.55, "speedup_se": 0.02}}}
    fp32_only = {**_row("l1", 0.38, 87.3, 1.7, 1.7), "key": "l1-fp32-only"}
    both = [*points_from_runs([{**_row("ccpcsa", 0.38, 87.1, 1.55, 1.6), **int8, "key": "ccpcsa-int8"}, fp32_only]), *points]
    line = target_lines(both, 87.48, "resnet20")[2]
    assert "**met** — ccpcsa-int8" in line and "87.10 ± 0.30 % (−0.38 pp)" in line
    lines = target_lines(points, 86.5, "resnet20")
    assert "**met**" in lines[0] and "ccpcsa-t40" in lines[0]


def test_summary_and_plot_are_written(tmp_path):
    path = tmp_path / "2026-12-03-vm-frontier-test.json"
    data = _results()
    data["results"]["criteria"]["runs"][3]["speedup"]["32"]["other_load"] = 0.55  # l1 −20 % timed beside a training run
    data["results"]["criteria"]["runs"][0]["speedup"]["32"]["other_load"] = 0.02  # quiet enough
    data["results"]["criteria"]["runs"][0].update(revalidated={"date": "2026-12-03"})  # re-timed: b1 pooled over 2 passes
    data["results"]["criteria"]["runs"][0]["speedup"]["1"]["passes"] = 2
    # a ccpcsa run slower and less accurate than ccpcsa −40 % at both batches: off ccpcsa's frontier, so not compared
    data["results"]["criteria"]["runs"].append({**_row("ccpcsa", 0.35, 84.5, 1.45, 1.55), "scope": "all", "key": "ccpcsa-t35-scall"})
    path.write_text(json.dumps(data))
    md, png = write_summary(path)
    text = md.read_text()
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    # the header says what made it and on which SIMD level; the MACs column what was removed, then the target
    assert ("`python -m bench.frontier --preset frontier-test --no-anchor` — raw: [`2026-12-03-vm-frontier-test.json`]"
            "(2026-12-03-vm-frontier-test.json); machine: test CPU (AVX2, no VNNI), 2 cores, 2026-12-03; widths in blocks "
            "of 8;") in text
    assert "| ccpcsa | −40.0 % (−40 %) | 1.67× | 86.20 ± 0.30 | -1.28 | 1.50 ± 0.02 | 1.60 ± 0.03 | 1.40 ± 0.02 | — | 86.10 | 10.0 |" in text
    assert "batch 1, vs l1: **on or above**" in text and "batch 32, vs l1: **on or above**" in text
    for b in ("1", "32"):
        assert f"- batch {b}: off ccpcsa's frontier (a more accurate ccpcsa run is as fast within the speeds' SE, or faster): " \
               "ccpcsa-t35-scall" in text
    assert "| ccpcsa (scope all) | −35.0 % (−35 %) |" in text
    assert "Re-timed runs (`--revalidate`, one at a time): speedups the mean of 1–2 quiet passes on this machine" in text
    assert "| l1 † | −20.0 % (−20 %) |" in text and "| ccpcsa | −20.0 % (−20 %) |" in text
    assert "† timed while other processes used up to 55 % of the machine's CPU" in text
    result, points = load_frontier(path)
    assert summary_lines(result, points, path, png)[0].startswith("# Frontier `frontier-test`: resnet20")


@pytest.mark.slow
def test_a_run_placed_on_the_frontier_of_its_model_gets_the_section_in_its_report(tmp_path, capsys):
    """The pipeline computes no frontier (report.md has no section although ``report.frontier`` is set); ``python -m
    bench.frontier place`` draws the smoke run's own point over a frontier of the same model into its report; another
    model's is refused."""
    frontier = tmp_path / "frontier.json"
    frontier.write_text(json.dumps(_results("deploy_tests.byo_model:tiny_net")))
    run = tmp_path / "run"
    setting = f"report.frontier={frontier}"
    assert main(["run", "--config", SMOKE, "--run-dir", str(run), "--no-progress", "--set", setting]) == 0
    assert "## Frontier" not in (run / "report.md").read_text() and not (run / "frontier.md").exists()
    assert frontier_main(["place", "--run-dir", str(run)]) == 0  # the run's own config names the file
    md = (run / "report.md").read_text()
    assert "## Frontier" in md and (run / "plots" / "frontier.png").is_file() and "![frontier](plots/frontier.png)" in md
    # the tiny net runs at ≈ 0.5×, outside the frontier (1.2–2.2×); batch 8 is not in the frontier at all
    assert "each criterion's frontier there: ccpcsa outside its range; l1 outside its range" in md
    assert "- batch 8: this run" in md and "the frontier has no speedup at this batch" in md
    # the frontier's widths are 8-blocks, the smoke run's 4-blocks (round_to 4): another CPU's speeds, said so
    assert "Not like for like: the frontier's widths are in blocks of 8, this run's in blocks of 4" in md
    # the placement keeps the report stage current: a resumed run skips it and keeps the section
    capsys.readouterr()
    assert main(["run", "--config", SMOKE, "--run-dir", str(run), "--no-progress", "--set", setting]) == 0
    assert "── report: up to date" in capsys.readouterr().out and "## Frontier" in (run / "report.md").read_text()
    # a list (one frontier per kind of CPU): the one in the run's blocks is drawn, whatever its place; an unreadable
    # entry is said and skipped
    same = _results("deploy_tests.byo_model:tiny_net")
    for r in same["results"]["criteria"]["runs"]:
        r["alignment"] = 4
    # the same blocks, timed on a CPU of another SIMD level (AMX or not, say): said too
    from ccpcsa.surgery.alignment import simd_label

    same["machine"]["simd"] = other_simd = next(x for x in ("AVX2, no VNNI", "AVX-512, VNNI") if x != simd_label())
    (tmp_path / "blocks4.json").write_text(json.dumps(same))
    listed = [str(frontier), str(tmp_path / "absent.json"), str(tmp_path / "blocks4.json")]
    assert frontier_main(["place", "--run-dir", str(run), "--frontier", *listed]) == 0
    md = (run / "report.md").read_text()
    assert f"frontier of `{tmp_path / 'blocks4.json'}`" in md and "- batch 1: this run" in md
    assert "widths are in blocks" not in md and f"`report.frontier` {tmp_path / 'absent.json'} could not be read" in md
    assert f"Not like for like: the frontier was timed on a CPU with {other_simd}, this run on one with {simd_label()}" in md
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_results("resnet56")))
    assert frontier_main(["place", "--run-dir", str(run), "--frontier", str(other)]) == 0
    md = (run / "report.md").read_text()
    assert "is a frontier of resnet56, this run prunes deploy_tests.byo_model:tiny_net; not drawn" in md
    assert not (run / "plots" / "frontier.png").exists() and "plots/frontier.png)" not in md  # the earlier plot is gone
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["prune"]["status"] == "ok"


def test_revalidate_re_times_every_finished_run_pools_quiet_passes_and_warns_when_not_quiet(tmp_path, monkeypatch, capsys):
    """``--revalidate``: validate re-run for each finished run of the preset (never for a failed one), its row
    re-collected with the date and seconds of the re-timing; the speedups of the quiet passes on this machine pooled
    (mean, SE the larger of within- and between-pass); a warning when other processes took more than OTHER_LOAD_WARN
    of the CPU while it was re-timed, and that pass left out of the mean."""
    import bench.frontier as bf
    from bench.common import machine_info
    from bench.criteria_presets import PRESETS, Preset, RunSpec

    preset = Preset(name="frontier-test", config="configs/default.yaml", model="resnet20", criteria=("ccpcsa",),
                    targets=(0.3, 0.5), seeds=(0,), side_criteria=(), anchor=False)
    monkeypatch.setitem(PRESETS, "frontier-test", preset)
    keys = [s.key for s in preset.runs()]
    rows = [{"key": keys[0], "status": "ok", "run_dir": str(tmp_path / keys[0]), "wall_seconds": 600.0,
             "speedup": {"1": {"speedup": 1.9, "speedup_se": 0.01, "other_load": 0.6}}},  # timed beside training: no pass
            {"key": keys[1], "status": "failed", "run_dir": str(tmp_path / keys[1])}]
    out = tmp_path / "f.json"
    out.write_text(json.dumps({"command": "python -m bench.frontier --preset frontier-test", "machine": machine_info(),
                               "results": {"criteria": {"overrides": [], "baseline": {"accuracy": 87.48}, "runs": rows}}}))
    stages: list[tuple[str, str]] = []
    monkeypatch.setattr(bf, "run_pipeline", lambda p, run_dir, ov, from_stage: stages.append((Path(run_dir).name, from_stage)))
    timed = {"speed": 0.0, "load": 0.0}

    def collect(run_dir: Path, spec: RunSpec, base: dict, until: str | None) -> dict:
        return {"key": spec.key, "status": "ok", "run_dir": str(run_dir),
                "speedup": {"1": {"speedup": timed["speed"], "speedup_se": 0.01, "other_load": timed["load"]}}}

    monkeypatch.setattr(bf, "collect_run", collect)
    # pass 1 (1.50×), pass 2 (1.60×), pass 3 beside another job (2.0×, 30 % of the CPU to others)
    for n, (speed, load, mean, se) in enumerate(((1.5, 0.02, 1.5, 0.01), (1.6, 0.0, 1.55, 0.05), (2.0, 0.3, 1.55, 0.05)), 1):
        timed.update(speed=speed, load=load)
        assert bf.revalidate("frontier-test", out) == 1
        assert stages == [(keys[0], "validate")] * n
        row = json.loads(out.read_text())["results"]["criteria"]["runs"][0]
        assert row["wall_seconds"] == 600.0 and row["revalidated"]["seconds"] >= 0 and len(row["retimings"]) == n
        m = row["speedup"]["1"]
        assert m["speedup"] == pytest.approx(mean) and m["speedup_se"] == pytest.approx(se) and m["passes"] == min(n, 2)
        said = capsys.readouterr().out
        assert f"re-timed {keys[0]}: b1 {speed:.2f}×" in said
        assert ("(mean of 2 quiet passes: b1 1.55 ± 0.05×)" in said) == (n > 1)
        assert ("other processes used 30 % of the CPU" in said) == (load > 0.1)
    # a pass on another machine is kept but not pooled with this one's
    data = json.loads(out.read_text())
    data["results"]["criteria"]["runs"][0]["retimings"][0]["machine"] = "another CPU"
    out.write_text(json.dumps(data))
    timed.update(speed=1.7, load=0.0)
    bf.revalidate("frontier-test", out)
    m = json.loads(out.read_text())["results"]["criteria"]["runs"][0]["speedup"]["1"]
    assert m["passes"] == 2 and m["speedup"] == pytest.approx(1.65)  # 1.6 and 1.7; 1.5 was "another CPU"'s


def _run_dir(tmp_path: Path, frontier: str | None) -> Path:
    """A run directory whose manifest has the prune and validate results a placement reads (no model files)."""
    sp = {b: {"speedup": x, "speedup_se": 0.02, "unpruned_ms": 1.0, "pruned_ms": 1.0 / x, "flops_ratio": 1.67,
              "efficiency": x / 1.67} for b, x in (("1", 1.5), ("32", 3.0))}
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({
        "run": "mine", "config_hash": "h", "config": {"report": {"frontier": frontier}, "model": {"name": "resnet20"}},
        "stages": {"baseline": {"status": "ok", "metrics": {"flops": 100.0, "accuracy": 87.48}},
                   "prune": {"status": "ok", "metrics": {"alignment": 8, "method": "ccpcsa"}},
                   "validate": {"status": "ok", "metrics": {"speedup": sp, "formats": {
                       "pytorch_pruned": {"accuracy": 86.5, "accuracy_se": 0.3, "flops": 60.0,
                                          "latency_ms": {"1": {"p50": 1.0, "p95": 1.1}}}}}},
                   "report": {"status": "ok", "outputs": {}}}}))
    return run


def test_a_placed_run_reads_against_each_criterions_frontier_with_a_verdict(tmp_path, capsys):
    """``place``: frontier.md and plots/frontier.png in the run directory, the report re-rendered with the section —
    per batch, each criterion's Pareto front read at the run's own speed, the difference ± the combined SE and the
    verdict (the run itself is a point of neither front). Without frontier.md the report has no Frontier section;
    one placed on earlier results of the run is replaced by a line saying so."""
    path = tmp_path / "f.json"
    path.write_text(json.dumps(_results()))
    run = _run_dir(tmp_path, None)
    assert frontier_main(["place", "--run-dir", str(run)]) == 0  # no report.frontier, no --frontier: one line
    assert "no frontier to place" in capsys.readouterr().out and not (run / "frontier.md").exists()
    written = place_run(run, [str(path)])
    assert run / "frontier.md" in written and run / "plots" / "frontier.png" in written
    assert (run / "plots" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    md = (run / "report.md").read_text()
    assert "## Frontier" in md and "![frontier](plots/frontier.png)" in md
    assert (run / "frontier.md").read_text().startswith("<!-- section of results ")  # the stamp is not shown
    assert "<!--" not in md
    # batch 1 at 1.5×: ccpcsa's front has 86.2 there (+0.30, tie); l1's 85.27 (+1.23: above its band of ≈ 0.45)
    b1 = next(ln for ln in md.splitlines() if ln.startswith("- batch 1: this run 86.50 ± 0.30 % at 1.50× ± 0.02"))
    assert "ccpcsa 86.20 % (this run +0.30 ± 0.43 pp: tie)" in b1  # 0.42 with the slope (−2.7 pp/×) · 0.028×
    assert "l1 85.27 % (this run +1.23 ± 0.45 pp: above)" in b1
    b32 = next(ln for ln in md.splitlines() if ln.startswith("- batch 32:"))
    assert "ccpcsa outside its range; l1 outside its range" in b32  # 3.0× is past both fronts (≤ 2.2×)
    assert "bench.frontier_points.compare_at_speed" in md
    # the report stage's record holds the files just written, the section among them
    outputs = json.loads((run / "manifest.json").read_text())["stages"]["report"]["outputs"]
    assert {"report.md", "frontier.md", "plots/frontier.png"} <= set(outputs)
    # the pipeline re-renders it as is; after a new validate the placement is said to be stale, not shown
    write_report(run, load_manifest(run))
    assert b1 in (run / "report.md").read_text()
    data = load_manifest(run)
    data["stages"]["validate"]["metrics"]["speedup"]["1"]["speedup"] = 1.6
    write_report(run, data)
    md = (run / "report.md").read_text()
    assert "`frontier.md` places earlier results of this run; place the run again" in md
    assert "- batch 1: this run" not in md and "plots/frontier.png)" not in md
    # no frontier.md: no Frontier section, and no frontier plot listed
    (run / "frontier.md").unlink()
    write_report(run, load_manifest(run))
    md = (run / "report.md").read_text()
    assert "## Frontier" not in md and "frontier.png" not in md


def test_a_resumed_sweep_keeps_the_speeds_of_its_re_timed_runs(tmp_path, monkeypatch):
    """bench.frontier after --revalidate (e.g. to add runs): a finished run is re-collected from its folder, but its
    speedups pooled over the quiet re-timing passes (and the passes) are kept — not replaced by its last pass."""
    import bench.criteria as bc
    from bench.criteria_presets import Preset

    p = Preset(name="frontier-test", config="configs/default.yaml", model="resnet20", criteria=("ccpcsa",), targets=(0.3,),
               seeds=(0,), side_criteria=(), anchor=False)
    key = p.runs()[0].key
    out = tmp_path / "f.json"
    pooled = {"1": {"speedup": 1.55, "speedup_se": 0.05, "passes": 2}}
    root = tmp_path / "root"
    out.write_text(json.dumps({"results": {"criteria": {"root": str(root), "runs": [
        {"key": key, "status": "ok", "wall_seconds": 600.0, "speedup": pooled, "retimings": [{}, {}],
         "revalidated": {"date": "2026-12-05"}}]}}}))
    monkeypatch.setattr(bc, "ensure_baseline", lambda *a, **k: "ckpt.pt")
    monkeypatch.setattr(bc, "run_pipeline", lambda *a, **k: 0)
    monkeypatch.setattr(bc, "collect_shared", lambda shared: {"baseline": {"accuracy": 87.48}})
    monkeypatch.setattr(bc, "expected_config_hash", lambda *a: "h")
    monkeypatch.setattr(bc, "run_is_complete", lambda *a: True)
    monkeypatch.setattr(bc, "collect_run", lambda run_dir, spec, base, until: {
        "key": spec.key, "status": "ok", "accuracy": 87.0, "accuracy_drop_pp": 0.48, "flops_reduction": 0.3, "flops_ratio": 1.43,
        "speedup": {"1": {"speedup": 1.6, "speedup_se": 0.01}}})
    bc.run_benchmark(p, root=root, out_json=out, summary=False)
    row = json.loads(out.read_text())["results"]["criteria"]["runs"][0]
    assert row["speedup"] == pooled and len(row["retimings"]) == 2 and row["wall_seconds"] == 600.0
    assert row["accuracy"] == 87.0  # the rest re-collected


def test_the_section_says_when_the_frontier_fine_tuned_with_another_budget(tmp_path):
    """A frontier of 60-step epochs (1 + 2 epochs, one iteration: 180 steps) under a run of 200-step epochs (1 × 1 + 10:
    2,200 steps) is said not to be like for like, with both budgets; at the same budget nothing is said. Old runs'
    flat prune_config is read too."""
    from bench.frontier_place import frontier_section, recovery_steps

    assert recovery_steps(200, 1, 10, 1) == 2200 and recovery_steps(None, 1, 10, 1) is None
    results = _results()
    results["results"]["criteria"]["preset"].update(steps_per_epoch=60, finetune_epochs=1, final_finetune_epochs=2, iterations=1)
    path = tmp_path / "f.json"
    path.write_text(json.dumps(results))
    run = _run_dir(tmp_path, str(path))
    manifest = load_manifest(run)
    manifest["config"]["train"] = {"max_steps_per_epoch": 200}
    prune = manifest["stages"]["prune"]["metrics"]
    prune.update(iterations=1, prune_config={"recovery": {"finetune_epochs": 1, "final_finetune_epochs": 10}})
    report = build_report(manifest)
    lines, _ = frontier_section(run, manifest, report, [str(path)])
    said = [ln for ln in lines if "fine-tuned" in ln]
    assert len(said) == 1 and "the frontier's runs fine-tuned 180 steps each (`frontier-test`), this run 2,200" in said[0]
    prune["prune_config"] = {"finetune_epochs": 1, "final_finetune_epochs": 2}  # flat, as before the prune sections
    manifest["config"]["train"] = {"max_steps_per_epoch": 60}
    lines, _ = frontier_section(run, manifest, build_report(manifest), [str(path)])
    assert not [ln for ln in lines if "fine-tuned" in ln]
