"""Runtime-aligned widths, cost models, allocations and latency-targeted pruning (issue #15)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ccpcsa.errors import UserError
from ccpcsa.models import build_model, count_complexity
from ccpcsa.pruning.allocation import order_blocks
from ccpcsa.surgery.alignment import cpu_float_lanes, resolve_alignment
from ccpcsa.surgery.cost import LatencyCost, MacsCost, layer_shapes
from ccpcsa.surgery.macs_target import prune_to_target
from ccpcsa.surgery.prune import ChannelPruner, channels_per_layer, macs_after, plan_from_blocks


def test_alignment_follows_the_cpu_and_the_runtime():
    assert cpu_float_lanes(frozenset({"sse2", "avx", "avx2", "avx512f"}))[0] == 16
    assert cpu_float_lanes(frozenset({"sse2", "avx", "avx2"}))[0] == 8
    assert cpu_float_lanes(frozenset({"fp", "asimd"}), "aarch64")[0] == 4
    assert resolve_alignment("auto", "tensorrt-fp16")[0] == 8
    assert resolve_alignment("auto", "tensorrt-int8")[0] == 16
    assert resolve_alignment(12, "tensorrt-int8") == (12, "set by prune.widths.round_to")
    avx512, avx2 = frozenset({"avx2", "avx512f"}), frozenset({"avx2"})
    align, why = resolve_alignment(8, flags=avx512)  # kept, with what it costs on this CPU
    assert align == 8 and why.startswith("set by prune.widths.round_to; note: this CPU runs onnxruntime in blocks of 16 (AVX-512)")
    assert "round_to: auto picks 16 here" in why and "\n" not in why
    assert resolve_alignment(8, flags=avx2) == (8, "set by prune.widths.round_to")
    assert resolve_alignment(16, flags=avx2) == (16, "set by prune.widths.round_to")  # a multiple of the lanes: nothing to say
    assert resolve_alignment("auto", flags=avx2)[0] == 8 and resolve_alignment("auto", flags=avx512)[0] == 16
    assert resolve_alignment("auto")[0] in (4, 8, 16)
    with pytest.raises(UserError, match="prune.widths.round_to must be 'auto' or an integer"):
        resolve_alignment("fast")
    with pytest.raises(UserError, match="prune.widths.round_to must be 'auto' or an integer"):
        resolve_alignment(0)
    with pytest.raises(UserError, match="unknown prune.target.runtime 'tpu'"):
        resolve_alignment("auto", "tpu")


def test_config_takes_auto_or_a_number(tmp_path):
    from pipeline.config import load_config

    assert load_config(None, ["prune.widths.round_to=auto"]).prune.widths.round_to == "auto"
    assert load_config(None, ["prune.widths.round_to=16"]).prune.widths.round_to == 16
    assert load_config(None, []).prune.widths.round_to == "auto"
    with pytest.raises(UserError, match="round_to"):
        load_config(None, ["prune.widths.round_to=sixteen"])
    with pytest.raises(UserError, match="prune.steps.allocation"):
        load_config(None, ["prune.steps.allocation=greedy"])
    with pytest.raises(UserError, match="not both"):
        load_config(None, ["prune.target.speedup=2", "prune.target.latency_ms=1"])
    with pytest.raises(UserError, match="prune.target.speedup must be a number > 1"):
        load_config(None, ["prune.target.speedup=0.5"])


def test_aligned_widths_keep_narrow_layers_whole():
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    pruner = ChannelPruner(model, 32, round_to=16, min_channels=8)
    rng = np.random.default_rng(0)
    scores = {g.key: rng.random(g.size) for g in pruner.groups}
    assert all(not pruner.group_blocks(k, scores[k]) for k in ("conv1", "layer1.0.conv1"))  # 16 wide: one block, kept
    prune_to_target(pruner, scores, target_macs=0.6 * count_complexity(model).macs)
    widths = channels_per_layer(model)
    assert all(w % 16 == 0 for w in widths.values()), widths
    assert widths["conv1"] == 16 and widths["layer1.0.conv1"] == 16


def test_wide_alignment_moves_wide_layers_in_coarse_blocks_and_narrow_ones_in_fine_blocks():
    """round_to 8 + wide_round_to 16 on resnet20 (16/32/64 wide): stage 1 may go to 8, stages 2-3 keep multiples of
    16 — the x86 INT8 kernels' output-channel block — and the alignment survives iterations (original widths)."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    pruner = ChannelPruner(model, 32, round_to=8, min_channels=8, wide_round_to=16)
    units = {g.key: pruner.unit(g.key) for g in pruner.groups}
    assert units["conv1"] == 8 and units["layer1.0.conv1"] == 8
    assert units["layer2.0.conv1"] == 16 and units["layer3.0.conv1"] == 16
    rng = np.random.default_rng(0)
    scores = {g.key: rng.random(g.size) for g in pruner.groups}
    assert [len(b.channels) for b in pruner.group_blocks("layer3.0.conv1", scores["layer3.0.conv1"])] == [16, 16, 16]
    prune_to_target(pruner, scores, target_macs=0.5 * count_complexity(model).macs)
    widths = channels_per_layer(model)
    assert any(w == 8 for w in widths.values()), widths  # stage 1 did use its 8-blocks
    assert all(w % 16 == 0 for k, w in widths.items() if k.startswith(("layer2", "layer3"))), widths
    again = ChannelPruner(model, 32, round_to=8, min_channels=8, wide_round_to=16, original_sizes=pruner.original_sizes)
    assert again.unit("layer3.0.conv1") == 16 and again.unit("conv1") == 8
    with pytest.raises(UserError, match="round_to_wide"):
        from pipeline.config import load_config
        load_config(None, ["prune.widths.round_to_wide=0"])


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2_cifar", "vgg16_bn", "deploy_tests.byo_zoo:mixed_net"])
def test_macs_cost_model_matches_the_counter(name):
    torch.manual_seed(0)
    model = build_model(name, 10)
    pruner = ChannelPruner(model, 32, round_to=8)
    cost = MacsCost(pruner)
    real = count_complexity(model).macs
    assert cost() == pytest.approx(real, rel=0.06)  # the counter adds BN/ReLU/add/gate work
    rng = np.random.default_rng(1)
    order = order_blocks(pruner, {g.key: rng.random(g.size) for g in pruner.groups}, "global")
    n = len(order) // 3
    est = cost.prefix_costs(order)
    saved_est, saved_real = est[0] - est[n], real - macs_after(pruner, plan_from_blocks(order[:n]))
    assert saved_est == pytest.approx(saved_real, rel=0.08)


