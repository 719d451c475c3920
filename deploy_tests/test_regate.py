"""A changed gate threshold re-evaluates a finished stage's checks on its recorded metrics instead of redoing its work."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.checks import Check, accuracy_drop
from pipeline.config import PipelineConfig, load_config
from pipeline.orchestrate import Stage, StageContext, StageOutcome, run_stages

ROOT = Path(__file__).resolve().parents[1]


def _stages(calls: list[str]) -> list[Stage]:
    def work(ctx: StageContext) -> StageOutcome:
        calls.append("work")
        out = ctx.path("work.txt")
        out.write_text("trained\n")
        metrics = {"baseline_accuracy": 90.0, "accuracy": 88.5}
        return StageOutcome(outputs=[out], metrics=metrics, checks=gates(ctx.cfg, metrics))

    def gates(cfg: PipelineConfig, metrics: dict) -> list[Check]:
        return [accuracy_drop(metrics["baseline_accuracy"], metrics["accuracy"], cfg.checks.max_accuracy_drop)]

    def after(ctx: StageContext) -> StageOutcome:
        calls.append("after")
        return StageOutcome()

    return [Stage("work", work, ("prune",), gates=("checks.max_accuracy_drop",), regate=gates), Stage("after", after, ("export",))]


def _run(tmp_path: Path, calls: list[str], drop: float, *extra: str) -> int:
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"checks.max_accuracy_drop={drop}"])
    return run_stages(cfg, _stages(calls), tmp_path, progress=False, from_stage=extra[0] if extra else None)


def _record(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "manifest.json").read_text())["stages"]["work"]


def test_new_threshold_regates_without_redoing_the_work(tmp_path, capsys):
    calls: list[str] = []
    assert _run(tmp_path, calls, 2.0) == 0 and calls == ["work", "after"]
    first = _record(tmp_path)
    assert first["status"] == "ok" and first["checks"][0]["value"] == 1.5

    # a tighter gate: the recorded 1.5 pp drop now fails, the work is not redone, its file is kept
    assert _run(tmp_path, calls, 1.0) == 1
    out, err = capsys.readouterr()
    assert calls == ["work", "after"]
    assert "checks re-evaluated" in out and "accuracy_drop_pp: 1.5 <= 1.0 → FAIL" in out
    assert "stage work failed" in err and "checks.max_accuracy_drop" in err
    rec = _record(tmp_path)
    assert rec["status"] == "failed" and rec["gate_failed"] and rec["outputs"] == first["outputs"]
    assert (tmp_path / "work.txt").read_text() == "trained\n"

    # the same failing gate again: still no work, still failed
    assert _run(tmp_path, calls, 1.0) == 1 and calls == ["work", "after"]

    # loosened again: passes from the recorded metrics and the chain goes on; downstream is untouched
    assert _run(tmp_path, calls, 3.0) == 0
    assert calls == ["work", "after"] and _record(tmp_path)["status"] == "ok"
    assert _record(tmp_path)["checks"][0]["threshold"] == 3.0

    # unchanged gates: plain "up to date"; --from redoes the work
    capsys.readouterr()
    assert _run(tmp_path, calls, 3.0) == 0 and "work: up to date" in capsys.readouterr().out
    assert _run(tmp_path, calls, 3.0, "work") == 0 and calls == ["work", "after", "work", "after"]


def test_a_stage_that_crashed_is_redone_not_regated(tmp_path):
    calls: list[str] = []
    stages = _stages(calls)

    def crash(ctx: StageContext) -> StageOutcome:
        calls.append("crash")
        raise RuntimeError("boom")

    cfg = load_config(ROOT / "configs" / "smoke.yaml", ["checks.max_accuracy_drop=2.0"])
    broken = [Stage("work", crash, ("prune",), gates=("checks.max_accuracy_drop",), regate=stages[0].regate), stages[1]]
    assert run_stages(cfg, broken, tmp_path, progress=False) == 1
    assert _record(tmp_path)["status"] == "failed" and not _record(tmp_path)["gate_failed"]
    assert run_stages(cfg, stages, tmp_path, progress=False) == 0 and calls == ["crash", "work", "after"]


def test_prune_checks_gate_the_latency_target_unless_the_target_is_waived():
    """A latency-target run that ends at 1.95x for a 2.0x target fails its prune gate; with
    checks.require_flops_target=false only the accuracy gate remains (the MACs target likewise)."""
    from pipeline.stages_train import prune_checks

    metrics = {"baseline_accuracy": 86.15, "accuracy": 85.0, "flops_reduction": 0.70,
               "latency": {"batch": 1, "target_speedup": 2.0, "final_speedup": 1.95}}
    cfg = load_config(ROOT / "configs" / "smoke.yaml", ["checks.max_accuracy_drop=2.0"])
    checks = prune_checks(cfg, metrics)
    assert [c.name for c in checks] == ["accuracy_drop_pp", "measured_speedup_b1"]
    assert checks[0].passed and not checks[1].passed and checks[1].value == 1.95 and checks[1].threshold == 2.0

    waived = prune_checks(load_config(ROOT / "configs" / "smoke.yaml",
                                      ["checks.max_accuracy_drop=2.0", "checks.require_flops_target=false"]), metrics)
    assert [c.name for c in waived] == ["accuracy_drop_pp"] and waived[0].passed

    no_latency = {**metrics, "latency": None, "flops_reduction": 0.2}
    cfg_macs = load_config(ROOT / "configs" / "smoke.yaml", ["prune.target.flops_reduction=0.3"])
    assert [c.passed for c in prune_checks(cfg_macs, no_latency)] == [True, False]


def test_a_key_added_later_enters_the_stage_key_only_when_set():
    """prune.widths.round_to_wide and prune.by_alignment came after run directories existed: unset, the prune key is what it
    was before the keys existed (old runs keep their pruned.pt), set either changes the key (the work is redone)."""
    import hashlib

    from pipeline.config import KEYED_ONLY_WHEN_SET

    cfg = load_config(ROOT / "configs" / "smoke.yaml", [])
    d = {"prune": cfg.prune.legacy_flat()}  # the stage keys hash the flat form of earlier versions
    assert "prune.round_to_wide" in KEYED_ONLY_WHEN_SET and d["prune"]["round_to_wide"] is None
    assert "prune.by_alignment" in KEYED_ONLY_WHEN_SET and d["prune"]["by_alignment"] == {}
    del d["prune"]["round_to_wide"], d["prune"]["by_alignment"]
    before = hashlib.sha256(json.dumps({"prune": d["prune"]}, sort_keys=True, default=str).encode()).hexdigest()
    assert cfg.section_hash("prune") == before
    assert load_config(ROOT / "configs" / "smoke.yaml", ["prune.widths.round_to_wide=16"]).section_hash("prune") != before
    assert load_config(ROOT / "configs" / "smoke.yaml",
                       ["prune.by_alignment={16: {steps.max_iterations: 1}}"]).section_hash("prune") != before
