"""Paired timing: alternation order, statistics, the JSON last line of a report."""

import json
import statistics

import pytest

from minirepro.core.bench import (
    BenchReport,
    Timing,
    first_call_time,
    machine_info,
    paired_ratio,
    peak_matmul_flops,
    ratio,
    time_contenders,
)


class FakeClock:
    """A timer that advances only when a contender 'works' for a known duration."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_contenders_alternate_after_warmup() -> None:
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "ABC"}
    times = time_contenders(fns, warmup=2, repeats=4)
    assert calls[:6] == ["A", "A", "B", "B", "C", "C"]  # warm-up, each in turn
    assert calls[6:] == ["A", "B", "C"] * 4  # timed rounds alternate
    assert list(times) == ["A", "B", "C"] and all(len(t.times) == 4 for t in times.values())


def test_medians_on_a_fake_clock() -> None:
    clock = FakeClock()
    durations = {"fast": iter([1.0, 2.0, 3.0, 100.0, 2.0]), "slow": iter([4.0] * 5)}

    def work(name: str) -> None:
        clock.now += next(durations[name])

    fns = {name: (lambda name=name: work(name)) for name in durations}
    times = time_contenders(fns, warmup=0, repeats=5, timer=clock)
    assert times["fast"].times == (1.0, 2.0, 3.0, 100.0, 2.0)
    assert times["fast"].median == 2.0  # robust to the 100 s outlier
    assert times["fast"].iqr == pytest.approx(1.0)  # quartiles 2 and 3
    assert ratio(times["slow"], times["fast"]) == 2.0
    assert paired_ratio(times["slow"], times["fast"]) == 2.0


def test_min_time_adds_rounds() -> None:
    clock = FakeClock()

    def tick() -> None:
        clock.now += 0.25  # exact in binary, so the sums are too

    times = time_contenders({"a": tick}, warmup=0, repeats=2, min_time=1.0, timer=clock)
    assert len(times["a"].times) == 4  # 4 x 0.25 s reaches min_time
    capped = time_contenders({"a": tick}, repeats=2, min_time=1e9, max_repeats=5, timer=clock)
    assert len(capped["a"].times) == 5


def test_sleep_based_contenders() -> None:
    import time

    times = time_contenders(
        {"short": lambda: time.sleep(0.002), "long": lambda: time.sleep(0.01)},
        warmup=1,
        repeats=5,
    )
    assert times["short"].median < times["long"].median
    assert ratio(times["long"], times["short"]) > 2


def test_sync_is_called_and_first_call_time() -> None:
    synced: list[int] = []
    time_contenders({"a": lambda: None}, warmup=0, repeats=3, sync=lambda: synced.append(1))
    assert len(synced) == 1 + 3  # after warm-up, then after each timed call
    clock = FakeClock()

    def compile_and_run() -> None:
        clock.now += 5.0

    assert first_call_time(compile_and_run, timer=clock) == 5.0


def test_timing_statistics() -> None:
    t = Timing("x", (5.0, 1.0, 3.0, 2.0, 4.0))
    assert t.median == statistics.median(t.times) == 3.0 and t.best == 1.0
    assert Timing("one", (2.0,)).iqr == 0.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        time_contenders({})
    with pytest.raises(ValueError):
        time_contenders({"a": lambda: None}, repeats=0)


def test_machine_info_and_peak_flops() -> None:
    info = machine_info()
    assert {"cpu", "cores", "torch", "torch_threads"} <= set(info)
    flops = peak_matmul_flops(sizes=(64, 128), duration=0.02)
    assert 1e6 < flops < 1e16
    assert peak_matmul_flops(sizes=(64, 128), duration=0.02) == flops  # cached per process


def test_emit_last_line_is_json(capsys, tmp_path) -> None:
    report = BenchReport("toy", machine={"cpu": "test cpu", "cores": 2, "torch": "x"})
    clock = FakeClock()
    fns = {
        "ref": lambda: setattr(clock, "now", clock.now + 2.0),
        "ours": lambda: setattr(clock, "now", clock.now + 1.0),
    }
    report.add_timings(time_contenders(fns, repeats=3, timer=clock), baseline="ref", n=64)
    report.add_case(n=128, impl="ours", median_ms=float("nan"))
    report.set_summary(speedup=2.0, note="[not markup]")
    doc = report.emit(tmp_path / "bench.json")
    lines = capsys.readouterr().out.strip().splitlines()
    assert "[not markup]" in "\n".join(lines)
    last = json.loads(lines[-1])
    assert last == doc == json.loads((tmp_path / "bench.json").read_text())
    assert set(last) == {"paper", "machine", "cases", "summary"}
    assert last["paper"] == "toy" and last["summary"]["speedup"] == 2.0
    assert [c["impl"] for c in last["cases"]] == ["ref", "ours", "ours"]
    assert last["cases"][1]["speedup"] == 2.0 and last["cases"][1]["median_ms"] == 1000.0
    assert last["cases"][2]["median_ms"] is None  # NaN -> null: strict JSON