class _TwoBranch(nn.Module):
    """Two parallel convs of equal width; ``wide`` runs at 4× the resolution, so its channels cost 16× the MACs."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(3, 16, 3, padding=1)
        self.small = nn.Conv2d(3, 16, 3, stride=4, padding=1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.wide(x)).mean((2, 3))
        b = torch.relu(self.small(x)).mean((2, 3))
        return self.fc(torch.cat([a, b], 1))


def test_cost_allocation_prunes_expensive_channels_first_and_uniform_alternates():
    model = _TwoBranch()
    pruner = ChannelPruner(model, 32, round_to=4, min_channels=4)
    scores = {"wide": np.ones(16), "small": np.ones(16) * 0.9}  # 'small' is slightly less important ...
    glob = order_blocks(pruner, scores, "global")
    assert glob[0].key == "small"  # ... so the plain global sort takes it first
    cost = order_blocks(pruner, scores, "cost", MacsCost(pruner))
    assert [b.key for b in cost[:3]] == ["wide"] * 3  # ... but per MAC saved, 'wide' is 16× cheaper to lose
    uni = order_blocks(pruner, scores, "uniform")
    assert [b.key for b in uni[:4]] == ["small", "wide", "small", "wide"]


def test_latency_cost_calibrates_to_the_measurement():
    model = build_model("resnet20", 10)
    pruner = ChannelPruner(model, 32, round_to=16)
    cost = LatencyCost(pruner, lambda layer, ci, co: layer.macs(ci, co) * 1e-7)
    cost.calibrate(5.0)
    assert cost() == pytest.approx(5.0)
    assert cost({**pruner.widths(), "layer3.0.conv1": 32}) < 5.0
    assert {s.kind for s in layer_shapes(pruner)} == {"conv", "linear"}


def test_latency_cost_proportional_when_the_table_explains_more_than_was_measured():
    """resnet56 at batch 1 (2026-12-03): isolated layer timings summed past the measured 2.16 ms, the additive fit got a
    negative overhead and a 2.7e9× 'floor' estimate. The proportional model keeps the floor a positive fraction."""
    model = build_model("resnet56", 10)
    pruner = ChannelPruner(model, 32, round_to=8)
    cost = LatencyCost(pruner, lambda layer, ci, co: 0.02 + layer.macs(ci, co) * 1e-8)  # 0.02 ms of overhead per layer
    table = cost()
    floors = {k: 8 for k in pruner.widths()}
    at_floor = cost(floors)
    measured = 0.9 * (table - at_floor)  # less than the table's saving alone: the additive fit goes below 0 ms
    assert table > 2.0 and 0 < at_floor < table and measured > 0
    cost.calibrate(measured)
    assert cost() == pytest.approx(measured) and cost.constant < 0 and cost(floors) < 0  # the additive fit's nonsense
    prop = cost.proportional()
    assert prop is not cost and prop.constant == 0.0 and prop.scale == pytest.approx(measured / table)
    assert prop() == pytest.approx(measured) and prop(floors) == pytest.approx(measured * at_floor / table) and prop(floors) > 0
    assert cost.constant < 0  # the loop's own model is left as it was
    cost.calibrate(2 * table)  # the table explains less: the rest is a fixed overhead, nothing to change
    assert cost.proportional() is cost and cost.constant == pytest.approx(table) and cost() == pytest.approx(2 * table)


def test_layer_latency_table_measures_interpolates_and_caches(tmp_path):
    from export.layer_latency import OrtLayerTable, conv_model, ort_session, width_grid

    assert width_grid(64, 16) == [16, 32, 48, 64]
    assert width_grid(256, 8)[-1] == 256 and len(width_grid(256, 8)) <= 10
    layer = next(s for s in layer_shapes(ChannelPruner(build_model("resnet20", 10), 32)) if s.name == "layer3.1.conv1")
    out = ort_session(conv_model(layer, 32, 48, 2), 1).run(None, {"x": np.zeros((2, 32, 8, 8), np.float32)})[0]
    assert out.shape == (2, 48, 8, 8)
    table = OrtLayerTable(batch=1, threads=1, alignment=16, cache=tmp_path / "t.json", rounds=2)
    table.prepare([layer])
    assert table.timed == 16  # 4 input widths × 4 output widths
    full, half = table(layer, 64, 64), table(layer, 32, 32)
    assert full > 0 and half > 0
    mid = table(layer, 64, 40)  # between the 32- and 48-wide points
    lo, hi = table(layer, 64, 32), table(layer, 64, 48)
    assert min(lo, hi) <= mid <= max(lo, hi)
    again = OrtLayerTable(batch=1, threads=1, alignment=16, cache=tmp_path / "t.json")
    again.prepare([layer])
    assert again.timed == 0 and again(layer, 64, 64) == full  # read back from the run directory's cache


class _MacsProbe:
    """A latency probe whose 'latency' is the deployed model's MACs (deterministic, for the loop's logic)."""

    def __init__(self) -> None:
        self.ref = 0.0

    def set_reference(self, model: nn.Module) -> float:
        self.ref = count_complexity(model).macs / 1e6
        return self.ref

    def measure_pair(self, model: nn.Module | None) -> tuple[float, float]:
        return self.ref, (self.ref if model is None else count_complexity(model).macs / 1e6)

    def cost_model(self, pruner: ChannelPruner, actual_ms: float) -> LatencyCost:
        cost = LatencyCost(pruner, lambda layer, ci, co: layer.macs(ci, co) / 1e6)
        cost.calibrate(actual_ms)
        return cost


def _tiny_latency_run(data, probe, **prune):
    """l1 pruning of a 32-wide tiny_net (seed 0) with a fake probe: no fine-tuning, no guard, blocks of 8 unless said."""
    from ccpcsa.criteria import get_criterion
    from ccpcsa.pruning.loop import PruneConfig, run_pruning
    from ccpcsa.training.engine import TrainConfig

    torch.manual_seed(0)
    model = build_model("deploy_tests.byo_model:tiny_net", data.num_classes, width=32)
    cfg = PruneConfig.of({"criterion.name": "l1", "steps.tolerance": 100.0, "widths.round_to": 8, "widths.min_channels": 8, "recovery.finetune_epochs": 0,
                         "recovery.final_finetune_epochs": 0, **prune})
    return run_pruning(model, data, get_criterion("l1"), cfg, TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=2),
                       input_size=data.input_size, progress=False, latency=probe)


def test_latency_target_stops_on_the_measured_speedup(synthetic_data):
    res = _tiny_latency_run(synthetic_data, _MacsProbe(), target_speedup=1.5, step_flops_reduction=0.2, max_iterations=6,
                            allocation="cost")
    speedups = [h["speedup"] for h in res.history]
    assert res.stop_reason == "target reached", res.stop_reason
    assert speedups[-1] >= 1.5 and all(s < 1.5 for s in speedups[:-1])
    assert speedups == sorted(speedups)
    assert res.latency["final_speedup"] >= 1.5 and res.summary()["alignment"] == 8


def test_an_unreachable_latency_target_is_said_at_the_first_step(synthetic_data, capsys):
    res = _tiny_latency_run(synthetic_data, _MacsProbe(), target_speedup=50.0, step_flops_reduction=0.5, max_iterations=1,
                            allocation="cost")
    est = res.latency["floor_speedup_estimate"]
    # latency ∝ MACs here: the estimate is near the MACs ratio of the model with every block removed (each layer at its
    # floor), a little under it — the calibrated constant keeps the width-dependent non-conv work (BN, ReLU) at full width
    fresh = build_model("deploy_tests.byo_model:tiny_net", synthetic_data.num_classes, width=32)
    pruner = ChannelPruner(fresh, synthetic_data.input_size, 8, 8)
    everything = order_blocks(pruner, {g.key: np.ones(g.size) for g in pruner.groups}, "global")
    floor_macs = macs_after(pruner, plan_from_blocks(everything))
    true_ratio = count_complexity(fresh).macs / floor_macs
    assert 0.8 * true_ratio < est <= true_ratio and est < 50
    out = capsys.readouterr().out
    assert "target.speedup 50.00x at batch 1 is likely out of reach" in out and f"the latency table estimates {est:.2f}x" in out


def test_latency_target_without_a_probe_is_a_user_error(synthetic_data):
    from ccpcsa.criteria import get_criterion
    from ccpcsa.pruning.loop import PruneConfig, run_pruning
    from ccpcsa.training.engine import TrainConfig

    model = build_model("deploy_tests.byo_model:tiny_net", synthetic_data.num_classes)
    with pytest.raises(UserError, match="need a latency measurement"):
        run_pruning(model, synthetic_data, get_criterion("l1"), PruneConfig.of(target__speedup=2.0), TrainConfig(max_steps_per_epoch=1),
                    input_size=synthetic_data.input_size, progress=False)


def test_latency_allocation_with_a_macs_target_uses_the_probe(synthetic_data):
    from ccpcsa.criteria import get_criterion
    from ccpcsa.pruning.loop import PruneConfig, run_pruning
    from ccpcsa.training.engine import TrainConfig

    res = _tiny_latency_run(synthetic_data, _MacsProbe(), target_flops_reduction=0.3, step_flops_reduction=0.3, max_iterations=2,
                            allocation="latency")
    assert res.stop_reason == "target reached" and res.summary()["flops_reduction"] >= 0.3 - 5e-4
    assert res.latency["target_speedup"] is None and res.latency["final_speedup"] > 1.0
    with pytest.raises(UserError, match="allocation=latency need a latency measurement"):
        run_pruning(build_model("deploy_tests.byo_model:tiny_net", synthetic_data.num_classes), synthetic_data, get_criterion("l1"),
                    PruneConfig.of(steps__allocation="latency"), TrainConfig(max_steps_per_epoch=1), input_size=synthetic_data.input_size,
                    progress=False)


class _StepProbe(_MacsProbe):
    """Latency ∝ MACs, halved once the model is below 85 % of its MACs (a runtime switching to a faster kernel): the
    first step overshoots what the (MACs-linear) table promised, past the next steps' goals."""

    def set_reference(self, model: nn.Module) -> float:
        self.base = count_complexity(model).macs
        return super().set_reference(model)

    def measure_pair(self, model: nn.Module | None) -> tuple[float, float]:
        ref, ms = super().measure_pair(model)
        return ref, (ms / 2 if model is not None and count_complexity(model).macs < 0.85 * self.base else ms)


