"""``prune.depth.drop_blocks: auto`` (ccpcsa/pruning/depth_choice.py): the blocks chosen on the model, jointly with the
channel cut to the run's target, through the loop, the config and the report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ccpcsa.errors import UserError
from ccpcsa.models import build_model
from ccpcsa.pruning.depth_choice import TIE_PP, MacsGoal, choose_blocks
from ccpcsa.pruning.settings import PruneConfig
from ccpcsa.surgery.prune import ChannelPruner, deployed_complexity

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
X = torch.randn(256, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _agreement(reference: nn.Module) -> tuple[torch.Tensor, object]:
    """The top-1 agreement (%) of a model with ``reference`` on :data:`X`: the probe's accuracy, measured for real."""
    with torch.no_grad():
        want = reference.eval()(X).argmax(1)

    def agree(m: nn.Module) -> float:
        with torch.no_grad():
            return 100.0 * float((m.eval()(X).argmax(1) == want).float().mean())
    return want, agree


def _with_a_free_block() -> nn.Module:
    """resnet20 (random weights, BatchNorms given spread) whose layer2.1 branch ends in a BatchNorm of zero scale and
    shift: that block is the identity already, so removing it costs nothing, and every other removal costs something."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.layer2[1].bn2.weight.zero_()
        model.layer2[1].bn2.bias.zero_()
    return model


def test_a_free_block_is_priced_at_zero_and_chosen_before_channels():
    """The block that is already an identity costs 0 pp alone and ranks first; at a 25 % MACs target the choice
    removes it (the fewest blocks within TIE_PP of the most agreement, which channels alone are not), and every
    depth's row records the target it reached."""
    model = _with_a_free_block()
    _, agree = _agreement(model)
    base = deployed_complexity(model, 32).macs
    keys = list(model.state_dict())
    choice = choose_blocks(model, lambda m: ChannelPruner(m, 32, 8, 8, 0.9), MacsGoal(0.75 * base, False), agree, None,
                           max_blocks=3, progress=False)
    single = {r["block"]: r for r in choice.single}
    assert single["layer2.1"]["drop_pp"] == 0.0 and single["layer2.1"]["macs_share"] > 0.1
    assert min(single.values(), key=lambda r: r["pp_per_macs_pct"])["block"] == "layer2.1"
    assert all(r["drop_pp"] > 0 for b, r in single.items() if b != "layer2.1")
    depths = {len(d["blocks"]): d for d in choice.depths}
    assert depths[0]["blocks"] == [] and depths[1]["blocks"] == ["layer2.1"]
    assert all(d["reached"] and d["measure"] <= 0.75 * base * 1.01 for d in depths.values())
    assert choice.blocks[:1] == ["layer2.1"]
    chosen = next(d for d in choice.depths if d["blocks"] == choice.blocks)
    top = max(d["val_accuracy"] for d in choice.depths if d["reached"])
    assert chosen["val_accuracy"] >= top - TIE_PP > depths[0]["val_accuracy"]
    assert all(d["val_accuracy"] < top - TIE_PP for d in choice.depths if len(d["blocks"]) < len(choice.blocks))
    assert list(model.state_dict()) == keys and not isinstance(model.layer2[1], nn.Identity)  # the model is untouched


