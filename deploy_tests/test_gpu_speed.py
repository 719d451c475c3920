"""GPU-speed plumbing (issue 14): the device-resident loader, ``torch.compile`` and its fallback, deferred loss checks.

What makes a fit fast on CUDA must not change what it computes: on the CPU the same code paths are checked against
the host loader and eager training; tests marked ``cuda`` repeat them on a GPU (skipped here). Placement itself
(one helper decides where models live): :mod:`deploy_tests.test_placement`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from ccpcsa import placement
from ccpcsa.data import BatchLoader, augment_batch, load_data
from ccpcsa.data.transforms import apply_augment, draw_augment
from ccpcsa.errors import UserError
from ccpcsa.training.engine import TrainConfig, fit
from deploy_tests.placement_helpers import _cfg, _tiny


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic?size=16&train=256&test=64", seed=0, progress=False)


# ------------------------------------------------------------------------------------------- GPU-speed plumbing
def test_draw_then_apply_equals_augment_batch():
    x = torch.randint(0, 256, (5, 8, 8, 3), dtype=torch.uint8)
    a = augment_batch(x, torch.Generator().manual_seed(3))
    b = apply_augment(x, *draw_augment(5, torch.Generator().manual_seed(3)))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(3)
    whole = draw_augment(9, g)
    g = torch.Generator().manual_seed(3)
    parts = [draw_augment(4, g), draw_augment(5, g)]
    # a whole epoch drawn batch by batch is a different sequence than one long draw — the loader draws per batch
    assert not torch.equal(whole[0], torch.cat([parts[0][0], parts[1][0]]))


@pytest.mark.parametrize("world_size", [1, 2])
def test_resident_loader_gives_the_host_loaders_batches(data, world_size):
    for rank in range(world_size):
        kw = dict(shuffle=True, augment=True, seed=5, drop_last=False, rank=rank, world_size=world_size, channels_last=True)
        host = BatchLoader(data.train, 48, data.mean, data.std, resident=False, **kw)
        dev = BatchLoader(data.train, 48, data.mean, data.std, resident=True, **kw)
        assert dev.resident and not host.resident
        for epoch in (0, 3):
            host.set_epoch(epoch)
            dev.set_epoch(epoch)
            pairs = list(zip(host, dev, strict=True))
            assert len(pairs) == len(host)
            for (xh, yh), (xd, yd) in pairs:
                assert torch.equal(yh, yd) and torch.equal(xh, xd)
                assert xd.is_contiguous(memory_format=torch.channels_last)


def test_loader_is_resident_only_on_cuda_by_default(data):
    assert not BatchLoader(data.train, 32, data.mean, data.std).resident


def test_train_config_compile_key_is_validated():
    TrainConfig(compile="off").validate()
    with pytest.raises(UserError, match="train.compile 'maybe' unknown; use one of auto, on, off"):
        TrainConfig(compile="maybe").validate()


def test_compile_decision_rules():
    from ccpcsa.training.speed import COMPILE_MIN_STEPS, compile_decision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_decision("auto", cuda, COMPILE_MIN_STEPS, False, False)[0]
    assert not compile_decision("auto", cuda, COMPILE_MIN_STEPS - 1, False, False)[0]
    assert not compile_decision("auto", cpu, 10**6, False, False)[0]
    assert not compile_decision("auto", cuda, 10**6, True, False)[0]
    assert compile_decision("on", cpu, 1, False, False)[0]
    on_hooks = compile_decision("on", cuda, 10**6, False, True)
    assert not on_hooks[0] and "hooks" in on_hooks[1]
    assert compile_decision("off", cuda, 10**6, False, False) == (False, "train.compile is off")


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def test_compiled_fit_plumbing_matches_eager(monkeypatch, data):
    """``compile=on`` through torch.compile's eager backend: the compiled path trains exactly like eager."""
    from ccpcsa.training import speed as train_speed

    monkeypatch.setattr(train_speed, "COMPILE_KWARGS", {"backend": "eager"})
    eager, comp = _tiny(), _tiny()
    fit(eager, data, _cfg(compile="off", max_steps_per_epoch=3), progress=False)
    r = fit(comp, data, _cfg(compile="on", max_steps_per_epoch=3), progress=False)
    assert r.speed["compiled"] is True and r.speed["compile_note"] == "train.compile is on"
    for a, b in zip(_weights(eager), _weights(comp), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_compile_failure_falls_back_to_eager_with_identical_training(monkeypatch, data):
    from ccpcsa.training import speed as train_speed

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no working compiler on this machine")

    monkeypatch.setattr(train_speed, "COMPILE_KWARGS", {"backend": broken_backend})
    eager, comp = _tiny(), _tiny()
    fit(eager, data, _cfg(compile="off"), progress=False)
    r = fit(comp, data, _cfg(compile="on"), progress=False)
    assert r.speed["compiled"] is False and "compile failed" in r.speed["compile_note"]
    assert "no working compiler" in r.speed["compile_note"]
    for a, b in zip(_weights(eager), _weights(comp), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_statistics_hooks_keep_fit_eager_even_with_compile_on(monkeypatch, data):
    from ccpcsa.criteria.stats import ChannelStatsCollector
    from ccpcsa.training import speed as train_speed

    monkeypatch.setattr(train_speed, "COMPILE_KWARGS", {"backend": "eager"})
    model = _tiny()
    with ChannelStatsCollector(model, ["stem.1"]) as col:
        r = fit(model, data, _cfg(compile="on", max_steps_per_epoch=2), progress=False)
    assert r.speed["compiled"] is False and "hooks" in r.speed["compile_note"]
    assert col.stats.moments["stem.1"].n == 2 * 32 * 16 * 16


class _HostReads:
    """Counts tensor → host reads (``item``, ``bool``, ``float``, ``int``, ``tolist``): each is a sync on a GPU."""

    NAMES = ("item", "__bool__", "__float__", "__int__", "tolist")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            real = getattr(torch.Tensor, name)

            def wrapper(t, *a, _real=real, **k):
                self.count += 1
                return _real(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, wrapper)


def test_fit_reads_the_host_once_per_window_not_per_step(monkeypatch, data):
    """With the GPU's check interval the training loop reads device values once per window (CPU: every step)."""
    empty_val = replace(data, val=type(data.val)(data.val.images[:0], data.val.labels[:0]))
    steps = 8
    cfg = _cfg(max_steps_per_epoch=steps, batch_size=16)
    reads = _HostReads(monkeypatch)
    fit(_tiny(), empty_val, cfg, progress=False)
    per_step = reads.count
    monkeypatch.setattr("ccpcsa.training.engine.check_interval", lambda device: 4)
    reads.count = 0
    r = fit(_tiny(), empty_val, cfg, progress=False)
    assert r.speed["check_every"] == 4
    assert per_step >= steps  # the CPU checks each step's loss
    assert reads.count <= 2 + 3, f"{reads.count} host reads for {steps} steps"  # 2 windows + the epoch totals


def test_non_finite_loss_still_raises_naming_the_first_bad_step(monkeypatch):
    from ccpcsa.training.speed import StepMonitor

    mon = StepMonitor(torch.device("cpu"), 3, epoch=1)
    losses = [1.0, 0.9, 0.8, 0.7, 0.6, float("nan"), 0.5, 0.4, 0.3]
    with pytest.raises(RuntimeError, match=r"loss became nan at epoch 2, step 5; lower train.lr"):
        for i, v in enumerate(losses):
            mon.observe(i, torch.tensor(v))
            mon.accumulate(torch.tensor(v), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
        mon.finish()
    ok = StepMonitor(torch.device("cpu"), 4, epoch=0)
    for i in range(6):
        ok.observe(i, torch.tensor(1.0))
        ok.accumulate(torch.tensor(1.0), torch.eye(3)[:2], torch.tensor([0, 1]))
    assert ok.finish() == (12.0, 12.0, 12.0)


def test_fit_with_deferred_checks_raises_the_same_clear_error(monkeypatch, data):
    monkeypatch.setattr("ccpcsa.training.engine.check_interval", lambda device: 4)
    with pytest.raises(RuntimeError, match=r"loss became (nan|inf) at epoch 1, step \d+; lower train.lr"):
        fit(_tiny(), data, _cfg(lr=1e12, max_steps_per_epoch=8, batch_size=16), progress=False)


# ------------------------------------------------------------------------------------------------------ on a GPU
@pytest.mark.cuda
def test_cuda_resident_loader_matches_the_host_path(data):
    kw = dict(shuffle=True, augment=True, seed=2, drop_last=True)
    host = BatchLoader(data.train, 32, data.mean, data.std, **kw)
    dev = BatchLoader(data.train, 32, data.mean, data.std, device="cuda", **kw)
    assert dev.resident
    for (xh, yh), (xd, yd) in zip(host, dev, strict=True):
        assert torch.equal(yh, yd.cpu()) and torch.allclose(xh, xd.cpu(), atol=1e-6)


@pytest.mark.cuda
def test_cuda_fit_has_no_host_sync_per_step(data):
    empty_val = replace(data, val=type(data.val)(data.val.images[:0], data.val.labels[:0]))
    steps = 60
    cfg = _cfg(max_steps_per_epoch=steps, batch_size=4, compile="off")
    fit(_tiny(), empty_val, replace(cfg, max_steps_per_epoch=2), device="cuda", progress=False)  # warm-up (cuDNN autotuning)
    import warnings

    model = placement.place(_tiny(), "cuda")  # moving the weights syncs once per tensor: not part of the steps
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(model, empty_val, cfg, device="cuda", progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) < steps // 2, f"{len(syncs)} synchronizing calls in {steps} steps"


@pytest.mark.cuda
def test_cuda_compiled_fit_trains(data):
    r = fit(_tiny(), data, _cfg(compile="on", epochs=2, max_steps_per_epoch=6), device="cuda", progress=False)
    assert np.isfinite(r.history[-1]["train_loss"]) and "compile" in r.speed["compile_note"]
