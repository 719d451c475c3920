"""The interleaved timer and the paired speedup estimator (export/latency.py) that the speed gates, the latency table
and the latency probe share: round order, per-round ratios, their standard error, robustness to drifting load (a
fake clock), and the sessions' thread spinning."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

import export.edge.timing as timing
import export.latency as lat
from export.runtime import OrtRunner, Runner, RunnerInfo


class FakeClock:
    """``perf_counter_ns`` / ``perf_counter`` that only move when a fake runner 'computes'."""

    def __init__(self) -> None:
        self.ns = 0
        self.calls = 0

    def perf_counter_ns(self) -> int:
        return self.ns

    def perf_counter(self) -> float:
        return self.ns / 1e9


class FakeRunner(Runner):
    """Each call costs ``ms`` × the clock's current load (``load(call_number)``) of fake time."""

    def __init__(self, clock: FakeClock, ms: float, load=lambda n: 1.0) -> None:
        self.clock, self.ms, self.load = clock, ms, load
        self.info = RunnerInfo(format="fake", precision="fp32", device="cpu", threads=1, input_chw=(3, 4, 4), name=f"fake{ms}")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self.clock.calls += 1
        self.clock.ns += int(self.ms * self.load(self.clock.calls) * 1e6)
        return np.zeros((batch.shape[0], 2), np.float32)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    # the protocol lives in export.edge.timing (the same code the edge bundle runs); export.latency re-exports it
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter_ns=c.perf_counter_ns, perf_counter=c.perf_counter))
    return c


def test_rounds_alternate_their_order_and_count_warmups() -> None:
    log: list[str] = []
    calls = [lambda: log.append("a"), lambda: log.append("b"), lambda: log.append("c")]
    samples = lat.interleaved_rounds(calls, rounds=3, per_round=[2, 1, 1], warmup=1)
    # round 0 forward, round 1 reverse, round 2 forward; each turn = 1 warmup + its timed calls
    assert "".join(log) == "aaabbcc" + "ccbbaaa" + "aaabbcc"
    assert [[len(r) for r in per] for per in samples] == [[2, 2, 2], [1, 1, 1], [1, 1, 1]]
    with pytest.raises(Exception, match="per-round count"):
        lat.interleaved_rounds(calls, rounds=2, per_round=[1, 1], warmup=0)


def test_paired_ratio_is_the_median_of_per_round_ratios_with_its_standard_error() -> None:
    ref = [[4.0, 4.2, 3.9], [8.0, 8.0, 8.1], [6.0, 6.0, 6.0], [5.0, 5.0, 5.0]]
    new = [[2.0, 2.0, 2.1], [4.0, 4.0, 4.0], [2.0, 2.0, 2.0], [2.5, 2.6, 2.5]]
    s = np.array([4.0 / 2.0, 8.0 / 4.0, 6.0 / 2.0, 5.0 / 2.5])  # per-round medians' ratios: 2, 2, 3, 2
    speed, se = lat.paired_ratio(ref, new)
    assert speed == pytest.approx(2.0)
    assert se == pytest.approx(1.2533 * s.std(ddof=1) / 2.0)  # = 1.2533 · 0.5 / √4 ≈ 0.313
    assert se == pytest.approx(0.3133, abs=1e-3)
    assert lat.paired_ratio([[3.0]], [[1.5]]) == (2.0, 0.0)


def test_paired_speedup_is_immune_to_load_that_drifts_between_rounds(clock: FakeClock) -> None:
    # the machine gets 3× slower after 60 calls (another job starts, mid-way through batch 1's rounds): pooled
    # latencies compare samples taken before and after the change, the per-round ratio does not (one mixed round)
    load = lambda n: 1.0 if n < 60 else 3.0  # noqa: E731
    ref, new = FakeRunner(clock, 4.0, load), FakeRunner(clock, 2.0, load)
    got = lat.paired_speedup(ref, new, batch_sizes=(1, 8), rounds=9, round_seconds=0.02, warmup=2)
    # about 20 ms of the reference per round, at least 3 calls: 5 × 4 ms before the change, 3 × 12 ms after it
    assert (got[1].calls_per_round, got[8].calls_per_round) == (5, 3)
    # per batch: 2 warmups of the new model, 2 + 1 sizing calls, 9 rounds × 2 models × (2 warmups + the timed calls)
    assert clock.calls == (2 + 3 + 9 * 2 * (2 + 5)) + (2 + 3 + 9 * 2 * (2 + 3))
    for b in (1, 8):
        assert got[b].speedup == pytest.approx(2.0)
    assert got[1].se < 0.2 and got[8].se == pytest.approx(0.0)  # batch 1 holds the one round that straddles the change
    assert got[8].ref_ms == pytest.approx(12.0) and got[8].new_ms == pytest.approx(6.0)
    assert got[1].to_dict()["rounds"] == 9
    with pytest.raises(Exception, match="rounds >= 2"):
        lat.paired_speedup(ref, new, rounds=1)


