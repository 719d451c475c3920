"""Bring-your-own architectures through prune → ONNX (issue #16): grouped and depthwise-separable convs, SE gates,
concat and split branches, dilated convs with bias and no BN, a Linear bottleneck head, and all of them mixed.

The surgery is checked exactly: the channels a plan removes are first silenced (:meth:`ChannelPruner.silenced`: their
rows of every member's weights and biases set to zero, so they carry exactly 0 downstream), then removed; the logits
must not move. That
fails for any surgery that removes the wrong input channels of a consumer (e.g. a grouped conv pruned
asymmetrically, a concat offset off by one), which a shape check would not see.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.common import randomize_batchnorm
from ccpcsa.models import build_model, count_complexity
from ccpcsa.surgery.macs_target import prune_to_target
from ccpcsa.surgery.prune import ChannelPruner, channels_per_layer
from deploy_tests.byo_zoo import BATTERY


@pytest.mark.parametrize("name", BATTERY)
def test_battery_model_prunes_consistently_and_exports(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(f"deploy_tests.byo_zoo:{name}", 10).eval()
    randomize_batchnorm(model)  # non-trivial BN statistics, so a mis-wired channel would show
    base = count_complexity(model)
    pruner = ChannelPruner(model, 32, round_to=4, min_channels=4)
    rng = np.random.default_rng(1)
    scores = {g.key: rng.random(g.size) for g in pruner.groups}
    x = torch.randn(4, 3, 32, 32)
    seen: dict[str, torch.Tensor] = {}

    def silence_then_record(plan: dict[str, list[int]]) -> None:
        with torch.no_grad(), pruner.silenced(plan):
            seen["before"] = model(x)

    plan, after = prune_to_target(pruner, scores, target_macs=0.6 * base.macs, before_apply=silence_then_record)
    assert plan, "nothing was pruned"
    assert after.macs < 0.75 * base.macs, (base.macs, after.macs)
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, seen["before"], rtol=1e-4, atol=1e-5)  # removed channels carried exactly 0
    for conv_name, m in dict(model.named_modules()).items():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, conv_name
    # the slim model exports to ONNX and onnxruntime reproduces PyTorch's logits
    from export.metadata import DeployMetadata
    from export.onnx_export import export_onnx
    from export.runtime import OrtRunner

    meta = DeployMetadata(class_names=[str(i) for i in range(10)], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=32)
    export_onnx(model, tmp_path / "m.onnx", meta)
    ort_logits = OrtRunner(tmp_path / "m.onnx", threads=1).run(x.numpy())
    ref = got.numpy()
    assert np.abs(ort_logits - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_group_feeding_part_of_a_grouped_conv_is_left_whole_and_named():
    model = build_model("deploy_tests.byo_zoo:mixed_net", 10)
    pruner = ChannelPruner(model, 32, round_to=4, min_channels=4)
    assert set(pruner.fixed) == {"branch_a.0", "branch_b.0"}
    assert "grouped conv 'down.0'" in pruner.fixed["branch_a.0"]
    assert pruner.group_blocks("branch_a.0", np.zeros(32)) == []
    # the groups around it are still pruned, symmetrically over the grouped convs' 4 slices
    assert pruner.group("stem.0").ch_groups == 4 and pruner.group("down.0").ch_groups == 4
    blocks = pruner.group_blocks("stem.0", np.arange(32, dtype=float))
    assert blocks and all(len(b.channels) == 4 and len({c % 8 for c in b.channels}) == 1 for b in blocks)


def test_grouped_conv_keeps_aligned_widths():
    model = build_model("deploy_tests.byo_zoo:grouped_net", 10)
    pruner = ChannelPruner(model, 32, round_to=8, min_channels=8)
    rng = np.random.default_rng(0)
    prune_to_target(pruner, {g.key: rng.random(g.size) for g in pruner.groups},
                    target_macs=0.5 * count_complexity(model).macs)
    widths = channels_per_layer(model)
    assert all(w % 8 == 0 for w in widths.values()), widths
