"""ONNX export, metadata and simplification: parity with PyTorch, dynamic batch, bad input."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch_pruning as tp
from torch import nn

from ccpcsa.errors import UserError
from ccpcsa.models import build_model
from export.metadata import DeployMetadata, config_hash, get_props, read_metadata
from export.onnx_export import export_onnx
from export.onnx_io import load_onnx
from export.runtime import OrtRunner, TorchRunner
from export.simplify import simplify_onnx

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TOL = 1e-4


def make_metadata(num_classes: int = 10) -> DeployMetadata:
    return DeployMetadata(
        class_names=CLASSES[:num_classes] if num_classes <= 10 else [f"c{i}" for i in range(num_classes)],
        mean=[0.4914, 0.4822, 0.4465],
        std=[0.2470, 0.2435, 0.2616],
        input_size=32,
        run_id="test-run-001",
        config_hash=config_hash({"model": "resnet20", "lr": 0.1}),
    )


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics so logits are O(1) and parity is meaningful."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


class TinyBAM(nn.Module):
    """Stand-in for the BAM block: channel MLP + dilated spatial branch, ``x + x * sigmoid(mc + ms)``."""

    def __init__(self, channels: int, reduction: int = 4, dilation: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.spatial = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mc = self.mlp(torch.flatten(self.pool(x), 1))[:, :, None, None]  # (N, C, 1, 1)
        ms = self.spatial(x)  # (N, 1, H, W)
        return x + x * torch.sigmoid(mc + ms)  # broadcasts to (N, C, H, W)


def resnet20() -> nn.Module:
    return randomize_bn(build_model("resnet20", num_classes=10))


def mobilenet() -> nn.Module:
    return randomize_bn(build_model("mobilenet_v2_cifar", num_classes=10))


def pruned_resnet20() -> nn.Module:
    model = build_model("resnet20", num_classes=10).eval()
    example = torch.randn(1, 3, 32, 32)
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5, ignored_layers=[model.fc]
    )
    pruner.step()
    return randomize_bn(model)


def resnet20_bam() -> nn.Module:
    model = build_model("resnet20", num_classes=10)
    model.layer1 = nn.Sequential(model.get_submodule("layer1"), TinyBAM(16))
    model.layer2 = nn.Sequential(model.get_submodule("layer2"), TinyBAM(32))
    return randomize_bn(model, seed=1)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet20": resnet20,
    "mobilenet_v2_cifar": mobilenet,
    "resnet20_pruned50": pruned_resnet20,
    "resnet20_bam": resnet20_bam,
}


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


@pytest.mark.parametrize("name", list(MODELS))
def test_export_roundtrip_dynamic_batch_and_simplify(name: str, tmp_path: Path) -> None:
    model = MODELS[name]()
    if name == "resnet20_pruned50":  # the pruned model really is smaller
        conv1 = model.get_submodule("conv1")
        assert isinstance(conv1, nn.Conv2d) and conv1.out_channels < 16
    meta = make_metadata()
    res = export_onnx(model, tmp_path / f"{name}.onnx", meta)
    assert res.opset == 17 and res.exporter == "torchscript" and res.nodes > 0

    onnx_model = onnx.load(str(res.path))
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.shape_inference.infer_shapes(onnx_model, strict_mode=True)
    assert [i.name for i in onnx_model.graph.input] == ["input"]
    assert [o.name for o in onnx_model.graph.output] == ["logits"]
    assert onnx_model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch

    torch_runner = TorchRunner(model)
    ort_runner = OrtRunner(res.path, threads=1)
    for n in (1, 7):
        x = batch(n, seed=n)
        ref = torch_runner.run(x)
        out = ort_runner.run(x)
        assert out.shape == (n, 10)
        assert np.abs(out - ref).max() <= TOL, f"{name} batch {n}: max|Δlogit| {np.abs(out - ref).max():.2e}"

    sim = simplify_onnx(res.path, tmp_path / f"{name}.sim.onnx")
    assert sim.nodes_before == res.nodes
    assert sim.nodes_after <= sim.nodes_before
    sim_runner = OrtRunner(sim.path, threads=1)
    for n in (1, 7):
        x = batch(n, seed=10 + n)
        assert np.abs(sim_runner.run(x) - torch_runner.run(x)).max() <= TOL

    meta_sim = read_metadata(sim.path)
    meta_raw = read_metadata(res.path)
    for key in ("class_names", "mean", "std", "input_size", "channel_order", "layout", "run_id", "config_hash"):
        assert meta_sim[key] == meta_raw[key]
    assert meta_sim["stage"] == "simplified" and len(meta_sim["parent_sha256"]) == 64
    assert not any(k.startswith("onnxsim.") for k in meta_sim)


def test_metadata_is_self_describing(tmp_path: Path) -> None:
    meta = make_metadata()
    path = export_onnx(resnet20(), tmp_path / "m.onnx", meta).path
    md = read_metadata(path)
    assert md["class_names"] == CLASSES and md["num_classes"] == 10
    assert md["input_size"] == [32, 32] and md["input_shape"] == ["batch", 3, 32, 32]
    assert md["channel_order"] == "RGB" and md["layout"] == "NCHW" and md["pixel_scale"] == "1/255"
    assert md["mean"] == pytest.approx([0.4914, 0.4822, 0.4465]) and md["std"] == pytest.approx([0.2470, 0.2435, 0.2616])
    assert md["run_id"] == "test-run-001" and md["config_hash"] == meta.config_hash and len(meta.config_hash) == 64
    assert md["input_name"] == "input" and md["output_name"] == "logits" and md["precision"] == "fp32"
    # the raw props round-trip through the dataclass
    again = DeployMetadata.from_props(get_props(onnx.load(str(path))))
    assert again.class_names == tuple(CLASSES) and again.hw == (32, 32) and again.run_id == "test-run-001"


def test_opset_is_configurable(tmp_path: Path) -> None:
    res = export_onnx(resnet20(), tmp_path / "m13.onnx", make_metadata(), opset=13)
    assert res.opset == 13
    assert OrtRunner(res.path, threads=1).run(batch(2)).shape == (2, 10)


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="dynamo exporter needs onnxscript")
def test_dynamo_exporter_optional(tmp_path: Path) -> None:
    model = resnet20()
    res = export_onnx(model, tmp_path / "d.onnx", make_metadata(), opset=18, exporter="dynamo")
    x = batch(3)
    assert np.abs(OrtRunner(res.path, threads=1).run(x) - TorchRunner(model).run(x)).max() <= TOL


# ---------------------------------------------------------------------------------------------
# Bad input


class Unexportable(nn.Module):
    """Uses an operator the ONNX exporter does not support (linalg.svd)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.linalg.svd(x)[1].mean(2))


