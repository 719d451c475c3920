"""``prune.depth.drop_blocks``: whole residual blocks removed (ccpcsa/models/depth.py), through the loop, the checkpoint and
the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ccpcsa.errors import UserError
from ccpcsa.io.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from ccpcsa.models import build_model, count_complexity
from ccpcsa.models.attention import attach_bam
from ccpcsa.models.depth import drop_blocks
from pipeline.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def _resnet20() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20", 10).eval()


def test_a_dropped_block_is_skipped_and_its_macs_are_gone():
    """resnet20 without layer1.1 computes layer1.2(layer1.0(x)) and loses that block's MACs."""
    model = _resnet20()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stem = model.relu(model.bn1(model.conv1(x)))
        want = model.layer1[2](model.layer1[0](stem))
    before = count_complexity(model).macs
    assert drop_blocks(model, ["layer1.1"]) == ["layer1.1"]
    assert isinstance(model.layer1[1], nn.Identity)
    with torch.no_grad():
        got = model.layer1(stem)
    assert torch.allclose(got, want)
    convs = 2 * 16 * 16 * 9 * 32 * 32  # plus its BatchNorms, ReLUs and the add: 6 × 16·32·32 element operations
    assert before - count_complexity(model).macs == convs + 6 * 16 * 32 * 32


def test_blocks_are_found_through_bam_wrappers():
    """attach_bam wraps layer1 (and layer2.2); the plain name layer1.2 still names the block (layer1.body.2)."""
    model = _resnet20()
    assert attach_bam(model, input_size=32) == ["layer1", "layer2.2"]
    drop_blocks(model, ["layer1.2", "layer3.1"])
    assert isinstance(model.layer1.body[2], nn.Identity) and isinstance(model.layer3[1], nn.Identity)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("names, says", [
    (["layer4.0"], "the model has no module 'layer4'"),
    (["layer1.7"], "layer1 has no module '7' (it has: 0, 1, 2)"),
    (["layer2.0"], "layer2.0 maps [1, 16, 32, 32] to [1, 32, 16, 16]"),
    (["layer1.1", "layer1.1"], "names a block twice"),
    (["layer1", "layer1.1"], "layer1.1 is inside layer1"),
    ([" layer1.1"], "is not a module name"),
])
def test_bad_names_are_one_line_errors_and_leave_the_model_whole(names, says):
    model = _resnet20()
    keys = list(model.state_dict())
    with pytest.raises(UserError) as err:
        drop_blocks(model, names)
    assert says in str(err.value) and "\n" not in str(err.value)
    assert list(model.state_dict()) == keys


def test_a_checkpoint_rebuilds_the_dropped_and_narrowed_model(tmp_path):
    """A model with a block removed and channels pruned is saved with ModelSpec.dropped and loads to the same outputs;
    a checkpoint without removed blocks has no 'dropped' entry."""
    from ccpcsa.surgery.prune import ChannelPruner

    model = _resnet20()
    drop_blocks(model, ["layer1.1"])
    pruner = ChannelPruner(model, 32, 8, 8, 0.9)
    pruner.apply({key: list(range(8)) for key in list(pruner.widths())[:2]})
    spec = ModelSpec("resnet20", 10, dropped=["layer1.1"])
    path = save_checkpoint(tmp_path / "slim.pt", model, spec, [str(i) for i in range(10)], [0.5] * 3, [0.25] * 3)
    ck = load_checkpoint(path)
    assert ck.spec.dropped == ["layer1.1"] and isinstance(ck.model.layer1[1], nn.Identity)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ck.model(x), model(x), atol=1e-6)
    assert "dropped" not in ModelSpec("resnet20", 10).to_dict()


