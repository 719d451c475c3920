"""Training engine: learns, resumes, runs under torchrun/DDP with identical weights; the pruning guard."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ccpcsa.criteria import get_criterion
from ccpcsa.io.checkpoint import ModelSpec, load_checkpoint
from ccpcsa.models import build_model, count_complexity
from ccpcsa.pruning.loop import PruneConfig, run_pruning
from ccpcsa.training.engine import TrainConfig, evaluate, fit, lr_factor

ROOT = Path(__file__).resolve().parents[1]
SMALL = "deploy_tests.byo_model:tiny_net"


@pytest.fixture(scope="module")
def trained(synthetic_data):
    # A fixed init: without it the init came from whatever RNG state the xdist worker was in (torch 2.13 seeds a fresh
    # process at random; after another test's torch.manual_seed(0) it reached 89.9 %, a flaky failure of the 90 % bar).
    # 67280421310721 is torch's classic default seed.
    torch.manual_seed(67280421310721)
    model = build_model(SMALL, 10, width=16)
    cfg = TrainConfig(epochs=5, batch_size=64, lr=0.05, schedule="onecycle", seed=0)
    result = fit(model, synthetic_data, cfg, progress=False)
    return model, result


def test_small_cnn_learns_synthetic(trained, synthetic_data):
    model, result = trained
    acc, _ = evaluate(model, synthetic_data.test, synthetic_data.mean, synthetic_data.std)
    assert acc >= 90.0, f"test accuracy {acc:.1f}% on synthetic"
    assert len(result.history) == 5 and result.history[-1]["val_acc"] >= 88.0


def test_schedules():
    cfg = TrainConfig(lr=0.1, schedule="onecycle", pct_start=0.25)
    assert lr_factor(0, 100, cfg, 10) == pytest.approx(1 / 25)
    assert lr_factor(25, 100, cfg, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, cfg, 10) < 1e-3
    cos = replace(cfg, schedule="cosine", warmup_epochs=1)
    assert lr_factor(9, 100, cos, 10) == pytest.approx(1.0) and lr_factor(100, 100, cos, 10) == pytest.approx(0.0)


def test_checkpoint_resume_continues(tmp_path, synthetic_data):
    spec = ModelSpec(SMALL, 10, 32, {"width": 8})
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, max_steps_per_epoch=5, seed=1)
    ck = tmp_path / "train.pt"
    torch.manual_seed(5)
    full = build_model(SMALL, 10, width=8)
    fit(full, synthetic_data, cfg, checkpoint=tmp_path / "full.pt", spec=spec, progress=False)
    # interrupted after epoch 1, then resumed: same weights as the uninterrupted run
    torch.manual_seed(5)
    first = build_model(SMALL, 10, width=8)
    with pytest.raises(_Stop):
        fit(first, synthetic_data, cfg, checkpoint=ck, spec=spec, progress=False, on_epoch_end=_stop_after_first)
    raw = torch.load(ck, weights_only=True)
    assert raw["train_state"]["epoch"] == 0
    resumed = build_model(SMALL, 10, width=8)
    result = fit(resumed, synthetic_data, cfg, checkpoint=ck, spec=spec, resume=True, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert load_checkpoint(ck).spec.kwargs == {"width": 8}


class _Stop(Exception):
    pass


def _stop_after_first(epoch: int, row: dict) -> None:
    if epoch == 0:
        raise _Stop


def test_ddp_two_cpu_ranks_end_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ccpcsa", "train",
           "--model", SMALL, "--data", "synthetic:512:128", "--epochs", "1", "--batch-size", "32", "--max-steps-per-epoch", "4",
           "--quiet", "--print-weights-hash", "--device", "cpu", "--out", str(tmp_path / "ddp.pt")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hashes = dict(re.findall(r"rank (\d) weights sha256 ([0-9a-f]{64})", proc.stdout))
    assert set(hashes) == {"0", "1"}, proc.stdout
    assert hashes["0"] == hashes["1"]
    assert '"world_size": 2' in proc.stdout


def test_guard_restores_last_accepted_model(trained, synthetic_data):
    model = copy.deepcopy(trained[0])
    base = count_complexity(model)
    train_cfg = TrainConfig(batch_size=64, max_steps_per_epoch=2)
    # lr≈0 and no fine-tuning: a 60% cut cannot recover, so the drop exceeds τ and the loop must restore
    cfg = PruneConfig.of(criterion__name="l1", target__flops_reduction=0.6, steps__flops_reduction=0.6, steps__tolerance=0.5, recovery__finetune_epochs=0,
                      recovery__final_finetune_epochs=0, recovery__lr=1e-9, widths__round_to=1, widths__min_channels=1)
    res = run_pruning(model, synthetic_data, get_criterion("l1"), cfg, train_cfg, progress=False)
    assert res.history and res.history[0]["accepted"] is False and res.history[0]["drop_pp"] >= 0.5
    assert count_complexity(res.model) == base  # restored: the unpruned architecture
    assert res.iterations == 0 and "tolerance" in res.stop_reason
    # with a generous tolerance the same cut is accepted and the model really shrinks
    model2 = copy.deepcopy(trained[0])
    res2 = run_pruning(model2, synthetic_data, get_criterion("l1"), cfg.updated({"steps.tolerance": 100.0}), train_cfg, progress=False)
    assert res2.history[0]["accepted"] and count_complexity(res2.model).macs <= 0.4 * base.macs * 1.001


def test_removing_bam_is_followed_by_a_finetune_even_when_no_iteration_is_accepted(trained, synthetic_data):
    """remove_attention detaches BAM after the loop; the network then needs the final fine-tune even if the guard
    rejected the first iteration (it did not run in that case before: a 29 pp drop in a default deploy)."""
    from ccpcsa.models.attention import attach_bam, bam_modules

    train_cfg = TrainConfig(batch_size=64, max_steps_per_epoch=2)
    cfg = PruneConfig.of(criterion__name="l1", target__flops_reduction=0.6, steps__flops_reduction=0.6, steps__tolerance=0.5, recovery__finetune_epochs=0,
                      recovery__final_finetune_epochs=1, recovery__lr=1e-9, widths__round_to=1, widths__min_channels=1, recovery__remove_attention=True)
    runs = {}
    for final in (0, 1):
        model = copy.deepcopy(trained[0])
        attach_bam(model)
        assert bam_modules(model)
        res = run_pruning(model, synthetic_data, get_criterion("l1"), cfg.updated({"recovery.final_finetune_epochs": final}), train_cfg,
                          progress=False)
        assert res.iterations == 0 and not bam_modules(res.model)
        runs[final] = {k: v.clone() for k, v in res.model.state_dict().items() if k.endswith("running_mean")}
    # the fine-tune ran (BN statistics moved) only when it was asked for
    assert any(not torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
