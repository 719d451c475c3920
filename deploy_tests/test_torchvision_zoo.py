"""torchvision's classification zoo (and timm) end to end: issue "Real users' architectures".

- the loader: torchvision 0.28 and timm import on this CPU torch (``ccpcsa/models/torchvision_zoo.py``) and every
  architecture of the issue (and the 5 timm families) builds through ``model.name: torchvision.models:NAME``;
- the pruner on the hard parts, checked exactly as ``test_byo_battery.py`` does (the channels a plan removes are first
  silenced, then removed: the logits must not move): SE blocks, channel shuffle, LayerNorm over channels, concat
  branches, grouped convs, a conv classifier;
- the whole ``pipeline run`` chain (baseline from a torchvision state_dict → prune to −30 % MACs → ONNX → simplified →
  both INT8 flavours → validate → report → bundle) for a representative subset on 32×32 synthetic images: every
  stage ok, ≥ 25 % MACs removed, ONNX parity ≤ 1e-3 of the logit scale, the parts left whole named in one line;
- a forward torch-pruning cannot trace: one ``error:`` line naming the module.

The whole zoo (15 torchvision + 5 timm architectures at 64×64) is ``python -m bench.torchvision_zoo`` (bench/README.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bench.torchvision_zoo import CONFIG, pipeline_args, save_user_weights, surgery_check
from ccpcsa.models import build_model
from ccpcsa.models.torchvision_zoo import LOADER_NOTE, TIMM_ZOO, TORCHVISION_ZOO, import_third_party
from ccpcsa.surgery.depgraph import reshape_keeps_channels
from pipeline.__main__ import main as pipeline_main

TV = "torchvision.models"
SPEC = "synthetic?size=32&train=96&test=48"
#: the chain on 32×32 images with a few images and steps per stage (configs/torchvision_zoo.yaml otherwise)
TINY = ("--set", f"data.spec={SPEC}", "--set", "train.batch_size=16", "--set", "train.max_steps_per_epoch=2",
        "--set", "prune.criterion.calibration_images=16", "--set", "export.calibration_images=16", "--set", "checks.eval_images=48",
        "--set", "checks.final_eval_images=48", "--set", "export.latency_iters=1", "--set", "export.latency_warmup=0",
        "--set", "run.threads=1", "--set", "export.threads=1")
#: the representative subset: SE + hard-swish + depthwise (mobilenet_v3), channel shuffle (shufflenet), fire-module
#: concats and a conv classifier (squeezenet), LayerNorm over channels + layer scale (timm's ConvNeXt)
CHAIN = {
    "mobilenet_v3_small": (f"{TV}:mobilenet_v3_small", {"weights": None, "width_mult": 0.5}),
    "shufflenet_v2_x0_5": (f"{TV}:shufflenet_v2_x0_5", {"weights": None}),
    "squeezenet1_1": (f"{TV}:squeezenet1_1", {"weights": None}),
    "timm-convnext_atto": ("timm:create_model", {"model_name": "convnext_atto", "pretrained": False}),
}
#: what each of them must leave whole, and why (a word of the pruner's reason); absent: nothing
LEFT_WHOLE = {"shufflenet_v2_x0_5": "channel shuffle", "timm-convnext_atto": "LayerNorm"}


def _manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())["stages"]


# ---------------------------------------------------------------------------------------------
# the loader


def test_torchvision_and_timm_import_on_the_cpu_torch() -> None:
    models = import_third_party("torchvision.models")
    import torchvision

    assert torchvision.__version__.startswith("0.28.") and callable(models.resnet18)
    if torchvision.extension._has_ops():  # a build matching this torch: nothing to work around
        assert LOADER_NOTE == ""
    else:  # the registry's CUDA wheel on the CPU torch: the models, not the C++ ops, and one line that says so
        from ccpcsa.models import torchvision_zoo

        assert "C++ ops do not load" in torchvision_zoo.LOADER_NOTE and "\n" not in torchvision_zoo.LOADER_NOTE
        with pytest.raises(RuntimeError, match=r"Couldn't load custom C\+\+ ops"):
            torchvision.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)
    timm = import_third_party("timm")
    assert timm.__version__.startswith("1.")


@pytest.mark.parametrize("name", list(TORCHVISION_ZOO) + [f"timm/{n}" for n in TIMM_ZOO])
def test_every_architecture_builds_through_the_registry(name: str) -> None:
    timm = name.startswith("timm/")
    spec, kwargs = ("timm:create_model", TIMM_ZOO[name[5:]]) if timm else (f"{TV}:{name}", TORCHVISION_ZOO[name])
    model = build_model(spec, 10, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    if not timm:  # torchvision's own module: its state_dict keys are the ones users' files have
        assert type(model).__module__.startswith("torchvision.models.")


def test_reshape_rules() -> None:
    assert not reshape_keeps_channels((1, 116, 8, 8), (1, 2, 58, 8, 8))  # channel shuffle, first view
    assert not reshape_keeps_channels((1, 58, 2, 8, 8), (1, 116, 8, 8))  # … and the one after the transpose
    assert reshape_keeps_channels((1, 512, 7, 7), (1, 25088))  # flatten before a Linear
    assert reshape_keeps_channels((1, 16, 16, 96), (256, 96))  # F.linear over a channels-last tensor
    assert reshape_keeps_channels((320,), (1, 320, 1, 1))  # a per-channel layer scale
    assert reshape_keeps_channels((1, 64, 8, 8), (1, 64, 64))  # spatial dims merged


# ---------------------------------------------------------------------------------------------
# the surgery, exactly


EXACT = {
    "mobilenet_v3_small": (f"{TV}:mobilenet_v3_small", {"weights": None, "width_mult": 0.5}, ""),
    "shufflenet_v2_x0_5": (f"{TV}:shufflenet_v2_x0_5", {"weights": None}, "channel shuffle"),
    "squeezenet1_1": (f"{TV}:squeezenet1_1", {"weights": None}, ""),
    "regnet_y_400mf": (f"{TV}:regnet_y_400mf", {"weights": None}, ""),
    "googlenet": (f"{TV}:googlenet", TORCHVISION_ZOO["googlenet"], ""),
    "timm-convnext_atto": ("timm:create_model", {"model_name": "convnext_atto"}, "LayerNorm"),
}


@pytest.mark.parametrize("name", list(EXACT))
def test_surgery_is_exact_and_unprunable_parts_are_named(name: str) -> None:
    """SE + depthwise, channel shuffle, fire concats + conv classifier, SE + grouped convs, inception concats, LayerNorm
    over channels. (DenseNet-121's 62 concats and the rest of the zoo: ``bench.torchvision_zoo``'s "surgery" column.)"""
    spec, kwargs, whole = EXACT[name]
    r = surgery_check(spec, kwargs, 32)
    if whole:
        assert r["left_whole"] and all(whole in why for why in r["left_whole"].values()), r["left_whole"]
    else:
        assert r["left_whole"] == {}
    assert 0.6 <= r["surgery_macs_ratio"] <= 0.7, r
    assert r["surgery_max_abs_diff"] <= 1e-5 * max(1.0, r["surgery_logit_scale"]), r  # removed channels carried exactly 0


# ---------------------------------------------------------------------------------------------
# the chain


@pytest.fixture(scope="module", params=list(CHAIN))
def chain_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """One architecture through ``pipeline run``: its weights trained 4 steps and saved as a state_dict, then the whole
    chain. Returns (name, run directory, the run's stdout)."""
    name = request.param
    model_name, kwargs = CHAIN[name]
    d = tmp_path_factory.mktemp(name)
    save_user_weights(model_name, kwargs, SPEC, d / "w.pth", train_steps=4)
    out = io.StringIO()  # module scope: capsys is function-scoped, so stdout is captured here
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.simplefilter("ignore")
        code = pipeline_main(pipeline_args(d / "run", model_name, kwargs, d / "w.pth", *TINY))
    assert code == 0, out.getvalue()[-2000:]
    return name, d / "run", out.getvalue()


def test_chain_completes_with_the_macs_removed(chain_run: tuple[str, Path, str]) -> None:
    name, run_dir, _ = chain_run
    stages = _manifest(run_dir)
    status = {k: v["status"] for k, v in stages.items()}
    assert status == {"baseline": "ok", "attention": "skipped", "prune": "ok", "onnx": "ok", "simplify": "ok", "int8": "ok",
                      "int8_cpu": "ok", "engine": "skipped", "validate": "ok", "report": "ok", "bundle": "ok"}, status
    assert stages["baseline"]["metrics"]["weights"]["source"] == "state_dict"
    prune = stages["prune"]["metrics"]
    assert prune["flops_reduction"] >= 0.25 and prune["final"]["macs"] < 0.75 * prune["base"]["macs"], prune["final"]
    report = json.loads((run_dir / "report.json").read_text())
    fmts = {f["name"]: f for f in report["formats"] if f["status"] == "ok"}
    assert {"pytorch_baseline", "pytorch_pruned", "onnx", "onnx_simplified", "int8", "int8_cpu"} <= set(fmts), name
    assert (run_dir / "bundle.tar.gz").stat().st_size > 0


def test_onnx_parity_relative_to_the_logit_scale(chain_run: tuple[str, Path, str]) -> None:
    _, run_dir, _ = chain_run
    stages = _manifest(run_dir)
    for stage in ("onnx", "simplify"):
        m = stages[stage]["metrics"]
        assert m["logit_scale"] > 0 and m["max_abs_diff"] <= 1e-3 * m["logit_scale"], (stage, m)
        assert m["top1_agreement"] >= 99.9
    for stage in ("int8", "int8_cpu"):  # gated as configured (checks.min_agreement_int8)
        check = {c["name"]: c for c in stages[stage]["checks"]}["top1_agreement"]
        assert check["passed"] and check["value"] >= check["threshold"], check


def test_parts_left_whole_are_named_in_one_line(chain_run: tuple[str, Path, str]) -> None:
    name, run_dir, out = chain_run
    left = _manifest(run_dir)["prune"]["metrics"]["left_whole"]
    lines = [ln for ln in out.splitlines() if ln.startswith("left whole:")]
    if name in LEFT_WHOLE:
        assert left and all(LEFT_WHOLE[name] in why for why in left.values()), left
        assert len(lines) == 1 and all(key in lines[0] for key in left), lines
        report_md = (run_dir / "report.md").read_text()
        assert "Left whole (cannot be pruned consistently)" in report_md
    else:
        assert left == {} and lines == []


def test_untraceable_forward_is_one_error_line_naming_the_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = "deploy_tests.tv_untraceable:resnet18_numpy_round_trip"
    torch.manual_seed(0)
    torch.save(build_model(spec, 10).state_dict(), tmp_path / "w.pth")
    code = pipeline_main(["run", "--config", str(CONFIG), "--run-dir", str(tmp_path / "run"), "--no-progress",
                          "--set", f"model.name={spec}", "--set", "model.kwargs={}",
                          "--set", f"baseline.checkpoint={tmp_path / 'w.pth'}", *TINY])
    captured = capsys.readouterr()
    errors = [ln for ln in (captured.out + captured.err).splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1, captured.err[-2000:]
    assert "cannot trace" in errors[0] and "'layer1.0.1.bn2' (BatchNorm2d)" in errors[0] and "autograd" in errors[0]
    assert "Traceback" not in captured.err
    stages = _manifest(tmp_path / "run")
    assert stages["baseline"]["status"] == "ok" and stages["prune"]["status"] == "failed"


def test_checkpoint_rebuilds_a_bias_added_by_compensation(tmp_path: Path) -> None:
    """Weight compensation adds a bias to a consumer with neither bias nor BN after it (DenseNet's pre-activation
    convs): the pruned checkpoint must rebuild that bias, or every stage after prune fails to load it."""
    from ccpcsa.io.checkpoint import ModelSpec, load_checkpoint, save_checkpoint

    spec = f"{TV}:resnet18"
    torch.manual_seed(0)
    model = build_model(spec, 10, weights=None).eval()
    assert model.layer2[0].conv1.bias is None  # torchvision builds it without: compensation's bias comes on top
    model.layer2[0].conv1.bias = nn.Parameter(torch.randn(128))
    save_checkpoint(tmp_path / "p.pt", model, ModelSpec(spec, 10, 32, {"weights": None}))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "p.pt").model(x), model(x))
