"""``prune.by_alignment``: the prune settings of the channel block the CPU runs (ccpcsa/pruning/operating_point.py)."""

from __future__ import annotations

import json
from pathlib import Path

from ccpcsa.pruning.loop import PruneConfig
from ccpcsa.pruning.operating_point import apply_by_alignment
from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.stages_train import prune_checks

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def test_the_entry_of_the_resolved_alignment_applies_and_no_other():
    """round_to 16 takes the 16 entry (and says so); round_to 8 takes none; the effective config has no entries left."""
    table = {16: {"target.flops_reduction": 0.3, "steps.flops_reduction": 0.1}, 4: {"steps.max_iterations": 1}}
    eff, note = apply_by_alignment(PruneConfig.of(widths__round_to=16, target__flops_reduction=0.45, by_alignment=table))
    assert (eff.target.flops_reduction, eff.steps.flops_reduction, eff.by_alignment) == (0.3, 0.1, {})
    assert note == ("widths in multiples of 16: prune settings target.flops_reduction=0.3, steps.flops_reduction=0.1 "
                    "(prune.by_alignment.16)")
    eff, note = apply_by_alignment(PruneConfig.of(widths__round_to=8, target__flops_reduction=0.45, by_alignment=table))
    assert (eff.target.flops_reduction, eff.steps.flops_reduction, note) == (0.45, 0.1, "")


def test_auto_alignment_picks_the_entry_of_this_cpu():
    """With round_to auto the entry is the one of the alignment this CPU resolves to (16 on AVX-512, 8 on AVX2)."""
    from ccpcsa.surgery.alignment import resolve_alignment

    align, _ = resolve_alignment("auto", "onnxruntime-cpu")
    cfg = load_config(ROOT / "configs" / "default.yaml", [f"prune.by_alignment={{{align}: {{target_flops_reduction: 0.2}}}}"])
    assert apply_by_alignment(cfg.prune)[0].target.flops_reduction == 0.2
    other = 8 if align == 16 else 16
    cfg = load_config(ROOT / "configs" / "default.yaml", [f"prune.by_alignment={{{other}: {{target_flops_reduction: 0.2}}}}"])
    assert apply_by_alignment(cfg.prune)[0].target.flops_reduction == cfg.prune.target.flops_reduction != 0.2


def test_the_prune_gate_holds_the_effective_target():
    """−32 % MACs passes smoke.yaml's −30 % MACs gate and fails it when the alignment's entry asks for −45 %."""
    metrics = {"baseline_accuracy": 87.5, "accuracy": 86.5, "flops_reduction": 0.32, "latency": None}
    plain = load_config(SMOKE, ["prune.round_to=16"])
    entry = load_config(SMOKE, ["prune.round_to=16", "prune.by_alignment={16: {target_flops_reduction: 0.45}}"])
    assert [c.passed for c in prune_checks(plain, metrics)] == [True, True]
    gates = prune_checks(entry, metrics)
    assert [c.passed for c in gates] == [True, False] and abs(gates[1].threshold - 0.45) < 0.001  # the gate's 0.5 pp slack


def test_pipeline_runs_the_entry_and_records_it(tmp_path, capsys):
    """The smoke pipeline (round_to 4) with a by_alignment.4 entry of one iteration at −15 %: the loop runs one
    iteration to about −15 % MACs, the stage says so, and the manifest records the settings it ran."""
    run_dir = tmp_path / "run"
    rc = main(["run", "--config", SMOKE, "--run-dir", str(run_dir), "--no-progress", "--until", "prune",
               "--set", "prune.by_alignment={4: {target_flops_reduction: 0.15, steps.flops_reduction: 0.15, steps.max_iterations: 1}}"])
    assert rc == 0
    assert "widths in multiples of 4: prune settings target.flops_reduction=0.15" in capsys.readouterr().out
    prune = json.loads((run_dir / "manifest.json").read_text())["stages"]["prune"]["metrics"]
    assert prune["prune_config"]["target"]["flops_reduction"] == 0.15 and prune["prune_config"]["by_alignment"] == {}
    assert prune["by_alignment"].endswith("(prune.by_alignment.4)")
    assert len(prune["history"]) == 1 and 0.15 <= prune["flops_reduction"] < 0.3  # smoke's own target is −30 %


def test_a_command_line_prune_key_takes_the_operating_point_over():
    """default.yaml's 16-block entry sets target, step and final epochs together: a --set of any of them drops the whole
    entry (a −60 % target must not run with the entry's −30 % steps); a --set of another key leaves it."""
    table = "prune.by_alignment={16: {target_flops_reduction: 0.3, steps.flops_reduction: 0.15}}"
    cfg = load_config(SMOKE, ["prune.round_to=16", table, "prune.target_flops_reduction=0.6"])
    eff, note = apply_by_alignment(cfg.prune)
    assert (cfg.prune.by_alignment, eff.target.flops_reduction, eff.steps.flops_reduction, note) == ({}, 0.6, 0.3, "")
    cfg = load_config(SMOKE, ["prune.round_to=16", table, "prune.lr=0.05"])
    eff, note = apply_by_alignment(cfg.prune)
    assert (eff.target.flops_reduction, eff.steps.flops_reduction, eff.recovery.lr) == (0.3, 0.15, 0.05) and note
    default = load_config(ROOT / "configs" / "default.yaml", ["prune.target_flops_reduction=0.6"])
    assert default.prune.by_alignment == {}


def test_resnet56_config_chooses_its_blocks_against_a_speed_floor_on_every_cpu_kind():
    """configs/resnet56_cifar10.yaml runs what was measured (bench/README "resnet56: blocks instead of channels", "The
    speed floor"): the blocks are chosen by `auto` with a 2.5× FP32 + INT8 floor, the same recipe in 8- and 16-blocks
    (no by_alignment entry). Its per-stage family holds the answer the floor found: six blocks of every stage pass the
    −65 % MACs target alone, five do not (channels would have to make up the rest)."""
    from ccpcsa.models import build_model
    from ccpcsa.models.depth import block_stages, candidate_blocks, drop_blocks
    from ccpcsa.pruning.depth_choice import per_stage_sets
    from ccpcsa.surgery.prune import deployed_complexity

    for align in (8, 16):
        cfg = load_config(ROOT / "configs" / "resnet56_cifar10.yaml", [f"prune.round_to={align}"])
        eff, note = apply_by_alignment(cfg.prune)
        assert (cfg.prune.by_alignment, note) == ({}, "")
        assert (eff.target.flops_reduction, eff.recovery.final_finetune_epochs, eff.recovery.distill.views) == (0.65, 40, 4)
        assert (eff.depth.drop_blocks, eff.depth.min_speedup) == ("auto", 2.5)
    model = build_model("resnet56", num_classes=10)
    names = candidate_blocks(model, 32)
    assert not {"layer2.0", "layer3.0"} & set(names)  # the downsampling blocks cannot go
    sets = per_stage_sets(names, block_stages(model, names, 32))
    base = deployed_complexity(model, 32, True).macs
    reduction = {}
    for k in (5, 6):
        trial = build_model("resnet56", num_classes=10)
        drop_blocks(trial, sets[k - 1], 32)
        reduction[k] = 1 - deployed_complexity(trial, 32, True).macs / base
    assert len(sets[5]) == 18 and reduction[5] < 0.65 <= reduction[6] < 0.70, reduction
