"""Bad-input battery (issue #7 "Hardening"), part 2: files and directories the user points at.

Datasets (missing, empty, truncated, odd images), ONNX files, TensorRT engine sidecars and run directories that
cannot be written: each mistake ends in exactly one ``error: <message>`` line naming the thing and the fix, exit
status 2, no traceback, nothing overwritten. Part 1 (config, command lines, checkpoints, a full disk):
:mod:`deploy_tests.test_bad_input`.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ccpcsa.__main__ import main as ccpcsa_main
from ccpcsa.data import load_data
from ccpcsa.io import artifacts
from deploy_tests.bad_input_helpers import SMOKE, cli_error, no_temp_files, one_error_line, snapshot
from export.onnx_io import load_onnx
from export.tensorrt import SIDECAR_FORMAT, TrtRunner, check_sidecar, load_sidecar, sidecar_path_for
from pipeline.__main__ import main as pipeline_main

# ---------------------------------------------------------------------------------------------
# 3. datasets (load_data with the cache in tmp_path; nothing is cached for a rejected dataset)


def _img(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _tree(root: Path, n: int = 2) -> Path:
    """train/ and test/ with classes cat and dog, ``n`` 8×8 RGB PNG/JPEG images each."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for ci, cls in enumerate(("cat", "dog")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                arr = (np.full((8, 8, 3), 50 + 100 * ci) + rng.integers(0, 20, (8, 8, 3))).astype(np.uint8)
                (folder / f"{i}.{'png' if i % 2 == 0 else 'jpg'}").write_bytes(_img(arr, "PNG" if i % 2 == 0 else "JPEG"))
    return root


def _tgz(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src, arcname="data")
    return dest


def _load(spec: str, cache: Path) -> Any:
    return load_data(spec, val_size=0, cache_dir=cache, progress=False)


def test_dataset_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "cifar.tar.gz"
    cli_error(capsys, lambda: _load(f"imagefolder:{missing}", tmp_path / "c"), f"dataset path {missing} does not exist",
              "train/<class>/ and test/<class>/")
    # Through the pipeline: refused by config validation (smoke has no fallback), before the run dir exists.
    assert pipeline_main(["run", "--config", SMOKE, "--run-dir", str(tmp_path / "r"),
                          "--set", f"data.spec=imagefolder:{missing}"]) == 2
    one_error_line(capsys, f"data.spec: dataset path {missing} does not exist", "set data.fallback")
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


def test_dataset_empty_folder_and_archives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cli_error(capsys, lambda: _load(f"imagefolder:{empty_dir}", tmp_path / "c"),
              f"{empty_dir}: no train/ folder found (found: nothing)")
    empty_tgz = tmp_path / "empty.tar.gz"
    with tarfile.open(empty_tgz, "w:gz"):
        pass
    cli_error(capsys, lambda: _load(f"imagefolder:{empty_tgz}", tmp_path / "c"),
              f"{empty_tgz}: no train/ folder found (found: nothing)")
    zero = tmp_path / "zero.tar.gz"
    zero.write_bytes(b"")
    cli_error(capsys, lambda: _load(f"imagefolder:{zero}", tmp_path / "c"), f"{zero} is truncated or not a gzip tar archive")
    assert not (tmp_path / "c").exists()