def test_an_overshooting_step_does_not_stop_the_latency_loop_early(synthetic_data):
    res = _tiny_latency_run(synthetic_data, _StepProbe(), target_speedup=3.0, step_flops_reduction=0.15, max_iterations=8,
                            round_to=4, min_channels=4, allocation="cost")
    speedups = [h["speedup"] for h in res.history]
    assert speedups[0] > 1 / (1 - 0.15 * 2)  # the first step already passed the second step's goal ...
    assert res.stop_reason == "target reached" and speedups[-1] >= 3.0  # ... and the loop still went on to the target


class _OptimisticTableProbe(_MacsProbe):
    """Latency ∝ MACs, but the table prices every layer at twice its share (isolated timings that include per-call
    costs the whole graph does not pay per layer): each step's real drop is half the predicted one."""

    def cost_model(self, pruner: ChannelPruner, actual_ms: float) -> LatencyCost:
        cost = LatencyCost(pruner, lambda layer, ci, co: 2 * layer.macs(ci, co) / 1e6)
        cost.calibrate(actual_ms)
        return cost


def test_step_gain_aims_past_the_goal_by_what_the_steps_delivered():
    from ccpcsa.pruning.steering import StepGain

    g = StepGain()
    assert g.gain == 1.0 and g.aim(10.0, 8.0) == 8.0
    g.record((10.0, 10.0), 6.0, (12.0, 9.6))  # predicted 0.4 of the reference, delivered 1 − 0.8 = 0.2
    assert g.gain == pytest.approx(0.5) and g.aim(8.0, 6.0) == pytest.approx(4.0)
    g.record((12.0, 9.6), 9.6, (12.0, 9.0))  # a step the table predicted nothing for does not count
    assert g.gain == pytest.approx(0.5)
    g.record((10.0, 8.0), 7.0, (10.0, 7.0))  # 0.1 predicted, 0.1 delivered: Σ 0.3 / Σ 0.5
    assert g.gain == pytest.approx(0.6)
    g.record((10.0, 7.0), 6.0, (10.0, 7.0))  # nothing delivered
    g.record((10.0, 7.0), 0.0, (10.0, 7.0))  # Σ 0.3 / Σ 1.3 < 0.5: clipped
    assert g.gain == 0.5 and g.delivered / g.predicted < 0.5


