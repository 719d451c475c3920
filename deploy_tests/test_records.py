"""The typed records of the manifest and the report (:mod:`pipeline.records`): an old manifest loads, a damaged one
is one UserError line naming the file, and the report built from records keeps its keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ccpcsa.errors import UserError
from pipeline.records import FormatRow, ReportView, RunManifest, StageRecord
from pipeline.report import build_report, format_table

OLD = {"run": "old", "config_hash": "h" * 64, "config": {"model": {"name": "resnet20"}},
       "stages": {"baseline": {"status": "ok", "outputs": {"baseline.pt": "a" * 64},
                               "metrics": {"accuracy": 90.0, "params": 10, "flops": 100}},
                  "prune": {"status": "ok", "metrics": None},  # an older record: no reason, checks or seconds
                  "onnx": {"status": "running", "outputs": {}}}}


def test_an_old_manifest_loads_with_defaults(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(OLD))
    m = RunManifest.load(tmp_path)
    assert m.run == "old" and m.model == "resnet20" and m.frontier is None
    assert m.stage("prune") == StageRecord("prune", "ok")  # metrics null → empty, reason "" by default
    assert m.stage("baseline").artifact == "baseline.pt" and not m.stage("onnx").finished
    assert m.metrics("validate") == {} and m.validate.formats == {} and m.validate.speedups is None
    report = build_report(m)
    assert [s["name"] for s in report["stages"]] == ["baseline", "prune"]  # the interrupted stage is no result
    assert report["baseline"]["params"] == 10 and report["evaluation"]["gate_images"] is None
    assert report["speedups"] == {"onnxruntime-cpu": {}} and report["formats"] == []
    assert build_report(OLD) == report  # a dict is read into the same records


@pytest.mark.parametrize(("text", "words"), [
    ("{not json", "not valid JSON"),
    ("[]", "a list, not an object"),
    (json.dumps({"run": "x"}), "no stages"),
    (json.dumps({"run": "x", "stages": {"prune": {"metrics": {}}}}), "stage 'prune' has no status"),
    (json.dumps({"run": "x", "stages": {"prune": {"status": "ok", "checks": [{"name": "a"}]}}}), "a check of stage"),
    (json.dumps({"run": 3, "stages": {}}), "run is not a string"),
])
def test_a_damaged_manifest_is_one_line_naming_the_file_and_the_fix(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(UserError) as err:
        RunManifest.load(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "manifest.json") in msg and words in msg and "python -m pipeline run" in msg


def test_a_missing_manifest_says_it_is_no_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a run directory"):
        RunManifest.load(tmp_path)


def test_report_rows_read_absent_and_null_fields_as_empty() -> None:
    row = FormatRow.from_dict({"name": "onnx", "latency_ms": None, "file": "model.onnx"})
    assert row.status == "ok" and row.latency("1") == {} and row.images_per_s == {}
    view = ReportView.from_dict({"baseline": None, "formats": [{"name": "onnx", "latency_ms": {"1": {"p50": 1.0}}}]})
    assert view.baseline == {} and view.weights == {} and view.latency_step == {} and view.format("int8") is None
    table = format_table({"baseline": {}, "formats": [{"name": "onnx", "file": "model.onnx",
                                                       "latency_ms": {"1": {"p50": 1.0, "p95": 2.0}}}]})
    assert "| ONNX | model.onnx | onnxruntime-cpu |" in table and "| 1.00 | 2.00 | — |" in table