@pytest.mark.parametrize("pruner", ["ccpcsa", "torch-pruning"])
def test_the_loop_removes_blocks_first_and_counts_them_toward_the_target(synthetic_data, pruner):
    """run_pruning with drop_blocks, with this product's pruner and with the Torch-Pruning reference (the frontier's
    anchor at the default's depth): the block is gone in the result, the MACs reduction vs the unpruned model includes
    it, and the channel step only takes the rest of the target."""
    from ccpcsa.criteria import get_criterion
    from ccpcsa.pruning.loop import PruneConfig, run_pruning
    from ccpcsa.training.engine import TrainConfig

    model = _resnet20().train()
    base = count_complexity(model).macs
    cfg = PruneConfig.of(criterion__name="l1", target__flops_reduction=0.2, steps__flops_reduction=0.2, steps__max_iterations=1, steps__tolerance=100.0,
                      widths__round_to=8, widths__min_channels=8, recovery__finetune_epochs=0, recovery__final_finetune_epochs=1, depth__drop_blocks=["layer3.1"],
                      steps__pruner=pruner)
    res = run_pruning(model, synthetic_data, get_criterion("l1"), cfg, TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=2),
                      input_size=synthetic_data.input_size, progress=False)
    drop_share = 2 * 64 * 64 * 9 * 8 * 8 / base  # layer3.1: two 64→64 3×3 convs at 8×8
    summary = res.summary()
    assert summary["dropped_blocks"] == ["layer3.1"] and isinstance(res.model.layer3[1], nn.Identity)
    assert 0.2 <= summary["flops_reduction"] < 0.2 + drop_share  # the channel step took the rest only
    assert res.iterations == 1


def test_drop_blocks_key_and_its_errors():
    from pipeline.config import load_config

    cfg = load_config(SMOKE, ["prune.depth.drop_blocks=[block]"])
    assert cfg.prune.depth.drop_blocks == ["block"]
    with pytest.raises(UserError, match=r"prune.depth.drop_blocks must be a list of module names \(e.g. \[layer1.1\]\), \[\] or auto, got 'block'"):
        load_config(SMOKE, ["prune.depth.drop_blocks=block"])
    with pytest.raises(UserError, match="config key prune.depth.drop_blocks must be a string, got"):
        load_config(SMOKE, ["prune.depth.drop_blocks=[[1]]"])
    # the reference pruner cuts channels after the same depth surgery (the frontier's anchor at the default's depth)
    assert load_config(SMOKE, ["prune.depth.drop_blocks=[block]", "prune.steps.pruner=torch-pruning"]).prune.depth.drop_blocks == ["block"]


def test_pipeline_drops_a_block_exports_it_and_a_bad_name_stops_the_stage(tmp_path, capsys):
    """The smoke pipeline on tiny_resnet (tiny_net whose block holds its residual add; BAM attached) with
    prune.depth.drop_blocks=[block]: the stage says so, the manifest and the checkpoint record it, the report names it, and the
    ONNX graph has one conv fewer; a bad name ends the run with one line, exit 1."""
    import onnx

    run_dir = tmp_path / "run"
    rc = main(["run", "--config", SMOKE, "--run-dir", str(run_dir), "--no-progress", "--until", "report",
               "--set", "model.name=deploy_tests.byo_model:tiny_resnet", "--set", "prune.depth.drop_blocks=[block]",
               "--set", "prune.recovery.remove_attention=true"])
    assert rc == 0
    assert "removed 1 block(s) whole (block)" in capsys.readouterr().out
    prune = json.loads((run_dir / "manifest.json").read_text())["stages"]["prune"]["metrics"]
    assert prune["dropped_blocks"] == ["block"]
    assert set(prune["channels_before"]) - set(prune["channels_after"]) == {"block.0"}  # BAM-free names on both sides
    assert "Removed whole (`prune.depth.drop_blocks`): `block`." in (run_dir / "report.md").read_text()
    assert load_checkpoint(run_dir / "pruned.pt").spec.dropped == ["block"]
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(run_dir / "model.onnx")).graph.node)
    assert convs == 3  # tiny_resnet's stem, down and head; its block's conv is gone
    bad = tmp_path / "bad"
    rc = main(["run", "--config", SMOKE, "--run-dir", str(bad), "--no-progress", "--until", "prune",
               "--set", "prune.depth.drop_blocks=[blok]"])
    err = capsys.readouterr().err
    assert rc != 0 and "the model has no module 'blok'" in err and "Traceback" not in err


def test_candidates_are_shape_keeping_blocks_that_carry_their_skip():
    """resnet20: every block but the two strided ones (layer2.0, layer3.0), BAM or not (layer2.2 is then a BAM wrapper
    whose body is the block); tiny_net: none (its block's residual add is in the model's forward); mobilenet_v2: the
    inverted residuals with a skip, not their inner depthwise convs (shape-keeping, no skip)."""
    from ccpcsa.models.depth import candidate_blocks

    want = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    model = _resnet20()
    assert candidate_blocks(model) == want
    attach_bam(model, input_size=32)
    assert candidate_blocks(model) == want
    assert candidate_blocks(build_model("deploy_tests.byo_model:tiny_net", 10)) == []
    assert candidate_blocks(build_model("mobilenet_v2", 10)) == [
        "features.3", "features.5", "features.6", "features.8", "features.9", "features.10", "features.12",
        "features.13", "features.15", "features.16"]