def test_dataset_truncated_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = _tgz(_tree(tmp_path / "tree", n=4), tmp_path / "full.tar.gz")
    assert len(_load(f"imagefolder:{full}", tmp_path / "ok").train) == 8  # the intact archive loads
    data = full.read_bytes()
    for cut in (len(data) // 2, len(data) - 8):  # mid-stream, and only the gzip trailer missing
        trunc = tmp_path / f"trunc{cut}.tar.gz"
        trunc.write_bytes(data[:cut])
        cli_error(capsys, lambda t=trunc: _load(f"imagefolder:{t}", tmp_path / "c"),
                  f"{trunc} is truncated or not a gzip tar archive")
    assert not (tmp_path / "c").exists()


def test_dataset_class_folder_without_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = _tree(tmp_path / "tree")
    (tree / "train" / "bird").mkdir()
    (tree / "test" / "bird").mkdir()
    (tree / "test" / "bird" / "0.png").write_bytes((tree / "test" / "cat" / "0.png").read_bytes())
    cli_error(capsys, lambda: _load(f"imagefolder:{tree}", tmp_path / "c"), "class folder train/bird/ has no images")
    (tree / "train" / "bird" / "readme.txt").write_text("birds go here\n")  # a file, but no image
    cli_error(capsys, lambda: _load(f"imagefolder:{tree}", tmp_path / "c"),
              "class folder train/bird/ has no images that could be decoded")
    assert not (tmp_path / "c").exists()


def test_dataset_non_image_renamed_jpg_is_skipped_with_warning(tmp_path: Path) -> None:
    """Decision: a non-image among images is skipped (not fatal); one warning names the count and a file."""
    tree = _tree(tmp_path / "tree")
    (tree / "train" / "cat" / "fake.jpg").write_text("I am a text file wearing a .jpg extension\n")
    with pytest.warns(UserWarning, match=r"skipped 1 undecodable image file\(s\) \(e\.g\. train/cat/fake\.jpg\)"):
        d = _load(f"imagefolder:{tree}", tmp_path / "c")
    assert d.stats["undecodable"] == 1 and len(d.train) == 4 and np.bincount(d.train.labels).tolist() == [2, 2]


def test_dataset_grayscale_is_converted_and_odd_size_is_resized(tmp_path: Path) -> None:
    """Decision: grayscale images are converted to RGB, odd-sized ones resized to the common size; both said."""
    tree = _tree(tmp_path / "tree")
    (tree / "train" / "dog" / "gray.png").write_bytes(_img(np.full((8, 8), 77, np.uint8)))
    (tree / "train" / "cat" / "odd.png").write_bytes(_img(np.full((12, 10, 3), 200, np.uint8)))
    with pytest.warns(UserWarning) as record:
        d = _load(f"imagefolder:{tree}", tmp_path / "c")
    msg = " ".join(str(w.message) for w in record)
    assert "converted 1 non-RGB (grayscale/RGBA/palette) image(s) to RGB (e.g. train/dog/gray.png)" in msg
    assert "resized 1 image(s) of another size to 8x8 (e.g. train/cat/odd.png)" in msg
    assert d.train.images.shape == (6, 8, 8, 3) and d.stats["converted"] == 1 and d.stats["resized"] == 1
    gray = d.train.images[d.train.labels == 1][-1]  # gray.png sorts after 1.jpg
    assert np.all(gray == 77)
    odd = d.train.images[d.train.labels == 0][-1]
    assert np.all(odd == 200)
    # The cached entry keeps the note: a second load warns the same way.
    with pytest.warns(UserWarning, match="e.g. train/dog/gray.png"):
        _load(f"imagefolder:{tree}", tmp_path / "c")


def test_dataset_non_square_images_are_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "tree"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tree / split / cls).mkdir(parents=True)
            (tree / split / cls / "0.png").write_bytes(_img(np.zeros((6, 9, 3), np.uint8)))
    cli_error(capsys, lambda: _load(f"imagefolder:{tree}", tmp_path / "c"), "most images are 9x6",
              "only square images are supported")


