"""One spelling per run-directory file: :mod:`pipeline.artifacts` names them, the stages declare what they read and
write with those names, and no other module of the packages spells them (the bundle's on-device scripts run without
the project, so they keep their own spelling, checked equal here)."""

from __future__ import annotations

import re
from pathlib import Path

from export.edge import infer, target_probe, validate_on_device
from export.target_profile import PACK_MODELS
from pipeline import artifacts
from pipeline.artifacts import LABELS, MANIFEST, PROMISE
from pipeline.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
#: modules that keep a literal spelling: the names' own module, the report (owned by its own change) and the probe pack
#: (its own folder, whose INT8 model happens to share the run's file name)
KEEP = {"pipeline/artifacts.py", "pipeline/report.py", "export/target_profile.py"}


def test_each_stage_reads_what_an_earlier_stage_wrote() -> None:
    written: set[str] = {MANIFEST}
    for stage in STAGES:
        assert set(stage.inputs) <= written, (stage.name, set(stage.inputs) - written)
        assert not set(stage.outputs) & written, (stage.name, set(stage.outputs) & written)
        written |= set(stage.outputs)


def test_the_on_device_scripts_spell_the_bundle_names_alike() -> None:
    assert infer.LABELS_FILE == LABELS and validate_on_device.PROMISE_FILE == PROMISE
    assert target_probe.PACK_FILE == "pack.json" and set(PACK_MODELS) == {"fp32", "int8"}


def test_no_module_spells_a_run_directory_file() -> None:
    names = sorted({v for k, v in vars(artifacts).items() if k.isupper() and isinstance(v, str) and "." in v})
    pattern = re.compile("|".join(rf'"{re.escape(n)}"' for n in names))
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for pkg in ("ccpcsa", "export", "pipeline", "bench") for p in sorted((ROOT / pkg).rglob("*.py"))
            if p.relative_to(ROOT).as_posix() not in KEEP and "edge" not in p.parts
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)