def test_latency_steps_correct_an_optimistic_table(synthetic_data):
    res = _tiny_latency_run(synthetic_data, _OptimisticTableProbe(), target_speedup=2.0, step_flops_reduction=0.25,
                            max_iterations=4, allocation="cost")
    rows = res.history
    assert rows[0]["gain"] == 1.0 and rows[0]["aim_ms"] == rows[0]["goal_ms"]
    first_real = rows[0]["unpruned_ms"] / rows[0]["speedup"]
    assert rows[0]["unpruned_ms"] - first_real < 0.75 * (rows[0]["unpruned_ms"] - rows[0]["estimated_ms"])  # fell short
    assert 0.5 <= rows[1]["gain"] < 0.65 and rows[1]["aim_ms"] < rows[1]["goal_ms"]  # the second step aims past its goal
    assert res.stop_reason == "target reached" and len(rows) <= 3 and rows[-1]["speedup"] >= 2.0


def test_fewest_prefix_finds_the_smallest_k_with_few_evaluations():
    from ccpcsa.surgery.macs_target import fewest_prefix

    values = [100 - 7 * k for k in range(12)]  # 100, 93, …, 23
    calls: list[int] = []

    def value(k: int) -> float:
        calls.append(k)
        return values[k]

    assert fewest_prefix(11, value, 50.0, values) == 8  # 100 − 56 = 44 ≤ 50 < 51
    assert len(set(calls)) <= 5  # the estimate lands next to the answer
    assert fewest_prefix(11, lambda k: values[k], 10.0) == 11  # never reached: all of them
    assert fewest_prefix(11, lambda k: values[k], 200.0) == 0


def test_fit_to_target_sets_a_coarse_overshooting_block_aside():
    from ccpcsa.pruning.allocation import order_blocks
    from ccpcsa.surgery.macs_target import fit_to_target
    from ccpcsa.surgery.prune import deployed_complexity, macs_after, plan_from_blocks

    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    pruner = ChannelPruner(model, 32, round_to=8)
    scores = {g.key: np.ones(g.size) for g in pruner.groups}
    scores["conv1"] = np.zeros(16)  # the stage-1 residual stream's block (half of it, ~20 % of the MACs) goes first
    order = order_blocks(pruner, scores, "global")
    assert order[0].key == "conv1"
    base = deployed_complexity(model, 32).macs
    chosen = fit_to_target(pruner, order, 0.95 * base)  # a 5 % target: that block alone would overshoot by ~15 %
    macs = macs_after(pruner, plan_from_blocks(chosen))
    assert macs <= 0.95 * base and macs > 0.85 * base
    assert all(b.key != "conv1" for b in chosen)
