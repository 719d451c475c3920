"""Physical slimming through DepGraph, checkpoint round-trips, and criterion sanity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ccpcsa.criteria import ScoreContext, get_criterion
from ccpcsa.criteria.stats import ChannelStatsCollector
from ccpcsa.errors import UserError
from ccpcsa.io.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from ccpcsa.models import build_model, count_complexity
from ccpcsa.models.attention import BAM, attach_bam, bam_modules
from ccpcsa.surgery.macs_target import prune_to_target
from ccpcsa.surgery.prune import ChannelPruner, channels_per_layer

CASES = [
    ("resnet56", {}, True),
    ("resnet50_cifar", {}, False),
    ("vgg16_bn", {}, True),
    ("mobilenet_v2_cifar", {}, False),
    ("deploy_tests.byo_model:tiny_net", {"width": 24}, False),
]


def _random_scores(pruner: ChannelPruner, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.key: rng.random(g.size) for g in pruner.groups}


@pytest.mark.parametrize("name,kwargs,with_bam", CASES)
def test_slimming_really_shrinks_and_round_trips(tmp_path, name, kwargs, with_bam):
    torch.manual_seed(0)
    model = build_model(name, 10, **kwargs)
    attention = {"reduction": 16, "dilation": 4} if with_bam else None
    if with_bam:
        attach_bam(model, 32)
    base = count_complexity(model)
    n_before = sum(p.numel() for p in model.parameters())
    pruner = ChannelPruner(model, 32, round_to=8)
    _, after = prune_to_target(pruner, _random_scores(pruner), target_macs=0.6 * base.macs)
    assert after.macs <= 0.6 * base.macs
    assert after.params < base.params
    assert sum(p.numel() for p in model.parameters()) < n_before  # tensors really are smaller
    for conv_name, c in channels_per_layer(model).items():
        mod = dict(model.named_modules())[conv_name]
        if mod.out_channels != 1 and "spatial_gate" not in conv_name:
            assert c % 8 == 0 or c == 10, (conv_name, c)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    assert y.shape == (2, 10)
    spec = ModelSpec(name, 10, 32, kwargs, attention)
    path = save_checkpoint(tmp_path / "pruned.pt", model, spec, classes=[str(i) for i in range(10)])
    raw = torch.load(path, weights_only=True)  # plain tensors + primitives only
    assert raw["format"].startswith("ccpcsa-checkpoint")
    ck = load_checkpoint(path)
    assert count_complexity(ck.model) == after
    torch.testing.assert_close(ck.model(x), y)
    # the slim model exports to ONNX and onnxruntime reproduces PyTorch's logits
    from export.metadata import DeployMetadata
    from export.onnx_export import export_onnx
    from export.runtime import OrtRunner

    meta = DeployMetadata(class_names=[str(i) for i in range(10)], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=32)
    export_onnx(model, tmp_path / "pruned.onnx", meta)
    got = OrtRunner(tmp_path / "pruned.onnx", threads=1).run(x.numpy())
    ref = y.detach().numpy()
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_depthwise_stays_depthwise():
    model = build_model("mobilenet_v2_cifar", 10)
    pruner = ChannelPruner(model, 32, round_to=8)
    prune_to_target(pruner, _random_scores(pruner, 3), target_macs=0.5 * count_complexity(model).macs)
    dw = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw and all(m.groups == m.in_channels == m.out_channels for m in dw)


def test_checkpoint_mismatch_and_nan(tmp_path):
    model = build_model("resnet20", 10)
    spec = ModelSpec("resnet20", 10)
    p = save_checkpoint(tmp_path / "m.pt", model, spec)
    with pytest.raises(UserError, match="10 classes but the data/config has 100"):
        load_checkpoint(p, expect_classes=100)
    raw = torch.load(p, weights_only=True)
    raw["model"]["name"] = "resnet32"
    torch.save(raw, tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not match architecture 'resnet32'"):
        load_checkpoint(tmp_path / "other.pt")
    raw = torch.load(p, weights_only=True)
    raw["state_dict"]["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(raw, tmp_path / "nan.pt")
    with pytest.raises(UserError, match="NaN/Inf"):
        load_checkpoint(tmp_path / "nan.pt")
    (tmp_path / "trunc.pt").write_bytes(p.read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated or not a torch checkpoint"):
        load_checkpoint(tmp_path / "trunc.pt")


class _Twin(nn.Module):
    """conv → BN → ReLU → pool → fc, with output channel 5 an exact copy of channel 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.conv.weight[5] = self.conv.weight[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def _stats(model: nn.Module, pruner: ChannelPruner, batches: int = 4):
    from ccpcsa.criteria import feature_members

    feats = sorted({n for g in pruner.groups for n in feature_members(g, model)})
    model.train()
    torch.manual_seed(1)
    with ChannelStatsCollector(model, feats) as col, torch.no_grad():
        for _ in range(batches):
            model(torch.randn(16, 3, 12, 12))
    return col.stats


def test_duplicated_channel_has_full_correlation_and_goes_first():
    model = _Twin()
    pruner = ChannelPruner(model, 12, round_to=1, min_channels=1)
    stats = _stats(model, pruner)
    corr = stats.moments["bn"].correlation()
    assert corr[2, 5] == pytest.approx(1.0, abs=1e-6)
    rho = stats.moments["bn"].redundancy()
    assert set(np.argsort(-rho)[:2]) == {2, 5}
    for name in ("ccpcsa", "corr"):
        scores = get_criterion(name).score(ScoreContext(model, pruner, stats))
        first = [b for b in pruner.ranked_blocks(scores) if b[1] == "conv"][0]  # the twin's layer prunes a twin first
        assert first[2][0] in (2, 5), (name, first)


def test_near_zero_attention_channel_goes_first():
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    attach_bam(model, 32)
    bam: BAM = bam_modules(model)["layer1.bam"]
    with torch.no_grad():
        bam.channel_gate.fc2.bias[7] = -30.0  # σ(Mc) ≈ 0 for channel 7 of the stage-1 group
    pruner = ChannelPruner(model, 32, round_to=1, min_channels=1)
    stats = _stats_32(model, pruner)
    assert stats.attention("layer1.bam")[7] < 1e-6
    for name in ("ccpcsa", "attention"):
        scores = get_criterion(name).score(ScoreContext(model, pruner, stats))
        first = pruner.ranked_blocks(scores)[0]
        assert first[1] == "conv1" and first[2] == [7], (name, first)


def _stats_32(model, pruner):
    from ccpcsa.criteria import feature_members

    feats = sorted({n for g in pruner.groups for n in feature_members(g, model)})
    model.train()
    with ChannelStatsCollector(model, feats) as col, torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    return col.stats


@pytest.mark.parametrize("name", ["l1", "bn", "random", "taylor", "ccpcsa", "corr", "attention"])
def test_every_criterion_scores_every_group(name):
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    attach_bam(model, 32)
    pruner = ChannelPruner(model, 32)
    stats = _stats_32(model, pruner)

    def batches():
        for _ in range(2):
            yield torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    scores = get_criterion(name).score(ScoreContext(model, pruner, stats, batches))
    assert set(scores) == {g.key for g in pruner.groups}
    for g in pruner.groups:
        assert scores[g.key].shape == (g.size,) and np.isfinite(scores[g.key]).all()


def test_unknown_criterion():
    with pytest.raises(UserError, match="unknown criterion 'l2'.*known: .*l1"):
        get_criterion("l2")