def test_paired_speedup_reports_noise_as_a_standard_error(clock: FakeClock) -> None:
    rng = np.random.default_rng(0)
    noisy = lambda n: float(rng.choice([1.0, 1.5]))  # noqa: E731 — every call 1× or 1.5× slower at random
    got = lat.paired_speedup(FakeRunner(clock, 3.0, noisy), FakeRunner(clock, 1.0, noisy), batch_sizes=(1,), rounds=21,
                             round_seconds=0.003, warmup=0)[1]
    assert got.calls_per_round == 3  # at least 3 calls per round
    assert 2.0 <= got.speedup <= 4.5 and 0.0 < got.se < 0.6


def test_ort_sessions_for_interleaved_timing_do_not_spin(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 4, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "relu.onnx"
    onnx.save(m, str(path))
    quiet = OrtRunner(path, threads=1, spinning=False)
    assert quiet.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert quiet.info.extra["spinning"] is False
    default = OrtRunner(path, threads=1)
    assert default.info.extra["spinning"] is True
    from export.layer_latency import ort_session

    s = ort_session(str(path), 1)
    assert s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    got = lat.paired_speedup(quiet, default, batch_sizes=(2,), rounds=3, round_seconds=0.001, warmup=1)[2]
    assert got.rounds == 3 and got.ref_ms > 0 and got.new_ms > 0 and got.speedup > 0


def test_speedup_rounds_are_validated() -> None:
    from pipeline.config import load_config

    with pytest.raises(Exception, match="export.speedup_rounds must be ≥ 2"):
        load_config(None, ["export.speedup_rounds=1"])


def test_report_shows_the_speedup_with_its_standard_error_and_the_rounds() -> None:
    from pipeline.report import speedup_section

    s = {"unpruned_ms": 1.0, "pruned_ms": 0.5, "speedup": 1.96, "speedup_se": 0.031, "rounds": 21, "flops_ratio": 2.0,
         "efficiency": 0.98}
    md = "\n".join(speedup_section({"speedup": {"1": s}, "speedup_int8": {"1": {**s, "speedup": 1.5, "efficiency": 0.75}}}))
    assert "| FP32 | 1 | 1.000 | 0.500 | 1.96× ± 0.03 | 2.00× | 0.98 |" in md
    assert "| INT8 (U8S8) | 1 | 1.000 | 0.500 | 1.50× ± 0.03 | 2.00× | 0.75 |" in md
    assert "median over 21 interleaved rounds" in md
    old = {k: v for k, v in s.items() if k not in ("speedup_se", "rounds")}  # a report written before the paired timer
    assert "| FP32 | 1 | 1.000 | 0.500 | 1.96× | 2.00× | 0.98 |" in "\n".join(speedup_section({"speedup": {"1": old}}))


def test_other_load_counts_the_machine_minus_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # (machine busy seconds, this process's CPU seconds) before and after 2 s of wall time on 2 cores: the machine was
    # busy 3.0 s, 1.8 s of it this process → other processes used 1.2 / (2 × 2) = 30 % of the capacity
    readings = iter([(100.0, 10.0), (103.0, 11.8)])
    clock = iter([0.0, 2.0])
    monkeypatch.setattr(timing, "_cpu_jiffies", lambda: next(readings))
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(timing.os, "cpu_count", lambda: 2)
    with lat.OtherLoad() as load:
        pass
    assert load.share == pytest.approx(0.30)
    readings, clock = iter([(0.0, 0.0), (1.0, 5.0)]), iter([0.0, 1.0])  # process time above machine time (clock skew): 0
    with lat.OtherLoad() as load:
        pass
    assert load.share == 0.0
    monkeypatch.setattr(timing, "_cpu_jiffies", lambda: None)  # no /proc/stat: unknown, not 0
    clock = iter([0.0, 1.0])
    with lat.OtherLoad() as load:
        pass
    assert load.share is None


def test_other_load_reads_this_machine() -> None:
    import sys

    got = timing._cpu_jiffies()
    if not sys.platform.startswith("linux"):
        assert got is None
        return
    assert got is not None and got[0] > 0 and got[1] > 0
    with lat.OtherLoad() as load:
        sum(range(200_000))
    assert load.share is not None and 0.0 <= load.share <= 1.0
