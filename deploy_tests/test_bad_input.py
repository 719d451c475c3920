"""Bad-input battery (issue #7 "Hardening").

Every user mistake must end in exactly one ``error: <message>`` line on stderr that names the thing
and the fix, a non-zero exit status (2 for user errors), no traceback, and nothing overwritten. Cases
go through the real command lines (``python -m pipeline``, ``python -m ccpcsa``,
``python -m ccpcsa.oneshot``) where that is fast, and otherwise through the library functions those
command lines call, wrapped in :func:`ccpcsa.errors.run_cli` exactly as the entry points wrap them.
No case trains a model: config, data and checkpoint mistakes are all caught before training.

Here: config, the command lines, checkpoints, a full disk; datasets, ONNX files, engine sidecars and run directories:
:mod:`deploy_tests.test_bad_input_files`; the helpers both use: :mod:`deploy_tests.bad_input_helpers`.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ccpcsa.__main__ import main as ccpcsa_main
from ccpcsa.errors import ArtifactWriteError
from ccpcsa.io import artifacts
from ccpcsa.io.checkpoint import FORMAT, ModelSpec, load_checkpoint, save_checkpoint
from ccpcsa.models import build_model
from ccpcsa.oneshot import main as oneshot_main
from deploy_tests.bad_input_helpers import (
    ROOT,
    SMOKE,
    TINY,
    cli_error,
    no_temp_files,
    one_error_line,
    snapshot,
)
from deploy_tests.byo_model import tiny_net
from pipeline.__main__ import main as pipeline_main


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid checkpoint of the smoke config's model (tiny_net, width 16, 10 classes) plus broken variants."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    good = save_checkpoint(d / "good.pt", tiny_net(10, 16), ModelSpec(TINY, 10, 32, {"width": 16}),
                           [f"c{i}" for i in range(10)], [0.5] * 3, [0.25] * 3)
    raw = good.read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (d / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "text.pt").write_text("these are not the weights you are looking for\n")
    (d / "empty.pt").write_bytes(b"")
    torch.save(tiny_net(10, 16).state_dict(), d / "bare_state_dict.pt")
    payload = torch.load(good, weights_only=True)
    other_arch = {**payload, "model": {**payload["model"], "name": "resnet20", "kwargs": {}}}
    torch.save(other_arch, d / "other_arch.pt")
    torch.save({"format": FORMAT, "model": payload["model"]}, d / "no_state.pt")
    for kind, value in (("nan", float("nan")), ("inf", float("inf"))):
        bad = torch.load(good, weights_only=True)
        bad["state_dict"]["fc.weight"][0, 0] = value
        torch.save(bad, d / f"{kind}.pt")
    save_checkpoint(d / "five_classes.pt", tiny_net(5, 16), ModelSpec(TINY, 5, 32, {"width": 16}))
    # bare weights as users have them (issue #16): for the smoke config's architecture unless the name says otherwise
    sd = tiny_net(10, 16).state_dict()
    torch.save(build_model("deploy_tests.tv_like:resnet18", 10, weights=None, width=8).state_dict(), d / "other_arch.pth")
    torch.save(tiny_net(5, 16).state_dict(), d / "five_classes.pth")
    save_file({k: v.contiguous() for k, v in sd.items() if k != "fc.bias"}, str(d / "missing_tensor.safetensors"))
    torch.save({**sd, "epoch": 12, "arch": "tiny"}, d / "non_tensor.pth")
    torch.save({"state_dict": {**sd, "fc.weight": torch.full_like(sd["fc.weight"], float("nan"))}}, d / "nan_state.pth")
    save_file({**{k: v.contiguous() for k, v in sd.items()}, "fc.bias": torch.full((10,), float("inf"))}, str(d / "inf.safetensors"))
    (d / "truncated.safetensors").write_bytes((d / "inf.safetensors").read_bytes()[:200])
    return d


# ---------------------------------------------------------------------------------------------
# 1–2. pipeline config: unknown names, wrong types, out-of-range values (all fail before the run dir exists)

CONFIG_CASES = [
    (["--set", "model.name=resent20"], ["unknown model 'resent20'", "did you mean 'resnet20'"]),
    (["--set", "prune.criterion.name=ccpsca"], ["unknown prune.criterion.name 'ccpsca'", "did you mean 'ccpcsa'"]),
    (["--from", "prunee"], ["unknown stage 'prunee'", "did you mean 'prune'"]),
    (["--until", "bundel"], ["unknown stage 'bundel'", "did you mean 'bundle'"]),
    (["--set", "prune.targt_flops_reduction=0.5"],
     ["unknown config key 'prune.targt_flops_reduction'", "did you mean 'prune.target.flops_reduction'"]),
    (["--set", "prune.target.flops_reduction=1.0"], ["prune.target.flops_reduction must be in [0, 1), got 1.0"]),
    (["--set", "prune.target.flops_reduction=1.5"], ["prune.target.flops_reduction must be in [0, 1), got 1.5"]),
    (["--set", "prune.target.flops_reduction=-0.1"], ["prune.target.flops_reduction must be in [0, 1), got -0.1"]),
    (["--set", "prune.steps.tolerance=-1"], ["prune.steps.tolerance must be ≥ 0", "got -1.0"]),
    (["--set", "prune.steps.tolerance=.nan"], ["config key prune.steps.tolerance must be a number, got nan"]),
    (["--set", "train.batch_size=0"], ["train.batch_size must be ≥ 1, got 0"]),
    (["--set", "train.lr=abc"], ["config key train.lr must be a number, got 'abc'"]),
    (["--set", "train.epochs=[1, 2]"], ["config key train.epochs must be an integer, got [1, 2]"]),
    (["--set", "train.epochs=2.5"], ["config key train.epochs must be an integer, got 2.5"]),
    (["--set", "train.augment=maybe"], ["config key train.augment must be true or false, got 'maybe'"]),
    (["--set", "export.latency_batches=8"], ["config key export.latency_batches must be a list, got 8"]),
    (["--set", "train=5"], ["config section train must be a mapping, got 5"]),
    (["--set", "train.lr"], ["--set 'train.lr' must look like key=value"]),
    (["--set", "run.device=gpu"], ["run.device 'gpu' is not a device", "use auto, cpu, cuda"]),
    (["--set", "prune.by_alignment={16: {widths.round_to: 8}}"], ["prune.by_alignment.16 cannot set 'widths.round_to'",
                                                            "it decides which entry applies"]),
    (["--set", "prune.by_alignment={16: {target.flop_reduction: 0.3}}"],
     ["prune.by_alignment.16 cannot set 'target.flop_reduction'", "did you mean 'target.flops_reduction'?"]),
    (["--set", "prune.by_alignment={16: {target.flops_reduction: 1.3}}"],
     ["prune.by_alignment.16: prune.target.flops_reduction must be in [0, 1), got 1.3"]),
    (["--set", "prune.by_alignment={16: {target.flops_reduction: abc}}"],
     ["config key prune.by_alignment.16.target.flops_reduction must be a number, got 'abc'"]),
    (["--set", "prune.by_alignment={avx512: {target.flops_reduction: 0.3}}"],
     ["prune.by_alignment maps a channel block (an integer ≥ 1, e.g. 16)", "got 'avx512'"]),
    (["--set", "model.name=deploy_tests.no_such_module:net"], ["cannot import module 'deploy_tests.no_such_module'"]),
    (["--set", "model.name=deploy_tests.tv_like:resnet18", "--set", "model.kwargs={weights: IMAGENET1K_V1}"],
     ["model 'deploy_tests.tv_like:resnet18': the factory raised RuntimeError: cannot download pretrained weights",
      "fix the factory or model.kwargs"]),
    (["--set", "model.kwargs={width: 16, num_classes: 5}"], ["model.kwargs.num_classes", "remove it from model.kwargs"]),
]


@pytest.mark.parametrize(("args", "fragments"), CONFIG_CASES, ids=[" ".join(a) for a, _ in CONFIG_CASES])
def test_pipeline_config_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                  fragments: list[str]) -> None:
    run_dir = tmp_path / "run"
    assert pipeline_main(["run", "--config", SMOKE, "--run-dir", str(run_dir), "--no-progress", *args]) == 2
    one_error_line(capsys, *fragments)
    assert not run_dir.exists()


def test_config_file_typo_and_bad_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 3\n")
    assert pipeline_main(["run", "--config", str(typo), "--run-dir", str(tmp_path / "r")]) == 2
    one_error_line(capsys, "unknown config key 'train.epoch'", "did you mean 'train.epochs'")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  epochs: [3\n")
    assert pipeline_main(["run", "--config", str(broken), "--run-dir", str(tmp_path / "r")]) == 2
    one_error_line(capsys, f"config file {broken} is not valid YAML at line")
    assert pipeline_main(["run", "--config", str(tmp_path / "missing.yaml"), "--run-dir", str(tmp_path / "r")]) == 2
    one_error_line(capsys, "missing.yaml does not exist")
    assert not (tmp_path / "r").exists()


def test_config_error_leaves_existing_run_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text('{"run": "smoke", "stages": {}}\n')
    (run_dir / "baseline.pt").write_bytes(b"previous artifact")
    before = snapshot(run_dir)
    assert pipeline_main(["run", "--config", SMOKE, "--run-dir", str(run_dir), "--set", "train.batch_size=-3"]) == 2
    one_error_line(capsys, "train.batch_size must be ≥ 1, got -3")
    assert snapshot(run_dir) == before


# ---------------------------------------------------------------------------------------------
# 1–2. the training and one-shot command lines


def test_ccpcsa_cli_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default data cache would appear here as .cache/
    assert ccpcsa_main(["info", "--model", "resent20"]) == 2
    one_error_line(capsys, "unknown model 'resent20'", "did you mean 'resnet20'")
    assert ccpcsa_main(["info", "--model", "resnet20", "--input-size", "2"]) == 2
    one_error_line(capsys, "--input-size must be ≥ 8, got 2")
    # A bad value or name is refused before any data is read: no data cache is created, nothing is trained.
    common = ["train", "--data", "synthetic:100:20", "--epochs", "1", "--out", str(tmp_path / "m.pt")]
    assert ccpcsa_main([*common, "--batch-size", "0"]) == 2
    one_error_line(capsys, "train.batch_size must be ≥ 1, got 0")
    assert ccpcsa_main([*common, "--model", "resnet21"]) == 2
    one_error_line(capsys, "unknown model 'resnet21'")
    assert ccpcsa_main([*common, "--schedule", "linear"]) == 2
    one_error_line(capsys, "train.schedule 'linear' unknown")
    assert ccpcsa_main(["train", "--data", f"imagefolder:{tmp_path / 'nope'}", "--epochs", "1"]) == 2
    one_error_line(capsys, f"dataset path {tmp_path / 'nope'} does not exist")
    assert not (tmp_path / ".cache").exists() and not (tmp_path / "m.pt").exists()


def test_argparse_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ccpcsa_main(["train", "--lr", "abc"])
    assert exc.value.code == 2
    one_error_line(capsys, "argument --lr: invalid float value: 'abc'", "--help")
    with pytest.raises(SystemExit) as exc:
        oneshot_main(["model.pt", "--target", "half"])
    assert exc.value.code == 2
    one_error_line(capsys, "argument --target: invalid float value: 'half'")


def test_oneshot_cli_mistakes(ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = str(ckpt_dir / "good.pt")
    assert oneshot_main([good, "--criterion", "qsmf", "--data", "synthetic"]) == 2
    one_error_line(capsys, "unknown criterion 'qsmf'", "did you mean 'qsfm'")
    assert oneshot_main([good, "--target", "1.5", "--data", "synthetic"]) == 2
    one_error_line(capsys, "--target (FLOPs reduction) must be in [0, 1), got 1.5")
    assert oneshot_main([str(tmp_path / "missing.pt"), "--data", "synthetic"]) == 2
    one_error_line(capsys, f"checkpoint {tmp_path / 'missing.pt'} does not exist")
    assert oneshot_main([str(ckpt_dir / "nan.pt"), "--data", "synthetic", "--criterion", "l1"]) == 2
    one_error_line(capsys, "NaN in 1 tensor(s) (first: fc.weight)")


def test_documented_oneshot_command_runs(tmp_path: Path) -> None:
    """``python -m ccpcsa.oneshot`` (bench/README.md) runs as a command: usage, and one error line for a missing checkpoint."""
    cmd = [sys.executable, "-m", "ccpcsa.oneshot"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    usage = subprocess.run([*cmd, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: python -m ccpcsa.oneshot"), usage.stderr
    r = subprocess.run([*cmd, str(tmp_path / "missing.pt"), "--data", "synthetic"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: checkpoint {tmp_path / 'missing.pt'} does not exist"), \
        r.stderr


# ---------------------------------------------------------------------------------------------
# 4. checkpoints

CHECKPOINT_CASES = [
    ("truncated.pt", {}, "is truncated or not a torch checkpoint"),
    ("random.pt", {}, "is truncated or not a torch checkpoint"),
    ("text.pt", {}, "is truncated or not a torch checkpoint"),
    ("empty.pt", {}, "is empty (0 bytes)"),
    ("bare_state_dict.pt", {}, "is bare weights (state_dict) without an architecture; load it with load_checkpoint(path, spec="),
    ("other_arch.pth", {"spec": ModelSpec(TINY, 10, 32, {"width": 16})},
     f"do not match architecture '{TINY}' (kwargs {{'width': 16}}, 10 classes): 20 missing tensors (stem.0.weight, stem.1.weight, stem.1.bias, … 17 more); "
     "120 unexpected tensors (conv1.weight, bn1.weight, bn1.bias, … 117 more)"),
    ("five_classes.pth", {"spec": ModelSpec(TINY, 10, 32, {"width": 16})},
     "fc.weight: [5, 32] in the file, [10, 32] in the model, fc.bias: [5] in the file, [10] in the model) — the weights "
     "are for 5 classes, not 10: set model.num_classes=5"),
    ("missing_tensor.safetensors", {"spec": ModelSpec(TINY, 10, 32, {"width": 16})}, "(safetensors) do not match "
     f"architecture '{TINY}' (kwargs {{'width': 16}}, 10 classes): 1 missing tensors (fc.bias)"),
    ("non_tensor.pth", {"spec": ModelSpec(TINY, 10, 32, {"width": 16})},
     "is not a state_dict of tensors: 2 non-tensor entries (first: 'epoch' (int), 'arch' (str))"),
    ("nan_state.pth", {"spec": ModelSpec(TINY, 10, 32, {"width": 16})}, "NaN in 1 tensor(s) (first: fc.weight)"),
    ("inf.safetensors", {"spec": ModelSpec(TINY, 10, 32, {"width": 16})}, "Inf in 1 tensor(s) (first: fc.bias)"),
    ("truncated.safetensors", {"spec": ModelSpec(TINY, 10, 32, {"width": 16})}, "is truncated or not a safetensors file"),
    ("no_state.pt", {}, "is damaged: its 'state_dict' is not a mapping of tensors"),
    ("other_arch.pt", {}, "does not match architecture 'resnet20'"),
    ("good.pt", {"expect_model": "resnet56"}, f"holds a '{TINY}' model but 'resnet56' is expected"),
    ("good.pt", {"expect_classes": 100}, "has 10 classes but the data/config has 100"),
    ("nan.pt", {}, "NaN in 1 tensor(s) (first: fc.weight)"),
    ("inf.pt", {}, "Inf in 1 tensor(s) (first: fc.weight)"),
    ("missing.pt", {}, "does not exist"),
]


@pytest.mark.parametrize(("name", "kwargs", "fragment"), CHECKPOINT_CASES,
                         ids=[f"{n}-{'-'.join(k) or 'plain'}" for n, k, _ in CHECKPOINT_CASES])
def test_bad_checkpoints(ckpt_dir: Path, capsys: pytest.CaptureFixture[str], name: str, kwargs: dict[str, Any],
                         fragment: str) -> None:
    path = ckpt_dir / name
    before = path.read_bytes() if path.exists() else None
    line = cli_error(capsys, lambda: load_checkpoint(path, **kwargs), fragment)
    assert str(path) in line
    assert (path.read_bytes() if path.exists() else None) == before


def test_checkpoint_directory_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_error(capsys, lambda: load_checkpoint(tmp_path), f"checkpoint {tmp_path} is a directory")


def test_the_good_checkpoint_loads(ckpt_dir: Path) -> None:
    """Guards the fixtures above: the broken variants fail for their own reason, not because all do."""
    ck = load_checkpoint(ckpt_dir / "good.pt", expect_classes=10, expect_model=TINY)
    assert ck.spec.num_classes == 10 and ck.model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(("name", "overrides", "fragment", "where"), [
    ("missing.pt", [], "does not exist; fix the path", "config"),
    ("five_classes.pt", [], "has 5 classes but model.num_classes is 10", "config"),
    ("good.pt", ["model.name=resnet20"], f"holds a '{TINY}' model but model.name is 'resnet20'", "config"),
    ("truncated.pt", [], "is truncated or not a torch checkpoint", "stage"),
    ("text.pt", [], "is truncated or not a torch checkpoint", "stage"),
    ("inf.pt", [], "Inf in 1 tensor(s) (first: fc.weight)", "stage"),
    # bare weights: model.* names the architecture; keys and shapes are matched before the run dir is touched
    ("other_arch.pth", [], f"(state_dict) do not match architecture '{TINY}'", "config"),
    ("five_classes.pth", [], "the weights are for 5 classes, not 10: set model.num_classes=5", "config"),
    ("missing_tensor.safetensors", [], "(safetensors) do not match architecture", "config"),
    ("bare_state_dict.pt", ["model.kwargs={width: 8}"], "shape mismatches (stem.0.weight: [16, 3, 3, 3] in the file, "
     "[8, 3, 3, 3] in the model", "config"),
    ("non_tensor.pth", [], "2 non-tensor entries (first: 'epoch' (int), 'arch' (str))", "stage"),
    ("nan_state.pth", [], "NaN in 1 tensor(s) (first: fc.weight)", "stage"),
    ("inf.safetensors", [], "Inf in 1 tensor(s) (first: fc.bias)", "stage"),
], ids=["missing", "other-class-count", "other-architecture", "truncated", "not-a-checkpoint", "inf",
        "state-dict-other-architecture", "state-dict-other-class-count", "safetensors-missing-tensor",
        "state-dict-other-width", "state-dict-non-tensors", "state-dict-nan", "safetensors-inf"])
def test_pipeline_rejects_bad_baseline_checkpoint_before_training(
        ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        name: str, overrides: list[str], fragment: str, where: str) -> None:
    """Mismatches with the config are refused by config validation (the run directory is not touched); a file
    that cannot be loaded is refused by the baseline stage before any training. Either way: one line, exit 2,
    the previous baseline.pt intact."""
    import ccpcsa.training.engine
    import pipeline.stages_train

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("training started despite a bad baseline checkpoint")

    monkeypatch.setattr(ccpcsa.training.engine, "fit", no_training)
    monkeypatch.setattr(pipeline.stages_train, "fit", no_training)
    monkeypatch.chdir(tmp_path)  # the pipeline's data cache (.cache/data) goes to tmp_path
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "baseline.pt").write_bytes(b"previous artifact")
    before = snapshot(run_dir)
    args = ["run", "--config", SMOKE, "--run-dir", str(run_dir), "--no-progress", "--until", "baseline",
            "--set", f"baseline.checkpoint={ckpt_dir / name}", "--set", "data.spec=synthetic:200:50"]
    for o in overrides:
        args += ["--set", o]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pipeline_main(args) == 2
    one_error_line(capsys, fragment, str(ckpt_dir / name))
    assert (run_dir / "baseline.pt").read_bytes() == b"previous artifact"
    no_temp_files(run_dir)
    if where == "config":
        assert snapshot(run_dir) == before and not (tmp_path / ".cache").exists()


# ---------------------------------------------------------------------------------------------
# 8. disk full while writing an artifact


def _enospc(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_keeps_previous_artifact(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "report.json"
    artifacts.atomic_write_json(dest, {"version": 1})
    before = dest.read_bytes()
    monkeypatch.setattr(artifacts.os, "fsync", _enospc)
    line = cli_error(capsys, lambda: artifacts.atomic_write_json(dest, {"version": 2}),
                     f"no space left on device while writing {dest}", "free some space and rerun",
                     "previous version of it is intact")
    assert "Errno" not in line
    assert dest.read_bytes() == before
    no_temp_files(tmp_path)
    with pytest.raises(OSError) as exc:  # still an OSError for code that tolerates optional writes
        artifacts.atomic_write_bytes(dest, b"v3")
    assert isinstance(exc.value, ArtifactWriteError) and exc.value.errno == errno.ENOSPC


def test_disk_full_in_torch_save(ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save reports ENOSPC as a RuntimeError ("file write failed"): recognised by the free space left."""
    import shutil

    dest = tmp_path / "model.pt"
    dest.write_bytes((ckpt_dir / "good.pt").read_bytes())
    before = dest.read_bytes()

    def failing_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04partial") if hasattr(f, "write") else Path(f).write_bytes(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 0))  # type: ignore[attr-defined]
    model = tiny_net(10, 16)
    cli_error(capsys, lambda: save_checkpoint(dest, model, ModelSpec(TINY, 10)),
              f"no space left on device while writing {dest}")
    assert dest.read_bytes() == before
    no_temp_files(tmp_path)


