"""``prune.depth.price: time`` (ccpcsa/pruning/depth_choice.py ``time_shares``): blocks ordered by the accuracy they
cost per percent of the target's time, each stage's blocks timed together and the slowest format deciding; the timer
for real, the config, the loop, the pipeline and the report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ccpcsa.errors import UserError
from ccpcsa.models import build_model
from ccpcsa.pruning.depth_choice import SHARE_ROUNDS, MacsGoal, _apart, choose_blocks, time_shares
from ccpcsa.surgery.prune import ChannelPruner, deployed_complexity
from deploy_tests.test_depth_choice import _agreement, _with_a_free_block

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
BLOCKS = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


class BlockClock:
    """A target whose time is a fixed part plus each block still present (not an ``nn.Identity``), per format:
    ``ms[fmt][block]``. Its speedups follow from the model's own structure, so which blocks are cheap in time is set
    by the test, not by this machine's load (the real timer is tested below)."""

    def __init__(self, ms: dict[str, dict[str, float]], fixed: float = 10.0) -> None:
        self.ms, self.fixed = ms, fixed
        self.floor: float | None = None
        self.rounds: list[int | None] = []

    def time(self, model: nn.Module, fmt: str) -> float:
        present = [b for b in self.ms[fmt] if not isinstance(model.get_submodule(b), nn.Identity)]
        return self.fixed + sum(self.ms[fmt][b] for b in present)

    def set_reference(self, model: nn.Module) -> None:
        self.ref = {f: self.time(model, f) for f in self.ms}

    def speedups(self, model: nn.Module, rounds: int | None = None) -> dict[str, tuple[float, float]]:
        self.rounds.append(rounds)
        return {f: (self.ref[f] / self.time(model, f), 0.01) for f in self.ms}


#: stage 3 is slow in FP32, stage 1 in INT8: each stage is worth what it removes from its faster format
CLOCK = {"fp32 b1": dict(zip(BLOCKS, [1.0, 1, 1, 1, 1, 8, 8], strict=True)),
         "int8 b1": dict(zip(BLOCKS, [6.0, 6, 6, 1, 1, 9, 9], strict=True))}


def _search(price: str) -> tuple[object, BlockClock]:
    model = _with_a_free_block()
    _, agree = _agreement(model)
    clock = BlockClock(CLOCK)
    goal = MacsGoal(0.75 * deployed_complexity(model, 32).macs, False)
    choice = choose_blocks(model, lambda m: ChannelPruner(m, 32, 8, 8, 0.9), goal, agree, None, max_blocks=3,
                           progress=False, speed=clock, price=price)
    return choice, clock


def test_each_stage_is_timed_once_and_its_blocks_share_the_slowest_formats_time():
    """FP32 totals 10 + 21 = 31 ms, INT8 10 + 38 = 48 ms. Stage 1 removed: FP32 31/28, INT8 48/30 — FP32 gains least, so
    each of its 3 blocks is worth (1 − 28/31) / 3. Stage 3: FP32 31/15, INT8 48/30 — INT8 least, (1 − 30/48) / 2."""
    choice, clock = _search("time")
    stages = {tuple(s["blocks"]): s for s in choice.stage_times}
    assert sorted(stages) == [("layer1.0", "layer1.1", "layer1.2"), ("layer2.1", "layer2.2"), ("layer3.1", "layer3.2")]
    assert stages[("layer1.0", "layer1.1", "layer1.2")]["time_share"] == pytest.approx((1 - 28 / 31) / 3)
    assert stages[("layer2.1", "layer2.2")]["time_share"] == pytest.approx((1 - 46 / 48) / 2)
    assert stages[("layer3.1", "layer3.2")]["time_share"] == pytest.approx((1 - 30 / 48) / 2)
    assert stages[("layer3.1", "layer3.2")]["speedups"] == pytest.approx({"fp32 b1": 31 / 15, "int8 b1": 48 / 30})
    assert clock.rounds[:3] == [SHARE_ROUNDS] * 3 and len(clock.rounds) == 3  # three stage timings, no probe timed
    for r in choice.single:
        assert r["pp_per_time_pct"] == pytest.approx(r["drop_pp"] / (100 * r["time_share"]))
    assert choice.price == "time" and choice.summary()["stage_times"] == choice.stage_times
    assert choice.min_speedup is None and choice.floor_met is None


def test_the_search_follows_the_time_price_where_it_differs_from_the_macs_price():
    """Blocks of equal MACs but unequal time: the overall family takes them in the order of pp per percent of time,
    which here is not the MACs order; a MACs-priced search neither times nor reorders."""
    by_time, _ = _search("time")
    by_macs, clock = _search("macs")
    time_order = _apart([r["block"] for r in sorted(by_time.single, key=lambda r: r["pp_per_time_pct"])])
    macs_order = _apart([r["block"] for r in sorted(by_macs.single, key=lambda r: r["pp_per_macs_pct"])])
    assert time_order != macs_order
    for choice, order in ((by_time, time_order), (by_macs, macs_order)):
        overall = [d["blocks"] for d in choice.depths if d["family"] == "overall"]
        assert overall == [order[:k] for k in range(len(overall))] and len(overall) >= 2
    assert by_macs.stage_times == [] and "time_share" not in by_macs.single[0] and clock.rounds == []
    assert by_time.single[0]["macs_share"] == by_macs.single[0]["macs_share"]  # the MACs share is recorded either way


