"""Mixed precision on the CPU (issue #38 item 1): ``train.amp`` trains in bf16 autocast where the CPU has native bf16
(AVX512_BF16 / AMX-BF16) and in float32 elsewhere; statistics hooks stay in float32 under autocast.

The CPU kind is set through ``ccpcsa.placement.cpu_flags`` (the one reader of ``/proc/cpuinfo``), so both
branches run on any machine: bf16 kernels are emulated where the CPU lacks them, slower but exact to bf16 rounding.
"""

from __future__ import annotations

import math

import pytest
import torch

from ccpcsa import placement
from ccpcsa.criteria.stats import ChannelStatsCollector
from ccpcsa.data import load_data
from ccpcsa.training.engine import fit
from deploy_tests.placement_helpers import _cfg, _tiny

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic?size=16&train=256&test=64", seed=0, progress=False)


def test_amp_dtype_follows_the_cpu_flags_and_the_setting():
    assert placement.amp_dtype(CPU, True, frozenset({"avx512f", "avx512_bf16"}))[0] is torch.bfloat16
    assert placement.amp_dtype(CPU, True, frozenset({"avx512f", "amx_tile", "amx_bf16"}))[0] is torch.bfloat16
    dtype, why = placement.amp_dtype(CPU, True, frozenset({"avx2", "fma"}))
    assert dtype is None and "no native bf16" in why
    dtype, why = placement.amp_dtype(CPU, True, frozenset({"avx512f", "avx512_vnni"}))  # VNNI alone: emulated bf16
    assert dtype is None
    assert placement.amp_dtype(CPU, False, frozenset({"avx512_bf16"})) == (None, "train.amp is off")
    assert placement.amp_dtype(torch.device("cuda", 0), True, frozenset())[0] is torch.bfloat16
    assert placement.amp_dtype(torch.device("meta"), True, frozenset({"avx512_bf16"}))[0] is None


@pytest.mark.parametrize("flags, expect", [({"avx512f", "avx512_bf16"}, torch.bfloat16), ({"avx2", "fma"}, torch.float32)])
def test_fit_trains_in_the_dtype_the_cpu_gets(data, monkeypatch, flags, expect):
    monkeypatch.setattr(placement, "cpu_flags", lambda: frozenset(flags))
    model = _tiny()
    seen: list[torch.dtype] = []
    model.block[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
    res = fit(model, data, _cfg(amp=True), device="cpu", progress=False)
    assert seen and set(seen) == {expect}
    assert res.speed["amp"].startswith("bfloat16 autocast (CPU with avx512_bf16)" if expect is torch.bfloat16 else "float32 (")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights and optimizer stay float32
    assert math.isfinite(res.history[-1]["train_loss"]) and 0 <= res.val_accuracy <= 100


def test_channel_statistics_stay_float32_under_bf16_autocast():
    """The collector's Σxxᵀ is the float32 product of the (bf16-valued) feature maps, not a bf16 matmul: without
    :func:`ccpcsa.placement.float32_math` its relative error is ≈ 1e-3 (bf16 inputs, 8-bit mantissa), with it ≈ 1e-7."""
    model = _tiny().train()
    captured: list[torch.Tensor] = []
    model.block[0].register_forward_hook(lambda m, i, o: captured.append(o.detach().double()))
    torch.manual_seed(1)
    x = torch.randn(16, 3, 16, 16)
    with ChannelStatsCollector(model, ["block.0"]) as col, torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    out = captured[0]
    assert out.dtype == torch.float64 and col.stats.moments["block.0"].n == 16 * 16 * 16
    flat = out.transpose(0, 1).reshape(out.shape[1], -1)
    want = flat @ flat.T
    got = col.stats.moments["block.0"].s2
    rel = float((got - want).abs().max() / want.abs().max())
    assert rel < 1e-5, rel
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the hook would compute without float32_math
        lowp = (flat.float() @ flat.float().T).double()
    assert float((lowp - want).abs().max() / want.abs().max()) > 10 * rel