def one_line(exc: pytest.ExceptionInfo[UserError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def test_failed_export_is_one_line_and_keeps_previous_artifact(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "model.onnx"
    export_onnx(resnet20(), dest, make_metadata())
    good = dest.read_bytes()
    capfd.readouterr()
    with pytest.raises(UserError) as exc:
        export_onnx(Unexportable(), dest, make_metadata())
    msg = one_line(exc)
    assert "linalg_svd" in msg and "Unexportable" in msg
    assert dest.read_bytes() == good  # previous good artifact survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp file left behind
    out, err = capfd.readouterr()
    assert "Torch IR graph" not in out + err  # the exporter's IR dump is suppressed


def test_model_with_wrong_output_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        export_onnx(resnet20(), tmp_path / "m.onnx", make_metadata(num_classes=5))
    assert "num_classes=5" in one_line(exc)
    assert not (tmp_path / "m.onnx").exists()

    class Crashes(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(7, -1, 5)

    with pytest.raises(UserError) as exc:
        export_onnx(Crashes(), tmp_path / "m.onnx", make_metadata())
    assert "failed on an input of shape (2, 3, 32, 32)" in one_line(exc)


@pytest.mark.parametrize(
    ("kwargs", "needle"), [({"opset": 9}, "opset 9"), ({"exporter": "magic"}, "unknown ONNX exporter")]
)
def test_bad_export_arguments(tmp_path: Path, kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(UserError) as exc:
        export_onnx(resnet20(), tmp_path / "m.onnx", make_metadata(), **kwargs)  # type: ignore[arg-type]
    assert needle in one_line(exc)


@pytest.fixture(scope="module")
def good_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(resnet20(), tmp_path_factory.mktemp("good") / "good.onnx", make_metadata()).path


@pytest.mark.parametrize("kind", ["truncated", "not_onnx", "empty", "missing"])
def test_bad_onnx_files_are_one_line_errors(kind: str, good_onnx: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    if kind == "truncated":
        data = good_onnx.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "not_onnx":
        bad.write_text("this is a README, not a model\n")
    elif kind == "empty":
        bad.write_bytes(b"")
    for call in (load_onnx, read_metadata, lambda p: OrtRunner(p, threads=1)):
        with pytest.raises(UserError) as exc:
            call(bad)
        assert "bad.onnx" in one_line(exc)
    dest = tmp_path / "out.onnx"
    dest.write_bytes(b"previous")
    with pytest.raises(UserError):
        simplify_onnx(bad, dest)
    assert dest.read_bytes() == b"previous"


def test_read_metadata_requires_pipeline_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UserError) as exc:
        read_metadata(path)
    assert "no deployment metadata" in one_line(exc)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"class_names": []}, "class_names is empty"),
        ({"class_names": ["a", "a"]}, "duplicates"),
        ({"std": [0.2, 0.0, 0.2]}, "std"),
        ({"mean": [0.5, 0.5]}, "must match"),
        ({"channel_order": "RBG"}, "channel_order"),
    ],
)
def test_metadata_validation(kwargs: dict[str, object], needle: str) -> None:
    base: dict[str, object] = {"class_names": ["a", "b"], "mean": [0.5] * 3, "std": [0.25] * 3}
    with pytest.raises(UserError) as exc:
        DeployMetadata(**{**base, **kwargs})  # type: ignore[arg-type]
    assert needle in one_line(exc)