def test_time_without_a_timer_is_refused():
    model = build_model("resnet20", 10).eval()
    with pytest.raises(ValueError, match="'time' with a timer"):
        choose_blocks(model, lambda m: ChannelPruner(m, 32, 8, 8, 0.9), MacsGoal(1.0, False), lambda m: 0.0, None,
                      max_blocks=1, progress=False, price="time")


def test_the_real_timer_prices_every_stage_of_resnet20():
    """MeasuredSpeedCheck on onnxruntime, 1 thread, batch 1: every stage of resnet20 removed takes time away in FP32
    and INT8, so each block gets a share of the time above zero, and no stage's blocks take half of it each."""
    from export.speed_check import MeasuredSpeedCheck

    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()
    rows = [{"block": b, "drop_pp": 1.0} for b in BLOCKS]
    check = MeasuredSpeedCheck(None, "onnxruntime-cpu", [1], 1, 32, rounds=3)
    try:
        check.set_reference(model)
        from ccpcsa.models.depth import block_stages

        stages = time_shares(model, rows, check, block_stages(model, BLOCKS, 32))
    finally:
        check.close()
    assert [len(s["blocks"]) for s in stages] == [3, 2, 2]
    assert all(set(s["speedups"]) == {"fp32 b1", "int8 b1"} for s in stages), stages
    assert all(min(s["speedups"].values()) > 1.0 for s in stages), stages
    assert all(0 < r["time_share"] < 0.5 and r["pp_per_time_pct"] > 0 for r in rows), rows


def test_price_is_a_key_and_bad_values_are_one_line():
    from pipeline.config import load_config

    assert load_config(SMOKE, ["prune.depth.drop_blocks=auto", "prune.depth.price=time"]).prune.depth.price == "time"
    for sets, says in ((["prune.depth.price=tme"], "unknown prune.depth.price 'tme' (did you mean 'time'?)"),
                       (["prune.depth.drop_blocks=auto", "prune.depth.price=time",
                         "prune.target.runtime=tensorrt-int8"], "prune.depth.price=time is timed on the target")):
        with pytest.raises(UserError) as err:
            load_config(SMOKE, sets)
        assert says in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).endswith("or set prune.depth.price=macs")  # the last one: the way out, and only its own
    # blocks named by hand: nothing is priced, so nothing is timed
    assert not load_config(SMOKE, ["prune.depth.drop_blocks=[layer1.1]", "prune.depth.price=time"]).prune.depth.timed


def test_the_pipeline_builds_a_timer_without_a_floor_for_time_prices(tmp_path):
    from pipeline.config import load_config
    from pipeline.orchestrate import StageContext
    from pipeline.stages_train import aim_at_target, depth_speed_check

    cfg = load_config(SMOKE, ["prune.depth.drop_blocks=auto", "prune.depth.price=time"])
    ctx = StageContext(cfg=cfg, run_dir=tmp_path, manifest=None, device=torch.device("cpu"))  # type: ignore[arg-type]
    p, target = aim_at_target(cfg.prune, cfg.target)
    c = depth_speed_check(ctx, p, target)
    try:
        assert c is not None and c.floor is None and c.runtime == "onnxruntime-cpu"
    finally:
        c.close()


def test_without_the_pipeline_timer_time_prices_are_one_line(synthetic_data):
    from ccpcsa.criteria import get_criterion
    from ccpcsa.pruning.loop import run_pruning
    from ccpcsa.pruning.settings import PruneConfig
    from ccpcsa.training.engine import TrainConfig

    cfg = PruneConfig.of(criterion__name="l1", target__flops_reduction=0.25, depth__drop_blocks="auto",
                         depth__price="time")
    with pytest.raises(UserError, match="needs the target.s timer") as err:
        run_pruning(build_model("resnet20", 10), synthetic_data, get_criterion("l1"), cfg,
                    TrainConfig(max_steps_per_epoch=1), input_size=synthetic_data.input_size, progress=False)
    assert "prune.depth.price=macs" in str(err.value)


def test_the_report_gives_each_stages_share():
    from pipeline.report import depth_choice_line

    line = depth_choice_line({"blocks": ["layer1.1"], "seconds": 61.0, "price": "time", "depths": [
        {"family": "overall", "blocks": ["layer1.1"], "val_accuracy": 70.0, "reached": True}], "stage_times": [
        {"blocks": ["layer1.0", "layer1.1", "layer1.2"], "time_share": 0.1104},
        {"blocks": ["layer2.1", "layer2.2"], "time_share": 0.0852}]})
    assert line.endswith("Blocks priced per percent of the target's time (`prune.depth.price: time`; a stage's blocks "
                         "timed together, slowest of FP32 / INT8 and batch sizes): `layer1.0` … `layer1.2` (3 blocks) "
                         "11.0 % each; `layer2.1`, `layer2.2` 8.5 % each.")
    assert "priced" not in depth_choice_line({"blocks": [], "price": "macs", "depths": []})