def test_dataset_cache_disk_full_is_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoded-array cache is optional: a full disk while writing it is a warning, and the data still loads."""
    import ccpcsa.data.cache as cache_mod

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod.np, "save", full)
    with pytest.warns(UserWarning, match="could not write the data cache.*no space left on device"):
        d = load_data("synthetic:40:10", val_size=0, cache_dir=tmp_path / "c", progress=False)
    assert len(d.train) == 40
    for entry in (tmp_path / "c").iterdir():
        no_temp_files(entry)


# ---------------------------------------------------------------------------------------------
# 5. ONNX files


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid ONNX model (MatMul by a 64×64 initializer) built with onnx.helper — no export needed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    onnx.save_model(model, str(path))
    return path


def test_good_onnx_loads(onnx_file: Path) -> None:
    assert load_onnx(onnx_file).graph.node[0].op_type == "MatMul"


@pytest.mark.parametrize(("kind", "fragment"), [
    ("truncated", "is not a valid ONNX model (truncated or another format?)"),
    ("text", "is not a valid ONNX model"),
    ("random", "is not a valid ONNX model"),
    ("empty", "is empty"),
])
def test_bad_onnx(onnx_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, fragment: str) -> None:
    data = onnx_file.read_bytes()
    content = {"truncated": data[: len(data) // 2], "text": b"this is a README, not a model\n" * 20,
               "random": np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes(), "empty": b""}[kind]
    bad = tmp_path / f"{kind}.onnx"
    bad.write_bytes(content)
    line = cli_error(capsys, lambda: load_onnx(bad), fragment)
    assert str(bad) in line and bad.read_bytes() == content


# ---------------------------------------------------------------------------------------------
# 6. TensorRT engine sidecars (pure checks; TensorRT is not needed)

SIDECAR = {"format": SIDECAR_FORMAT, "tensorrt_version": "10.3.0", "gpu": "Orin (nvgpu)", "precision": "fp16"}


@pytest.mark.parametrize(("sidecar", "trt_version", "gpu", "fragments"), [
    (SIDECAR, "10.3.0", "NVIDIA H100 80GB HBM3", ["GPU 'Orin (nvgpu)' (this machine: 'NVIDIA H100 80GB HBM3')", "rebuild"]),
    (SIDECAR, "10.13.0.35", "Orin (nvgpu)", ["TensorRT 10.3.0 (installed: 10.13.0.35)", "rebuild"]),
    ({**SIDECAR, "format": "other-tool/3"}, "10.3.0", "Orin (nvgpu)", ["sidecar format is 'other-tool/3'"]),
    ({"gpu": "Orin (nvgpu)"}, "10.3.0", "Orin (nvgpu)", ["sidecar lacks tensorrt_version"]),
], ids=["other-gpu", "other-trt", "other-format", "no-version"])
def test_engine_sidecar_mismatch(capsys: pytest.CaptureFixture[str], sidecar: dict[str, Any], trt_version: str,
                                 gpu: str, fragments: list[str]) -> None:
    cli_error(capsys, lambda: check_sidecar(sidecar, trt_version=trt_version, gpu_name=gpu, engine="engine 'm.engine'"),
              "engine 'm.engine'", *fragments)


def test_engine_sidecar_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00plan bytes")
    side = sidecar_path_for(engine)
    side.write_text(json.dumps({**SIDECAR, "engine_sha256": "0" * 64}))
    before = snapshot(tmp_path)
    cli_error(capsys, lambda: TrtRunner(engine), "engine 'm.engine' does not match its sidecar (SHA-256 differs)")
    side.write_text("[1, 2]")
    cli_error(capsys, lambda: load_sidecar(engine), "must hold a JSON object")
    side.write_bytes(b"\xff\xfe garbage")
    cli_error(capsys, lambda: load_sidecar(engine), "is not valid JSON")
    assert engine.read_bytes() == before["m.engine"]


# ---------------------------------------------------------------------------------------------
# 7. run directory not writable


def test_run_dir_below_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Works for root too: nobody can create a directory below a regular file."""
    afile = tmp_path / "afile"
    afile.write_bytes(b"keep me")
    run_dir = afile / "run"
    assert pipeline_main(["run", "--config", SMOKE, "--run-dir", str(run_dir), "--no-progress"]) == 2
    one_error_line(capsys, f"run directory {run_dir} is not writable", "choose another with --run-dir")
    assert afile.read_bytes() == b"keep me"
    assert ccpcsa_main(["train", "--data", "synthetic:100:20", "--out", str(run_dir / "m.pt")]) == 2
    one_error_line(capsys, f"checkpoint directory (--out) {run_dir} is not writable", "choose another location")
    assert ccpcsa_main(["train", "--data", "synthetic:100:20", "--out", str(afile / "m.pt")]) == 2
    one_error_line(capsys, f"checkpoint directory (--out) {afile} is a file, not a directory")
    cli_error(capsys, lambda: artifacts.atomic_write_text(run_dir / "report.md", "x"), f"cannot write {run_dir / 'report.md'}")
    assert afile.read_bytes() == b"keep me"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_run_dir_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "manifest.json").write_text("{}")
    ro.chmod(0o500)
    try:
        assert pipeline_main(["run", "--config", SMOKE, "--run-dir", str(ro), "--no-progress"]) == 2
        one_error_line(capsys, f"run directory {ro} is not writable (Permission denied)")
        assert (ro / "manifest.json").read_text() == "{}"
    finally:
        ro.chmod(0o700)
