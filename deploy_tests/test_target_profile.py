"""Target profiles (issue #36): the probe pack, ``target_probe.py`` on a runtime with numpy only, the profile the
pruner reads (alignment from the measured staircase, the calibrated latency estimate), and its bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ccpcsa.surgery.prune import ChannelPruner
from deploy_tests.bad_input_helpers import ROOT, SMOKE, TINY, cli_error, snapshot
from deploy_tests.byo_model import tiny_net
from export.edge.target_probe import BLOCKS, staircase_block
from export.target_profile import ProfileLatencyProbe, load_profile, write_probe_pack
from pipeline.config import load_config

PY = sys.executable


def test_the_staircase_says_the_block_a_runtime_pads_widths_to() -> None:
    widths = list(range(4, 65, 4))
    block16 = [10.0 * -(-w // 16) for w in widths]  # every width costs as much as the next multiple of 16
    block8 = [10.0 * -(-w // 8) for w in widths]
    smooth = [float(w) for w in widths]  # no padding: every channel costs
    assert staircase_block(widths, block16) == 16
    assert staircase_block(widths, block8) == 8
    assert staircase_block(widths, smooth) == 4  # the grid's step: no block to round to
    noisy = [v * (1 + 0.03 * np.sin(i)) for i, v in enumerate(block16)]
    assert staircase_block(widths, noisy) == 16
    assert 16 in BLOCKS and 8 in BLOCKS


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A probe pack of tiny_net (width 16, 32×32) measured by target_probe.py as a file, in a process where torch
    cannot be imported (the device has numpy and the runtime only), from another working directory."""
    torch.manual_seed(0)
    pack = write_probe_pack(tiny_net(10, 16), 32, tmp_path_factory.mktemp("pack"), name="tiny", batches=[1, 4], layer_batch=1)
    out = tmp_path_factory.mktemp("device") / "target.json"
    code = ("import runpy, sys; sys.modules['torch'] = None; "
            f"sys.argv = ['target_probe.py', '--runtime', 'onnxruntime-cpu', '--threads', '1', '--rounds', '2', '--out', {str(out)!r}]; "
            f"runpy.run_path({str(pack.parent / 'target_probe.py')!r}, run_name='__main__')")
    r = subprocess.run([PY, "-c", code], cwd=out.parent, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "channel block" in r.stdout and out.is_file()
    return out


def test_the_probe_measures_the_model_and_every_grid_point_of_the_pack(profile: Path) -> None:
    data = json.loads(profile.read_text())
    pack = json.loads((next(profile.parent.parent.glob("pack*")) / "pack.json").read_text())
    assert data["identity"]["runtime"] == "onnxruntime-cpu" and data["identity"]["version"]
    assert set(data["precisions"]) == {"fp32", "int8"}
    for prec, rec in data["precisions"].items():
        assert set(rec["model_ms"]) == {"1", "4"} and all(v > 0 for v in rec["model_ms"].values())
        assert rec["model_ms"]["4"] > rec["model_ms"]["1"]  # four images take longer than one
        keys = {e["key"] for e in pack["layers"] if e["precision"] == prec}
        assert set(rec["layers"]) == keys and all(v >= 0 for v in rec["layers"].values())
        assert rec["block"] in (*BLOCKS, pack["grid_step"])
        assert [w for w, _ in rec["staircase"]] == sorted(e["c_out"] for e in pack["staircase"] if e["precision"] == prec)


def test_the_profile_prices_a_pruned_model_below_the_unpruned_one(profile: Path, tmp_path: Path) -> None:
    # the measured points of a model this small are microseconds of noise: price each grid point by its channels
    # instead (ms ∝ c_in · c_out), so the test checks the lookup and the calibration, not this machine's load
    data = json.loads(profile.read_text())
    for rec in data["precisions"].values():
        rec["layers"] = {k: 1e-4 * int(k.split(":")[1]) * int(k.split(":")[2]) for k in rec["layers"]}
    priced = tmp_path / "target.json"
    priced.write_text(json.dumps(data))
    prof = load_profile(priced)
    torch.manual_seed(0)
    model = tiny_net(10, 16)
    probe = ProfileLatencyProbe(prof, "fp32", 1, 32)
    ref = probe.set_reference(model)
    assert ref == pytest.approx(data["precisions"]["fp32"]["model_ms"]["1"])
    assert probe.measure_pair(None) == (ref, ref)
    assert probe.measure_pair(model)[1] == pytest.approx(ref)  # calibrated: the unpruned estimate is the measurement
    pruner = ChannelPruner(model, 32, round_to=4, min_channels=4)
    pruner.apply({g.key: list(range(16)) for g in pruner.groups if g.size == 32})  # a whole 16-block of both wide groups
    ref2, est = probe.measure_pair(model)
    assert ref2 == ref and 0 < est < ref  # the table says it is faster
    with pytest.raises(Exception, match="another model or input size"):
        ProfileLatencyProbe(prof, "fp32", 1, 32).set_reference(tiny_net(10, 8))
    with pytest.raises(Exception, match="timed layers at batch 1"):
        ProfileLatencyProbe(prof, "fp32", 4, 32)


def test_a_profile_sets_the_alignment_and_names_the_target(profile: Path, tmp_path: Path) -> None:
    from pipeline.stages_train import aim_at_target

    cfg = load_config(SMOKE, [f"target.profile={profile}", "prune.widths.round_to=auto"])
    p, target = aim_at_target(cfg.prune, cfg.target)
    block = json.loads(profile.read_text())["precisions"]["fp32"]["block"]
    assert p.widths.round_to == block and p.target.runtime == "device-profile"
    assert target["name"] == "onnxruntime-cpu" and target["file"] == str(profile) and "threads" in target["label"]
    from ccpcsa.surgery.alignment import resolve_alignment

    assert resolve_alignment(p.widths.round_to, p.target.runtime) == (block, "the channel block of the staircase timed on the "
                                                                       "target (target.profile)")
    built_in, t2 = aim_at_target(load_config(SMOKE, ["target.profile=openvino-cpu"]).prune,
                                 load_config(SMOKE, ["target.profile=openvino-cpu"]).target)
    assert built_in.target.runtime == "openvino-cpu" and t2["file"] is None


def test_bad_profiles_stop_before_the_run_directory_is_touched(profile: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    before = snapshot(run)
    cli_error(capsys, lambda: load_config(SMOKE, ["target.profile=/nonexistent/target.json"]), "target.profile", "target_probe.py")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    cli_error(capsys, lambda: load_config(SMOKE, [f"target.profile={bad}"]), "not valid JSON")
    bad.write_text(json.dumps({"format": "something-else"}))
    cli_error(capsys, lambda: load_config(SMOKE, [f"target.profile={bad}"]), "not a target profile")
    cli_error(capsys, lambda: load_config(SMOKE, [f"target.profile={profile}", "model.kwargs={width: 8}"]),
              "timed for another model or input size")
    only_fp32 = tmp_path / "fp32.json"
    data = json.loads(profile.read_text())
    data["precisions"].pop("int8")
    only_fp32.write_text(json.dumps(data))
    cli_error(capsys, lambda: load_config(SMOKE, [f"target.profile={only_fp32}", "target.precision=int8"]),
              "has no int8 timings")
    cli_error(capsys, lambda: load_config(SMOKE, ["target.runtimes=[tensorrt-gpu]"]), "target.runtimes")
    assert snapshot(run) == before
    # the command line: one error line, exit 2
    r = subprocess.run([PY, "-m", "pipeline", "run", "--config", SMOKE, "--run-dir", str(run), "--set",
                        f"target.profile={bad}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: target.profile")
    assert snapshot(run) == before
    assert TINY  # the smoke config's model is the one the fixture probed


def test_the_probe_refuses_a_missing_pack_and_runtime(tmp_path: Path, profile: Path) -> None:
    script = ROOT / "export" / "edge" / "target_probe.py"
    r = subprocess.run([PY, str(script), "--pack", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no pack.json" in r.stderr and "Traceback" not in r.stderr
    pack = next(profile.parent.parent.glob("pack*"))
    r = subprocess.run([PY, str(pack / "target_probe.py"), "--runtime", "tflite-cpu", "--out", str(tmp_path / "t.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown runtime 'tflite-cpu'" in r.stderr and not (tmp_path / "t.json").exists()
    r = subprocess.run([PY, str(pack / "target_probe.py"), "--precision", "fp16"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no fp16 model" in r.stderr


def test_openvino_is_measured_on_the_fly_as_a_built_in_target(tmp_path: Path) -> None:
    from export.layer_latency import RuntimeLatencyProbe

    torch.manual_seed(0)
    model = tiny_net(10, 16)
    probe = RuntimeLatencyProbe(1, 1, 16, tmp_path, 32, rounds=3, runtime="openvino-cpu")
    ref = probe.set_reference(model)
    r, m = probe.measure_pair(model)
    assert ref > 0 and r > 0 and 0.5 < r / m < 2  # the same model against itself: about 1×
    cost = probe.cost_model(ChannelPruner(model, 32, round_to=16, min_channels=16), m)
    assert cost() == pytest.approx(m)  # calibrated to the measurement
    table = json.loads((tmp_path / "latency_table.openvino-cpu.b1.t1.json").read_text())
    assert table["machine"]["runtime"] == "openvino-cpu" and table["machine"]["version"] and table["points"]


def test_the_cpu_int8_flavour_follows_the_device_cpu_features() -> None:
    from export.quantize import resolve_reduce_range

    assert resolve_reduce_range("auto", frozenset({"avx2"}), "x86_64")[0] is True  # no VNNI: 7-bit weights
    assert resolve_reduce_range("auto", frozenset({"avx2", "avx512_vnni"}), "x86_64")[0] is False
    assert resolve_reduce_range("auto", frozenset({"asimd"}), "aarch64")[0] is False
    assert resolve_reduce_range(True, frozenset(), "x86_64") == (True, "set by export.int8_reduce_range")
