"""CCPCSA's score options (issue #13 ablation), the parameters allocation, the Torch-Pruning anchor and the
internal-only scope."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccpcsa.criteria import CcpcsaOptions, ScoreContext, get_criterion
from ccpcsa.criteria.stats import Moments
from ccpcsa.errors import UserError
from ccpcsa.models import build_model, count_complexity
from ccpcsa.surgery.prune import ChannelPruner, channels_per_layer, metapruner_to_target


def _moments(x: torch.Tensor) -> Moments:
    m = Moments()
    m.add(x)
    return m


def test_redundancy_measures_on_known_structure():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(4000, generator=g) for _ in range(3))
    # channel 2 = a + b exactly (explained by 0 and 1 jointly, by neither alone); channel 3 is independent noise
    x = torch.stack([a, b, a + b, c], 1)[:, :, None, None]
    m = _moments(x)
    partial = m.partial_redundancy()
    assert partial[2] == pytest.approx(1.0, abs=5e-3) and partial[3] < 0.01  # ridge 1e-3
    assert m.nearest_twin()[2] == pytest.approx(1 / np.sqrt(2), abs=0.03)  # pairwise |ρ| sees only half of it
    assert m.redundancy()[3] < 0.05
    rms = m.rms()
    assert rms[2] == pytest.approx(np.sqrt(2), rel=0.05) and rms[0] == pytest.approx(1.0, rel=0.05)


def test_options_are_validated_with_one_line():
    with pytest.raises(UserError, match="prune.criterion.options.correlation must be one of mean, max, partial, none"):
        get_criterion("ccpcsa", correlation="median")
    with pytest.raises(UserError, match="unknown prune.criterion.options key"):
        get_criterion("ccpcsa", colour="red")
    with pytest.raises(UserError, match="criterion 'l1' takes no prune.criterion.options"):
        get_criterion("l1", magnitude="l1")
    assert get_criterion("corr").options == CcpcsaOptions(attention="none")
    from pipeline.config import load_config

    with pytest.raises(UserError, match="criterion.options.magnitude"):
        load_config(None, ["prune.criterion.options={magnitude: huge}"])


def test_every_option_scores_every_group():
    from ccpcsa.criteria.stats import stats_collector
    from ccpcsa.models.attention import attach_bam

    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    attach_bam(model, 32)
    pruner = ChannelPruner(model, 32)
    stats = {}
    for where in ("bn", "relu", "conv"):
        model.train()
        with stats_collector(model, pruner, where) as col, torch.no_grad():
            model(torch.randn(16, 3, 32, 32))
        stats[where] = col.stats
    assert stats["bn"].attention("layer1.bam", full=True) is not None
    for opts in ({"correlation": "max"}, {"correlation": "partial"}, {"attention": "full"}, {"attention": "gain"},
                 {"magnitude": "energy"}, {"magnitude": "l1"}, {"magnitude": "bn"}, {"combine": "rank"},
                 {"features": "relu"}, {"features": "conv"}, {"group": "max"}):
        crit = get_criterion("ccpcsa", **opts)
        scores = crit.score(ScoreContext(model, pruner, stats[crit.features]))
        assert set(scores) == {g.key for g in pruner.groups}, opts
        assert all(np.isfinite(scores[g.key]).all() and scores[g.key].shape == (g.size,) for g in pruner.groups), opts


def test_params_allocation_thins_the_wide_late_layers_first():
    from ccpcsa.pruning.allocation import order_blocks

    model = build_model("resnet20", 10)
    pruner = ChannelPruner(model, 32, round_to=8)
    scores = {g.key: np.ones(g.size) for g in pruner.groups}
    first = order_blocks(pruner, scores, "params")[:4]
    assert all(b.key.startswith("layer3") for b in first), [b.key for b in first]  # 64-wide: most weights per channel
    cheap = order_blocks(pruner, scores, "cost", __import__("ccpcsa.surgery.cost", fromlist=["MacsCost"]).MacsCost(pruner))[:1]
    assert not cheap[0].key.startswith("layer3")  # per MAC, the 32×32 stage-1 channels are the expensive ones


def test_torch_pruning_anchor_reaches_the_target_from_below():
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    base = count_complexity(model).macs
    final = metapruner_to_target(model, 32, 0.6 * base, round_to=8)
    assert 0.5 * base <= final.macs <= 0.6 * base  # the library's own granularity (round_to on 16-wide layers)
    assert all(w % 8 == 0 for w in channels_per_layer(model).values())


def test_internal_scope_leaves_residual_streams_whole():
    model = build_model("resnet20", 10)
    pruner = ChannelPruner(model, 32, scope="internal")
    assert set(pruner.fixed) == {"conv1", "layer2.0.shortcut.0", "layer3.0.shortcut.0"}
    assert all("residual stream" in why for why in pruner.fixed.values())
    assert pruner.group_blocks("layer1.0.conv1", np.arange(16.0))  # block-internal channels still go


class _LinearTwin(torch.nn.Module):
    """fc1 (3 → 6) → fc2 (6 → 3); fc1's output 5 is exactly 2·out0 − out1 + 0.5, so fc2 can do without it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(3, 6)
        self.fc2 = torch.nn.Linear(6, 3)
        with torch.no_grad():
            self.fc1.weight[5] = 2 * self.fc1.weight[0] - self.fc1.weight[1]
            self.fc1.bias[5] = 2 * self.fc1.bias[0] - self.fc1.bias[1] + 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x.mean((2, 3))))