def test_channels_alone_win_when_no_block_is_cheap():
    """At a 3 % MACs target every block removal overshoots by far and costs more agreement than the small channel
    cut: no block is chosen."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()
    _, agree = _agreement(model)
    base = deployed_complexity(model, 32).macs
    choice = choose_blocks(model, lambda m: ChannelPruner(m, 32, 8, 8, 0.9), MacsGoal(0.97 * base, False), agree, None,
                           max_blocks=2, progress=False)
    assert choice.blocks == []
    assert choice.depths[0]["blocks"] == [] and choice.depths[0]["reached"]


def test_the_loop_removes_the_chosen_blocks_and_records_the_search(synthetic_data):
    """run_pruning with drop_blocks=auto: the search runs first, its blocks are the ones removed, the summary holds
    every probe."""
    from ccpcsa.criteria import get_criterion
    from ccpcsa.pruning.loop import run_pruning
    from ccpcsa.training.engine import TrainConfig

    model = _with_a_free_block().train()
    cfg = PruneConfig.of(criterion__name="l1", target__flops_reduction=0.25, steps__flops_reduction=0.25, steps__max_iterations=1,
                         steps__tolerance=100.0, widths__round_to=8, recovery__finetune_epochs=0,
                         recovery__final_finetune_epochs=1, depth__drop_blocks="auto", depth__max_blocks=2)
    res = run_pruning(model, synthetic_data, get_criterion("l1"), cfg, TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=2),
                      input_size=synthetic_data.input_size, progress=False)
    s = res.summary()
    assert s["depth_choice"] is not None and s["dropped_blocks"] == s["depth_choice"]["blocks"]
    assert [len(d["blocks"]) for d in s["depth_choice"]["depths"]][:2] == [0, 1]
    assert len(s["depth_choice"]["single"]) == 7  # resnet20's removable blocks: 3 + 2 + 2
    assert s["flops_reduction"] >= 0.25


def test_auto_is_a_value_of_the_key_and_bad_values_are_one_line():
    from pipeline.config import load_config

    cfg = load_config(SMOKE, ["prune.depth.drop_blocks=auto", "prune.depth.max_blocks=3"])
    assert cfg.prune.depth.auto and cfg.prune.depth.max_blocks == 3
    for sets, says in ((["prune.depth.drop_blocks=all"], "must be a list of module names (e.g. [layer1.1]), [] or auto, got 'all'"),
                       (["prune.depth.max_blocks=0"], "prune.depth.max_blocks must be an integer ≥ 1, got 0")):
        with pytest.raises(UserError) as err:
            load_config(SMOKE, sets)
        assert says in str(err.value) and "\n" not in str(err.value)


def test_a_key_added_after_the_sections_keys_the_stage_only_when_set():
    """depth.max_blocks is new: at its default the stage keys of earlier run directories stay as they were; set, it
    changes them."""
    assert "depth.max_blocks" not in PruneConfig().legacy_flat()
    assert PruneConfig.of(depth__max_blocks=3).legacy_flat()["depth.max_blocks"] == 3


def test_the_report_says_what_each_depth_scored():
    from pipeline.report import depth_choice_line

    line = depth_choice_line({"blocks": ["layer1.1"], "seconds": 12.4, "depths": [
        {"blocks": [], "val_accuracy": 31.08, "reached": False}, {"blocks": ["layer1.1"], "val_accuracy": 54.82, "reached": True}]})
    assert line == ("Blocks chosen by `prune.depth.drop_blocks: auto` (12 s): `layer1.1` — one-shot val accuracy at the "
                    "target with the k cheapest blocks removed (overall, or of every stage), then channels: 0 (channels "
                    "only): 31.08 %, short of the target; 1: 54.82 %.")


def test_a_speed_target_is_priced_on_the_runtime_latency_table(tmp_path):
    """LatencyGoal on a real onnxruntime session: each depth's channel cut stops where the calibrated latency table
    estimates the goal (1.25× the unpruned model), and the row records that estimate in ms. The net is a Sequential
    whose stage (``3``) and its two blocks (``3.0``, ``3.1``) all carry their skips; no depth removes a block with the
    stage around it."""
    from ccpcsa.pruning.depth_choice import LatencyGoal
    from deploy_tests.byo_model import Residual
    from export.layer_latency import RuntimeLatencyProbe

    def unit() -> Residual:
        return Residual(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Sequential(unit(), unit()), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    _, agree = _agreement(model)
    probe = RuntimeLatencyProbe(1, 1, 8, tmp_path, 32, rounds=3)
    goal_ms = probe.set_reference(model) / 1.25
    choice = choose_blocks(model, lambda m: ChannelPruner(m, 32, 8, 8, 0.9), LatencyGoal(probe, goal_ms), agree, None,
                           max_blocks=3, progress=False)
    assert sorted(r["block"] for r in choice.single) == ["3", "3.0", "3.1"]  # the stage holds its blocks' skips: one too
    names = [d["blocks"] for d in choice.depths]
    assert len(names) in (2, 3) and names[0] == [] and all(  # never a block and the stage around it
        not any(a.startswith(f"{b}.") for a in n for b in n) for n in names)
    for d in choice.depths:
        assert d["reached"] == (d["measure"] <= goal_ms * 1.01) and d["measure"] > 0
    assert choice.depths[0]["reached"]  # channels alone can reach 1.25× on this net


def test_the_order_never_holds_a_block_and_its_stage():
    """The search's order drops the names inside or around an earlier one, so every prefix is a valid removal."""
    from ccpcsa.pruning.depth_choice import _apart

    assert _apart(["3.1", "3", "3.0", "layer1.1", "layer1.10", "layer1"]) == ["3.1", "3.0", "layer1.1", "layer1.10"]
