"""The nested prune config (``prune.criterion/target/steps/widths/recovery/depth/by_alignment``) and the flat keys of
earlier versions, read with a one-line hint (ccpcsa/pruning/settings.py, pipeline/config.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from ccpcsa.errors import UserError
from ccpcsa.pruning.settings import LEGACY_KEYS, PruneConfig, section_keys
from pipeline.__main__ import main
from pipeline.config import load_config, valid_keys

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
#: a value of the right type, other than the default, for every flat key of earlier versions
OTHER = {"method": "ccpcsa", "criterion_options": {"group": "max"}, "compensate": False, "calibration_images": 77,
         "target_flops_reduction": 0.35, "target_params_reduction": 0.2, "target_speedup": None,
         "target_latency_ms": None, "latency_batch": 4, "target_runtime": "onnxruntime-cpu", "pruner": "ccpcsa",
         "allocation": "cost", "max_iterations": 5, "groups_per_iteration": 3, "step_flops_reduction": 0.2,
         "tolerance": 2.5, "sensitivity_images": 99, "seed": 3, "round_to": 8, "round_to_wide": 16, "min_channels": 6,
         "max_layer_ratio": 0.8, "scope": "internal", "finetune_epochs": 2, "final_finetune_epochs": 4, "lr": 0.03,
         "lr_schedule": "continuous", "recalibrate_bn": 128, "remove_attention": True, "distill": True,
         "distill_weight": 0.4, "distill_temperature": 3.0, "distill_teacher": "baseline", "drop_blocks": ["layer1.1"]}


def test_prune_has_at_most_eight_entries_each_a_typed_section():
    """Seven entries: six dataclass sections and the by_alignment mapping; every old key maps onto a real new key."""
    fields = {f.name: f for f in dataclasses.fields(PruneConfig)}
    assert len(fields) <= 8
    sections = [n for n, f in fields.items() if dataclasses.is_dataclass(f.default_factory())]  # type: ignore[misc]
    assert sections == ["criterion", "target", "steps", "widths", "recovery", "depth"]
    added = {"depth.max_blocks", "depth.probe_images", "depth.min_speedup", "depth.price", "recovery.distill.views",
             "recovery.distill.features"}  # keys added after the sections: no flat name (legacy_flat)
    assert set(LEGACY_KEYS.values()) == set(section_keys()) - added  # one new key for each old one, none left over
    assert set(OTHER) == set(LEGACY_KEYS)


def test_every_old_flat_key_is_read_as_its_new_key_with_a_hint(tmp_path, capsys):
    """A YAML file with every flat key gives the same settings and the same stage keys as one with the nested keys, and
    says one hint per old key naming the new one; ``--set prune.<old>=…`` too."""
    old = yaml.safe_load(SMOKE.read_text())
    old["prune"] = dict(OTHER)
    new = yaml.safe_load(SMOKE.read_text())
    new["prune"] = {}
    for flat, value in OTHER.items():
        *parents, leaf = LEGACY_KEYS[flat].split(".")
        cur = new["prune"]
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = value
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(new))
    a = load_config(tmp_path / "old.yaml")
    hints = capsys.readouterr().err.splitlines()
    b = load_config(tmp_path / "new.yaml")
    assert capsys.readouterr().err == ""  # the new keys: no hint
    assert a.prune == b.prune and a.section_hash() == b.section_hash()
    assert a.prune.recovery.distill.weight == 0.4 and a.prune.steps.flops_reduction == 0.2
    assert len(hints) == len(OTHER)
    assert "note: prune.step_flops_reduction is now prune.steps.flops_reduction (read as that; the old key goes in a later version)" in hints
    c = load_config(SMOKE, ["prune.distill_temperature=2.5", "prune.target.flops_reduction=0.25"])
    assert (c.prune.recovery.distill.temperature, c.prune.target.flops_reduction) == (2.5, 0.25)
    assert capsys.readouterr().err.strip() == "note: prune.distill_temperature is now prune.recovery.distill.temperature " \
                                              "(read as that; the old key goes in a later version)"


def test_stage_keys_hash_the_flat_form_so_old_run_directories_resume():
    """The stage keys hash the settings under the old flat names (PruneConfig.legacy_flat): a config written the old
    way and the new way hash alike, and the flat form holds each old key with its value."""
    cfg = load_config(ROOT / "configs" / "default.yaml")
    flat = cfg.prune.legacy_flat()
    # depth.price came after the sections and this config sets it away from its default: hashed under its dotted name
    assert set(flat) == {*LEGACY_KEYS, "by_alignment", "depth.price"} and flat["depth.price"] == "time"
    assert flat["target_flops_reduction"] == cfg.prune.target.flops_reduction and flat["distill"] is True
    assert flat["by_alignment"][16]["step_flops_reduction"] == 0.4  # entries in the old names too
    changed = load_config(ROOT / "configs" / "default.yaml", ["prune.recovery.lr=0.03"])
    assert changed.section_hash("prune") != cfg.section_hash("prune")  # a real change still re-keys the stage


def test_by_alignment_entries_take_dotted_nested_and_old_keys(capsys):
    """An entry may name keys dotted, nested or the old flat way; all end as dotted keys with their types."""
    for entry in ("{4: {target.flops_reduction: 0.2, recovery.lr: 1}}", "{4: {target: {flops_reduction: 0.2}, recovery: {lr: 1}}}",
                  "{4: {target_flops_reduction: 0.2, lr: 1}}"):
        cfg = load_config(SMOKE, [f"prune.by_alignment={entry}"])
        assert cfg.prune.by_alignment == {4: {"target.flops_reduction": 0.2, "recovery.lr": 1.0}}, entry
        assert isinstance(cfg.prune.by_alignment[4]["recovery.lr"], float)
    assert "prune.by_alignment.4.target_flops_reduction is now prune.target.flops_reduction" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"prune.by_alignment.4 cannot set 'widths.round_to' \(it decides which entry"):
        load_config(SMOKE, ["prune.by_alignment={4: {widths.round_to: 8}}"])
    with pytest.raises(UserError, match="prune.by_alignment.4: prune.steps.tolerance must be ≥ 0"):
        load_config(SMOKE, ["prune.by_alignment={4: {steps.tolerance: -1}}"])


def test_bad_nested_values_name_the_new_key():
    """Range errors and unknown keys name the nested key and the way out."""
    with pytest.raises(UserError, match=r"prune.recovery.distill.weight must be in \[0, 1\]"):
        load_config(SMOKE, ["prune.recovery.distill.weight=2"])
    with pytest.raises(UserError, match=r"unknown config key 'prune.steps.flops_reduce'.*prune.steps.flops_reduction"):
        load_config(SMOKE, ["prune.steps.flops_reduce=0.1"])
    with pytest.raises(UserError, match="unknown prune key 'target.nope'"):
        PruneConfig.of({"target.nope": 1})


def test_pipeline_keys_prints_the_tree_and_the_flat_list(capsys):
    """``pipeline keys``: sections indented under ``prune`` with types and defaults; ``--flat``: the dotted keys."""
    assert main(["keys"]) == 0
    tree = capsys.readouterr().out.splitlines()
    assert "prune:" in tree and "  recovery:" in tree and "    distill:" in tree
    assert "      weight: 0.7  # float" in tree and "    flops_reduction: 0.4  # float" in tree
    assert main(["keys", "--flat"]) == 0
    flat = capsys.readouterr().out.split()
    assert flat == valid_keys() and "prune.recovery.distill.teacher" in flat and "prune.lr" not in flat
