"""The depth search's per-stage family and its speed floor (``prune.depth.min_speedup``; ccpcsa/pruning/depth_choice.py,
export/speed_check.py): which sets are priced, how the floor picks among them, the timer for real, the config and the
report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ccpcsa.errors import UserError
from ccpcsa.models import build_model
from ccpcsa.models.depth import block_stages, candidate_blocks, drop_blocks
from ccpcsa.pruning.depth_choice import TIE_PP, MacsGoal, choose_blocks, per_stage_sets
from ccpcsa.surgery.prune import ChannelPruner, deployed_complexity
from deploy_tests.test_depth_choice import _agreement, _with_a_free_block

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
R56 = str(ROOT / "configs" / "resnet56_cifar10.yaml")


def test_per_stage_sets_take_the_k_cheapest_of_every_stage():
    order = ["a.2", "b.1", "a.0", "c.1", "a.1", "b.2"]  # cheapest first
    stage = {"a.0": 1, "a.1": 1, "a.2": 1, "b.1": 2, "b.2": 2, "c.1": 3}
    assert per_stage_sets(order, stage) == [
        ["a.2", "b.1", "c.1"],                                # the cheapest of each stage, in price order
        ["a.2", "b.1", "a.0", "c.1", "b.2"],                  # two of each; stage c has only one
        ["a.2", "b.1", "a.0", "c.1", "a.1", "b.2"],           # every block
    ]
    assert per_stage_sets(order[:3], {b: 0 for b in order}) == []  # one stage: the overall order is the same family


def test_resnet20_blocks_fall_into_its_three_stages():
    model = build_model("resnet20", 10)
    names = candidate_blocks(model, 32)
    stages = block_stages(model, names, 32)
    assert stages == {"layer1.0": (16, 32, 32), "layer1.1": (16, 32, 32), "layer1.2": (16, 32, 32),
                      "layer2.1": (32, 16, 16), "layer2.2": (32, 16, 16), "layer3.1": (64, 8, 8), "layer3.2": (64, 8, 8)}


class MacsSpeed:
    """The floor's timer with the MACs ratio in place of milliseconds, so that which probe is fast enough is decided
    by the model's own numbers, not by this machine's load (the timer itself is tested for real below)."""

    def __init__(self, floor: float) -> None:
        self.floor, self.timed = floor, 0

    def set_reference(self, model: nn.Module) -> None:
        self.base = deployed_complexity(model, 32).macs

    def speedups(self, model: nn.Module, rounds: int | None = None) -> dict[str, tuple[float, float]]:
        self.timed += 1
        return {"fp32 b1": (self.base / deployed_complexity(model, 32).macs, 0.05)}


def _search(floor: float | None) -> tuple[object, MacsSpeed | None]:
    model = _with_a_free_block()
    _, agree = _agreement(model)
    base = deployed_complexity(model, 32).macs
    speed = MacsSpeed(floor) if floor is not None else None
    choice = choose_blocks(model, lambda m: ChannelPruner(m, 32, 8, 8, 0.9), MacsGoal(0.75 * base, False), agree, None,
                           max_blocks=3, progress=False, speed=speed)
    return choice, speed


def test_the_per_stage_family_is_priced_until_its_blocks_alone_reach_the_goal():
    choice, _ = _search(None)
    stage_rows = [d for d in choice.depths if d["family"] == "per-stage"]
    overall = [set(d["blocks"]) for d in choice.depths if d["family"] == "overall"]
    assert stage_rows and all(set(d["blocks"]) not in overall for d in stage_rows)  # no set priced twice
    last = stage_rows[-1]
    assert last["reached"] and not last["channels_cut"] and last["flops_reduction"] > 0.25  # blocks alone overshoot
    assert all(d["channels_cut"] for d in stage_rows[:-1])
    assert choice.floor_met is None and all("speedups" not in d for d in choice.depths)


def test_the_floor_keeps_the_most_accurate_probe_that_is_fast_enough():
    """At a 25 % MACs target every probe that cuts channels lands at 1.33× fewer MACs; only a set of blocks that
    overshoots alone is ≥ 2×. With a 2× floor that one is kept although others score more, the probes were timed
    most accurate first, and the slower ones say so."""
    free, _ = _search(None)
    choice, speed = _search(2.0)
    assert choice.floor_met is True and choice.min_speedup == 2.0
    chosen = next(d for d in choice.depths if d["blocks"] == choice.blocks)
    assert chosen["fast_enough"] and chosen["speedups"]["fp32 b1"] >= 2.0 and not chosen["channels_cut"]
    assert choice.blocks != free.blocks
    timed = [d for d in choice.depths if "speedups" in d]
    assert speed is not None and speed.timed == len(timed) >= 2
    slower = [d for d in timed if not d["fast_enough"]]
    assert slower and all(d["val_accuracy"] > chosen["val_accuracy"] and d["speedups"]["fp32 b1"] < 2.0 for d in slower)
    untimed = [d for d in choice.depths if "speedups" not in d and d["reached"]]
    assert all(d["val_accuracy"] < chosen["val_accuracy"] - TIE_PP for d in untimed)  # none could have been preferred


def test_a_probe_within_its_timing_noise_of_the_floor_does_not_pass():
    """The floor is met by one standard error: a probe timed 0.02× over the floor with a 0.05× SE does not pass."""
    first, _ = _search(2.0)
    fast = next(d for d in first.depths if d["blocks"] == first.blocks)["speedups"]["fp32 b1"]
    choice, _ = _search(fast - 0.02)
    row = next(d for d in choice.depths if d["blocks"] == first.blocks)
    assert row["speedups"]["fp32 b1"] > choice.min_speedup and row["speedup_se"] == {"fp32 b1": 0.05}
    assert not row["fast_enough"] and choice.floor_met is False


def test_no_probe_fast_enough_keeps_the_fastest_and_says_so():
    choice, _ = _search(50.0)
    timed = [d for d in choice.depths if "speedups" in d]
    assert choice.floor_met is False and timed and not any(d["fast_enough"] for d in timed)
    fastest = max(timed, key=lambda d: d["speedups"]["fp32 b1"])
    assert choice.blocks == fastest["blocks"]
    assert len(timed) == len([d for d in choice.depths if d["reached"]])  # none fast enough: every probe was timed


def test_the_timer_measures_fp32_and_int8_for_real():
    """MeasuredSpeedCheck on onnxruntime: resnet20 without six of its nine blocks (−66 % MACs) is timed faster than
    the unpruned model at both batch sizes, in FP32 and in INT8 (paired rounds, so a loaded CPU slows both alike)."""
    from export.speed_check import MeasuredSpeedCheck

    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()
    slim = build_model("resnet20", 10).eval()
    slim.load_state_dict(model.state_dict())
    drop_blocks(slim, ["layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"], 32)
    check = MeasuredSpeedCheck(1.5, "onnxruntime-cpu", [1, 8], 1, 32, rounds=5)
    try:
        check.set_reference(model)
        s = check.speedups(slim)
        assert set(s) == {"fp32 b1", "fp32 b8", "int8 b1", "int8 b8"}
        # five rounds beside another test worker: one round's outlier can move a median's SE past 0.5×, so the SE is
        # only checked to be a real spread smaller than the speedup it qualifies
        assert all(v > 1.2 and 0 <= se < v / 2 for v, se in s.values()), s
        assert not list(check.dir.glob("probe*"))  # a probe's files go once timed; the reference's stay
    finally:
        check.close()
    assert not check.dir.exists()


def test_the_floor_is_a_key_of_auto_and_bad_values_are_one_line():
    from pipeline.config import load_config

    cfg = load_config(SMOKE, ["prune.depth.drop_blocks=auto", "prune.depth.min_speedup=2.5"])
    assert cfg.prune.depth.min_speedup == 2.5
    for sets, says in ((["prune.depth.drop_blocks=auto", "prune.depth.min_speedup=1.0"], "must be a number > 1"),
                       (["prune.depth.drop_blocks=[layer1.1]", "prune.depth.min_speedup=2.0"],
                        "with blocks named by hand set it to null"),
                       (["prune.depth.drop_blocks=auto", "prune.depth.min_speedup=2.0", "prune.target.runtime=tensorrt-int8"],
                        "prune.depth.min_speedup is timed on the target runtime")):
        with pytest.raises(UserError) as err:
            load_config(SMOKE, sets)
        assert says in str(err.value) and "\n" not in str(err.value)


def test_the_pipeline_times_the_floor_on_the_target_it_aims_at(tmp_path):
    from pipeline.config import load_config
    from pipeline.orchestrate import StageContext
    from pipeline.stages_train import aim_at_target, depth_speed_check

    def check(sets: list[str]) -> object:
        cfg = load_config(SMOKE, sets)
        ctx = StageContext(cfg=cfg, run_dir=tmp_path, manifest=None, device=torch.device("cpu"))  # type: ignore[arg-type]
        p, target = aim_at_target(cfg.prune, cfg.target)
        return depth_speed_check(ctx, p, target)

    assert check(["prune.depth.drop_blocks=auto"]) is None
    c = check(["prune.depth.drop_blocks=auto", "prune.depth.min_speedup=2.5", "export.latency_batches=[1, 16]",
               "target.profile=openvino-cpu"])
    try:
        assert (c.runtime, c.batches, c.floor, c.int8) == ("openvino-cpu", [1, 16], 2.5, True)
    finally:
        c.close()


def test_without_the_pipeline_timer_the_floor_is_one_line(synthetic_data):
    from ccpcsa.criteria import get_criterion
    from ccpcsa.pruning.loop import run_pruning
    from ccpcsa.pruning.settings import PruneConfig
    from ccpcsa.training.engine import TrainConfig

    cfg = PruneConfig.of(criterion__name="l1", target__flops_reduction=0.25, depth__drop_blocks="auto", depth__min_speedup=2.0)
    with pytest.raises(UserError, match="needs the target's timer"):
        run_pruning(build_model("resnet20", 10), synthetic_data, get_criterion("l1"), cfg, TrainConfig(max_steps_per_epoch=1),
                    input_size=synthetic_data.input_size, progress=False)


def test_the_report_says_which_probes_were_fast_enough():
    from pipeline.report import depth_choice_line

    line = depth_choice_line({"blocks": ["l1.1", "l2.1"], "seconds": 300.2, "min_speedup": 2.5, "floor_met": True, "depths": [
        {"family": "overall", "blocks": [], "val_accuracy": 17.35, "reached": False},
        {"family": "per-stage", "blocks": ["l1.0"] * 15, "val_accuracy": 55.35, "reached": True,
         "speedups": {"fp32 b1": 2.63, "int8 b32": 2.34}, "fast_enough": False},
        {"family": "per-stage", "blocks": ["l1.1", "l2.1"] * 9, "val_accuracy": 48.4, "reached": True,
         "speedups": {"fp32 b1": 3.19, "int8 b32": 2.71}, "fast_enough": True}]})
    assert line.endswith("0 (channels only): 17.35 %, short of the target; 15 per stage: 55.35 %; 18 per stage: 48.40 %. "
                         "Timed against `prune.depth.min_speedup` 2.5× (slowest of FP32 / INT8 and batch sizes): "
                         "15 per stage: 2.34×, too slow; 18 per stage: 2.71×.")