def test_the_skip_test_tells_a_residual_block_from_a_branch_or_a_plain_stack():
    """carries_its_skip: a resnet20 block and an inverted residual (no ReLU after the add) return their input at zero
    weights; a plain conv-BN-ReLU stack and a depthwise conv of the same shape do not; the module is left as it was."""
    from ccpcsa.models.depth import carries_its_skip

    block = _resnet20().layer1[1]
    before = {k: v.clone() for k, v in block.state_dict().items()}
    assert carries_its_skip(block, (1, 16, 32, 32))
    assert all(torch.equal(v, before[k]) for k, v in block.state_dict().items())
    inverted = build_model("mobilenet_v2", 10).features[3]
    assert carries_its_skip(inverted, (1, 24, 8, 8))
    assert not carries_its_skip(inverted.conv[1], (1, 144, 8, 8))  # its depthwise conv-BN-ReLU6: same shape, no skip
    stack = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    assert not carries_its_skip(stack, (1, 16, 8, 8))


def test_a_branch_whose_add_is_in_the_parent_is_refused_and_one_that_holds_its_add_is_removed():
    """tiny_net computes relu(x + block(x)) in its own forward: an identity for block would give relu(2x), so
    drop_blocks refuses it in one line and leaves the model whole; tiny_resnet holds the same add inside block (same
    weights), and without block it computes head(down(stem(x)))."""
    net = build_model("deploy_tests.byo_model:tiny_net", 10).eval()
    keys = list(net.state_dict())
    with pytest.raises(UserError) as err:
        drop_blocks(net, ["block"])
    assert "block does not carry its own skip connection" in str(err.value) and "\n" not in str(err.value)
    assert list(net.state_dict()) == keys and not isinstance(net.block, nn.Identity)
    res = build_model("deploy_tests.byo_model:tiny_resnet", 10).eval()
    res.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(res(x), net(x), atol=1e-6)
        want = res.fc(res.pool(res.head(res.down(res.stem(x)))).flatten(1))
        assert drop_blocks(res, ["block"]) == ["block"]
        assert torch.allclose(res(x), want)


def _block_drop(tmp_path: Path, *args: str) -> dict:
    """Run ``python -m bench.block_drop`` on a random resnet20 checkpoint and synthetic data; return its --out JSON."""
    import subprocess
    import sys

    ck = save_checkpoint(tmp_path / "r20.pt", _resnet20(), ModelSpec("resnet20", 10), [str(i) for i in range(10)],
                         [0.5] * 3, [0.25] * 3)
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "bench.block_drop", "--checkpoint", str(ck), "--data", "synthetic",
                           "--threads", "1", "--out", str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_block_drop_probe_ranks_every_candidate(tmp_path):
    """bench.block_drop on a resnet20 checkpoint and synthetic data: one row per candidate with its MACs share (11–12 %)
    and a finite val accuracy, written atomically to --out."""
    rows = _block_drop(tmp_path, "--recalibrate", "64")["blocks"]
    assert [r["block"] for r in rows] == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    assert all(0.11 < r["macs_share"] < 0.12 and 0 <= r["val_accuracy"] <= 100 for r in rows)


def test_block_drop_variants_time_the_shapes_a_deploy_makes(tmp_path):
    """--variants layer1.1@0.3 on synthetic data: one row, the block removed and channels cut to −30 % MACs (±3 %), FP32
    and INT8 speedups at batch 1 and 32 measured (positive, with an SE)."""
    (row,) = _block_drop(tmp_path, "--variants", "layer1.1@0.3")["variants"]
    assert row["variant"] == "layer1.1@0.3" and 0.27 <= row["macs_reduction"] <= 0.33
    for fmt in ("fp32", "int8"):
        assert all(row["speedup"][fmt][b] > 0 and row["speedup"][fmt][f"{b}_se"] >= 0 for b in ("1", "32"))