def test_pipeline_reports_disk_full_in_one_line(ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The baseline stage (from a checkpoint, no training) hits a full disk writing baseline.pt: one line, exit 2,
    the previous baseline.pt intact, no temp file left."""
    monkeypatch.chdir(tmp_path)  # the pipeline's data cache (.cache/data) goes to tmp_path
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "baseline.pt").write_bytes(b"previous artifact")

    def full_disk_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04partial") if hasattr(f, "write") else Path(f).write_bytes(b"PK\x03\x04partial")
        _enospc()

    monkeypatch.setattr(torch, "save", full_disk_save)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = pipeline_main(["run", "--config", SMOKE, "--run-dir", str(run_dir), "--no-progress", "--until", "baseline",
                              "--set", f"baseline.checkpoint={ckpt_dir / 'good.pt'}", "--set", "data.spec=synthetic:200:50",
                              "--set", "checks.eval_images=50"])
    assert code == 2
    one_error_line(capsys, f"no space left on device while writing {run_dir / 'baseline.pt'}", "free some space and rerun")
    assert (run_dir / "baseline.pt").read_bytes() == b"previous artifact"
    no_temp_files(run_dir)
    assert not (run_dir / ".lock").exists()


def test_fp32_parity_gate_is_relative_to_the_logit_scale():
    """max |Δlogit| ≤ max_diff · max(1, logit scale): 0.07 passes on logits of 76,000 (9e-7 relative), not on logits of 10."""
    from pipeline.checks import parity

    big = parity(0.07, 100.0, fp32=True, max_diff=1e-3, min_agree_fp32=99.9, min_agree_lowp=99.0, logit_scale=76_000.0)
    small = parity(0.07, 100.0, fp32=True, max_diff=1e-3, min_agree_fp32=99.9, min_agree_lowp=99.0, logit_scale=10.0)
    tiny = parity(5e-4, 100.0, fp32=True, max_diff=1e-3, min_agree_fp32=99.9, min_agree_lowp=99.0, logit_scale=0.01)
    assert big[0].passed and big[0].threshold == 76.0
    assert not small[0].passed and small[0].threshold == 1e-3 * 10
    assert tiny[0].passed and tiny[0].threshold == 1e-3  # never tighter than the absolute bound