def test_least_squares_compensation_makes_an_explained_channel_free():
    from ccpcsa.surgery.compensation import InputMoments, compensate_least_squares
    from ccpcsa.surgery.macs_target import prune_to_target

    torch.manual_seed(0)
    model = _LinearTwin().eval()
    x = torch.randn(256, 3, 2, 2)
    mom = InputMoments()
    with torch.no_grad():
        mom.add(model.fc1(x.mean((2, 3))))
        ref = model(x)
    pruner = ChannelPruner(model, 2, round_to=1, min_channels=1, ignored_layers=[model.fc2])
    scores = {"fc1": np.array([1.0, 1, 1, 1, 1, 0])}  # channel 5 goes
    reports = []
    prune_to_target(pruner, scores, blocks=1, before_apply=lambda plan: reports.append(
        compensate_least_squares(pruner, plan, {"fc2": mom})))
    assert model.fc2.in_features == 5 and reports[0].compensated == ["fc1"]
    assert reports[0].groups["fc1"].consumers[0].mean_r2 > 0.999
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-3, atol=1e-3)  # the removal cost nothing
    # without compensation the same removal does change the outputs
    model2 = _LinearTwin().eval()
    pruner2 = ChannelPruner(model2, 2, round_to=1, min_channels=1, ignored_layers=[model2.fc2])
    prune_to_target(pruner2, scores, blocks=1)
    with torch.no_grad():
        assert (model2(x) - ref).abs().max() > 0.05


def test_each_option_changes_the_ranking():
    from ccpcsa.criteria.stats import stats_collector
    from ccpcsa.models.attention import attach_bam

    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    attach_bam(model, 32)
    pruner = ChannelPruner(model, 32)
    model.train()
    with stats_collector(model, pruner, "bn") as col, torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    ctx = ScoreContext(model, pruner, col.stats)
    base = get_criterion("ccpcsa", attention="channel", magnitude="none").score(ctx)
    for opts in ({"correlation": "max"}, {"correlation": "partial"}, {"attention": "gain"}, {"combine": "rank"},
                 {"magnitude": "l1"}):
        other = get_criterion("ccpcsa", **{"attention": "channel", "magnitude": "none", **opts}).score(ctx)
        assert any(not np.allclose(np.argsort(base[k]), np.argsort(other[k])) for k in base), opts


class _ConvConsumer(torch.nn.Module):
    """conv a (3 → 8) and conv b (3 → 8), concatenated, feed conv c (16 → 4, 1×1) → BN; a's channel 7 = 2·a0 − a1 and
    b's channel 7 = b0 + b2 exactly (linear, no ReLU in between), so c can do without both."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c = torch.nn.Conv2d(16, 4, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.a.weight[7], self.a.bias[7] = 2 * self.a.weight[0] - self.a.weight[1], 2 * self.a.bias[0] - self.a.bias[1]
            self.b.weight[7], self.b.bias[7] = self.b.weight[0] + self.b.weight[2], self.b.bias[0] + self.b.bias[2] + 0.3
            self.bn.running_mean.uniform_(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.c(torch.cat([self.a(x), self.b(x)], 1))).mean((2, 3)))


def test_least_squares_compensation_at_a_conv_consumer_fed_by_two_groups():
    from ccpcsa.surgery.compensation import InputMoments, compensate_least_squares

    torch.manual_seed(0)
    model = _ConvConsumer().eval()
    x = torch.randn(64, 3, 6, 6)
    mom = InputMoments()
    with torch.no_grad():
        mom.add(torch.cat([model.a(x), model.b(x)], 1))
        ref = model(x)
    pruner = ChannelPruner(model, 6, round_to=1, min_channels=1, ignored_layers=[model.fc])
    plan = {"a": [7], "b": [7]}
    report = compensate_least_squares(pruner, plan, {"c": mom})
    assert sorted(report.compensated) == ["a", "b"]
    rec = report.groups["a"].consumers[0]
    assert rec.pairs == 2 and rec.mean_r2 > 0.995 and rec.bias_target == "bn:bn"  # one fold of both, β into the BN (ridge 1e-3)
    pruner.apply(plan)
    assert model.c.in_channels == 14
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-3, atol=1e-3)
