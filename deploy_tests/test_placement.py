"""Placement (issue 14): one helper decides where models live; every entry point uses it; GPU-speed plumbing.

On a CPU-only machine "another device" is simulated honestly by a model handed over in float64: its
forward on the float32 batches every entry point produces fails exactly like the CUDA/CPU mismatch of the
issue (``Input type ... and bias type ... should be the same``) unless the entry point places the model.
Tests marked ``cuda`` repeat the real thing on a GPU (skipped here). The GPU-speed plumbing (resident loader,
compile, deferred loss checks): :mod:`deploy_tests.test_gpu_speed`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ccpcsa import placement
from ccpcsa.data import BatchLoader, load_data
from ccpcsa.training.engine import evaluate, fit, predict_logits
from deploy_tests.placement_helpers import _cfg, _tiny

SPEC_NAME = "deploy_tests.byo_model:tiny_net"



@pytest.fixture(scope="module")
def data():
    return load_data("synthetic?size=16&train=256&test=64", seed=0, progress=False)


# ------------------------------------------------------------------------------------------------ the helper
def test_place_fixes_dtype_in_place_and_keeps_parameter_identity():
    model = _tiny(torch.float64)
    params = list(model.parameters())
    assert not placement.is_placed(model, "cpu")
    assert placement.place(model, "cpu") is model
    assert placement.is_placed(model, "cpu") and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))  # optimizers/hooks stay valid
    assert model.stem[1].num_batches_tracked.dtype == torch.int64  # integer buffers keep their dtype


def test_place_is_a_noop_when_already_placed(monkeypatch):
    model = _tiny()
    monkeypatch.setattr(model, "to", lambda *a, **k: pytest.fail("place moved a model that was already placed"))
    placement.place(model, "cpu")
    placement.place(model)


def test_module_device_dtype_and_example_input():
    model = _tiny(torch.float64)
    assert placement.module_device(model) == torch.device("cpu") and placement.module_dtype(model) == torch.float64
    x = placement.example_input(model, 16)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float64
    assert placement.module_device(nn.ReLU()) == torch.device("cpu") and placement.module_dtype(nn.ReLU()) == torch.float32
    y = placement.inputs_for(model, torch.zeros(2, 3, 16, 16))
    assert y.dtype == torch.float64 and placement.inputs_for(model, torch.zeros(2, dtype=torch.long)).dtype == torch.long


def test_resolve_device_lives_in_placement_and_is_reexported():
    from ccpcsa.training.distributed import resolve_device

    assert resolve_device is placement.resolve_device
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda:1" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", local_rank=1) == torch.device(expected)


def test_cpu_copy_leaves_the_original_where_it_is():
    model = _tiny(torch.float64)
    copy = placement.cpu_copy(model)
    assert copy is not model and placement.is_placed(copy, "cpu") and placement.module_dtype(model) == torch.float64
    plain = _tiny()
    assert placement.cpu_copy(plain) is plain


# ------------------------------------------------------------------------------------- entry points, by behaviour
def test_a_misplaced_model_really_crashes_without_placement(data):
    """The scenario the other tests rely on is a real failure, not a no-op."""
    x, _ = next(iter(BatchLoader(data.test, 8, data.mean, data.std)))
    with pytest.raises(RuntimeError, match="should be the same|expected .*(Double|Float)|dtype"):
        _tiny(torch.float64)(x)


def test_evaluate_and_predict_move_a_model_handed_over_elsewhere(data):
    ref_acc, ref_loss = evaluate(_tiny(), data.test, data.mean, data.std)
    ref_logits = predict_logits(_tiny(), data.test.images, data.mean, data.std, batch_size=16)
    model = _tiny(torch.float64)
    acc, loss = evaluate(model, data.test, data.mean, data.std, device="cpu")
    assert acc == ref_acc and loss == pytest.approx(ref_loss, rel=1e-6)
    assert placement.module_dtype(model) == torch.float32
    logits = predict_logits(_tiny(torch.float64), data.test.images, data.mean, data.std, batch_size=16, device="cpu")
    assert logits.shape == (64, 10) and np.allclose(logits, ref_logits, atol=1e-5)


def test_fit_trains_a_model_handed_over_elsewhere_like_a_placed_one(data):
    a, b = _tiny(), _tiny(torch.float64)
    ra = fit(a, data, _cfg(), device="cpu", progress=False)
    rb = fit(b, data, _cfg(), device="cpu", progress=False)
    assert placement.is_placed(b, "cpu")
    assert ra.history[0]["train_loss"] == pytest.approx(rb.history[0]["train_loss"], rel=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5)


def test_pruner_and_mac_count_trace_on_the_models_own_device_and_dtype():
    from ccpcsa.models import count_complexity
    from ccpcsa.surgery.prune import ChannelPruner

    ref = count_complexity(_tiny(), 16)
    model = _tiny(torch.float64)
    assert count_complexity(model, 16) == ref  # traced with a float64 example, no crash
    assert len(ChannelPruner(model, 16, round_to=2, min_channels=2).groups) == len(ChannelPruner(_tiny(), 16).groups) > 0


def test_statistics_hooks_place_the_model_before_recording(data):
    from ccpcsa.criteria.stats import ChannelStatsCollector

    model = _tiny(torch.float64)
    x, _ = next(iter(BatchLoader(data.train, 16, data.mean, data.std)))
    with ChannelStatsCollector(model, ["stem.1"], training_only=False) as col, torch.no_grad():
        model(x)
    m = col.stats.moments["stem.1"]
    assert m.n == 16 * 16 * 16 and m.redundancy().shape == (8,)


def test_qsfm_oneshot_scores_and_compensates_a_model_handed_over_elsewhere(data):
    from ccpcsa.pruning.oneshot_prune import prune_oneshot

    r = prune_oneshot(_tiny(torch.float64), data, "qsfm-psnr", 0.3, input_size=16, calibration_images=32, round_to=2,
                      min_channels=2, device="cpu", batch_size=16)
    assert r.final.macs <= 0.7 * r.base.macs * 1.0005
    assert r.compensation is not None and r.compensation.compensated
    assert placement.module_dtype(r.model) == torch.float32 and 0 <= r.test_pruned <= 100


def test_checkpoint_loads_where_asked(tmp_path, data):
    from ccpcsa.io.checkpoint import ModelSpec, load_checkpoint, save_checkpoint

    model = _tiny(torch.float64)
    save_checkpoint(tmp_path / "m.pt", placement.place(model, "cpu"), ModelSpec(SPEC_NAME, 10, 16, {"width": 8}),
                    data.classes, data.mean, data.std)
    ck = load_checkpoint(tmp_path / "m.pt", device="cpu")
    assert placement.is_placed(ck.model, "cpu") and not ck.model.training
    assert placement.module_device(load_checkpoint(tmp_path / "m.pt").model) == torch.device("cpu")  # default: cpu


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_uses_a_cpu_float32_copy(tmp_path, data):
    ort = pytest.importorskip("onnxruntime")
    from export.metadata import DeployMetadata
    from export.onnx_export import export_onnx

    model = _tiny(torch.float64).eval()
    res = export_onnx(model, tmp_path / "m.onnx", DeployMetadata(data.classes, data.mean, data.std, 16))
    assert placement.module_dtype(model) == torch.float64  # the caller's model was not moved or cast
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    out = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x).double()).numpy()
    assert np.abs(out - ref).max() < 1e-4


def test_torch_runner_places_its_model():
    from export.runtime import TorchRunner

    r = TorchRunner(_tiny(torch.float64), input_size=16)
    assert r.run(np.zeros((2, 3, 16, 16), np.float32)).shape == (2, 10)


# ---------------------------------------------------------------------------------- one helper decides placement
@pytest.fixture
def place_calls(monkeypatch):
    calls: list[str] = []
    real = placement.place

    def recording(model, device=None, dtype=torch.float32):
        calls.append(type(model).__name__)
        return real(model, device, dtype)

    monkeypatch.setattr(placement, "place", recording)
    return calls


def _entry_points(data, tmp_path):
    from ccpcsa.criteria.stats import ChannelStatsCollector
    from ccpcsa.io.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
    from export.metadata import DeployMetadata
    from export.onnx_export import export_onnx
    from export.runtime import TorchRunner

    spec = ModelSpec(SPEC_NAME, 10, 16, {"width": 8})
    save_checkpoint(tmp_path / "c.pt", _tiny(), spec, data.classes, data.mean, data.std)

    def stats() -> None:
        with ChannelStatsCollector(_tiny(), ["stem.1"]):
            pass

    return {
        "evaluate": lambda: evaluate(_tiny(), data.test, data.mean, data.std),
        "predict_logits": lambda: predict_logits(_tiny(), data.test.images[:8], data.mean, data.std),
        "fit": lambda: fit(_tiny(), data, _cfg(max_steps_per_epoch=1), progress=False),
        "statistics hooks": stats,
        "load_checkpoint": lambda: load_checkpoint(tmp_path / "c.pt", device="cpu"),
        "export_onnx": lambda: export_onnx(_tiny(torch.float64), tmp_path / "e.onnx", DeployMetadata(data.classes, data.mean, data.std, 16)),
        "TorchRunner": lambda: TorchRunner(_tiny(), input_size=16),
    }


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_every_entry_point_goes_through_the_one_placement_helper(place_calls, data, tmp_path):
    for name, call in _entry_points(data, tmp_path).items():
        place_calls.clear()
        call()
        assert place_calls, f"{name} did not call ccpcsa.placement.place"


def test_pruning_loop_and_oneshot_call_the_helper(place_calls, data):
    from ccpcsa.criteria import get_criterion
    from ccpcsa.pruning.loop import PruneConfig, run_pruning
    from ccpcsa.pruning.oneshot_prune import prune_oneshot

    prune_oneshot(_tiny(), data, "l1", 0.2, input_size=16, calibration_images=16, round_to=2, min_channels=2,
                  evaluate_splits=False)
    assert place_calls and place_calls[0] == "TinyNet"
    place_calls.clear()
    cfg = PruneConfig.of(target__flops_reduction=0.2, steps__max_iterations=1, widths__round_to=2, widths__min_channels=2, recovery__finetune_epochs=0,
                      recovery__final_finetune_epochs=0, steps__tolerance=100.0, criterion__calibration_images=16)
    run_pruning(_tiny(), data, get_criterion("l1"), cfg, _cfg(max_steps_per_epoch=1), input_size=16, progress=False)
    assert place_calls and place_calls[0] == "TinyNet"


# ------------------------------------------------------------------------------------------- validate's GPU rows
def test_cuda_rows_plumbing_without_a_gpu(tmp_path, data):
    """The GPU rows' code path on a CPU: the eager row runs, the CUDA-graph row fails with its reason, the
    onnxruntime-CUDA row is skipped naming the providers (onnxruntime here has only the CPU provider)."""
    pytest.importorskip("onnxruntime")
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU behaviour")
    from ccpcsa.data import normalize_batch
    from ccpcsa.io.checkpoint import ModelSpec, save_checkpoint
    from export.metadata import DeployMetadata
    from export.onnx_export import export_onnx
    from pipeline.gpu_latency import cuda_rows

    model = _tiny().eval()
    save_checkpoint(tmp_path / "pruned.pt", model, ModelSpec(SPEC_NAME, 10, 16, {"width": 8}), data.classes, data.mean, data.std)
    onnx = export_onnx(model, tmp_path / "m.onnx", DeployMetadata(data.classes, data.mean, data.std, 16)).path
    x = normalize_batch(data.test.images, data.mean, data.std).numpy()
    lat = {"latency_ms": {"1": {"p50": 1.0, "p95": 1.0}}, "images_per_s": {"1": 1000.0}}
    rows = cuda_rows(tmp_path / "pruned.pt", onnx, torch.device("cpu"), 16, x, lambda r: lat,
                     lambda r: {"accuracy": 50.0}, 10, 20)
    assert rows["pytorch_pruned_cuda"]["status"] == "ok" and rows["pytorch_pruned_cuda"]["max_abs_diff"] < 1e-5
    assert rows["pytorch_pruned_cuda"]["top1_agreement"] == 100.0 and rows["pytorch_pruned_cuda"]["latency_ms"] == lat["latency_ms"]
    assert rows["pytorch_pruned_cuda_graph"]["status"] == "failed" and "CUDA GPU" in rows["pytorch_pruned_cuda_graph"]["reason"]
    assert rows["onnx_cuda"]["status"] == "skipped" and "CPUExecutionProvider" in rows["onnx_cuda"]["reason"]


# ------------------------------------------------------------------------------------------------------ on a GPU
@pytest.mark.cuda
def test_cuda_evaluate_fit_and_predict_move_a_cpu_model(data):
    """The issue's crash: a checkpoint's CPU model evaluated on CUDA."""
    ref = evaluate(_tiny(), data.test, data.mean, data.std, device="cpu")
    model = _tiny()
    acc, loss = evaluate(model, data.test, data.mean, data.std, device="cuda")
    assert placement.module_device(model).type == "cuda"
    assert abs(acc - ref[0]) <= 100 / len(data.test) * 2 and loss == pytest.approx(ref[1], abs=1e-2)
    assert predict_logits(placement.place(model, "cpu"), data.test.images, data.mean, data.std, device="cuda").shape == (64, 10)
    r = fit(placement.place(model, "cpu"), data, _cfg(), device="cuda", progress=False)
    assert r.speed["resident_data"] is True and r.speed["check_every"] > 1 and np.isfinite(r.history[0]["train_loss"])


@pytest.mark.cuda
def test_cuda_checkpoint_load_pruner_macs_and_onnx_export(tmp_path, data):
    from ccpcsa.io.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
    from ccpcsa.models import count_complexity
    from ccpcsa.surgery.prune import ChannelPruner
    from export.metadata import DeployMetadata
    from export.onnx_export import export_onnx

    model = placement.place(_tiny(), "cuda")
    save_checkpoint(tmp_path / "m.pt", model, ModelSpec(SPEC_NAME, 10, 16, {"width": 8}), data.classes, data.mean, data.std)
    assert all(v.device.type == "cpu" for v in torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"].values())
    ck = load_checkpoint(tmp_path / "m.pt", device="cuda")
    assert placement.module_device(ck.model).type == "cuda"
    assert count_complexity(ck.model, 16) == count_complexity(_tiny(), 16)
    assert ChannelPruner(ck.model, 16, round_to=2, min_channels=2).groups
    res = export_onnx(ck.model, tmp_path / "m.onnx", DeployMetadata(data.classes, data.mean, data.std, 16))
    assert placement.module_device(ck.model).type == "cuda" and res.path.exists()


@pytest.mark.cuda
def test_cuda_qsfm_oneshot_and_pruning_loop(data):
    from ccpcsa.criteria import get_criterion
    from ccpcsa.pruning.loop import PruneConfig, run_pruning
    from ccpcsa.pruning.oneshot_prune import prune_oneshot

    r = prune_oneshot(_tiny(), data, "qsfm-psnr", 0.3, input_size=16, calibration_images=32, round_to=2, min_channels=2,
                      device="cuda", batch_size=16)
    assert placement.module_device(r.model).type == "cuda" and r.compensation is not None and r.compensation.compensated
    cfg = PruneConfig.of(target__flops_reduction=0.2, steps__max_iterations=1, widths__round_to=2, widths__min_channels=2, recovery__finetune_epochs=0,
                      recovery__final_finetune_epochs=0, steps__tolerance=100.0, criterion__calibration_images=16)
    res = run_pruning(_tiny(), data, get_criterion("ccpcsa"), cfg, _cfg(max_steps_per_epoch=2), input_size=16, device="cuda",
                      progress=False)
    assert placement.module_device(res.model).type == "cuda" and res.final.macs < res.base.macs


@pytest.mark.cuda
def test_cuda_graph_runner_equals_eager():
    from export.runtime import TorchCudaGraphRunner, TorchRunner

    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    eager = TorchRunner(_tiny(), input_size=16, device="cuda").run(x)
    graph = TorchCudaGraphRunner(_tiny(), input_size=16)
    assert np.abs(graph.run(x) - eager).max() < 1e-5 and np.abs(graph.run(x[:1]) - eager[:1]).max() < 1e-5
