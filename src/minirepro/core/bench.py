"""Paired timing for benchmarks on noisy machines.

Contenders are warmed up, then run in alternation (A B C A B C ...) so that slow drifts of
the machine (thermal, other tenants) hit all of them alike; we report medians and IQRs, and
ratios of medians. Compile/JIT time is measured apart with `first_call_time`.

    times = time_contenders({"ours": ours, "reference": ref}, repeats=20)
    report = BenchReport("flexattn")
    report.add_timings(times, baseline="reference", seq_len=1024)
    report.set_summary(speedup=ratio(times["reference"], times["ours"]))
    report.emit()  # a table, then one JSON document as the last line
"""

from __future__ import annotations

import functools
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minirepro.core.env import cpu_model, torch_info, usable_cores
from minirepro.core.results import jsonable

if TYPE_CHECKING:
    import torch
    from rich.console import Console

Timer = Callable[[], float]


@dataclass(frozen=True)
class Timing:
    """The times of one contender, in seconds, one per round."""

    name: str
    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def q1(self) -> float:
        return self._quartiles()[0]

    @property
    def q3(self) -> float:
        return self._quartiles()[2]

    @property
    def iqr(self) -> float:
        """Interquartile range, q3 - q1: the spread that ignores outliers."""
        q1, _, q3 = self._quartiles()
        return q3 - q1

    @property
    def best(self) -> float:
        return min(self.times)

    def _quartiles(self) -> tuple[float, float, float]:
        if len(self.times) < 2:
            return (self.times[0],) * 3
        q1, q2, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return q1, q2, q3

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "median_s": self.median,
            "iqr_s": self.iqr,
            "best_s": self.best,
            "n": len(self.times),
        }


def _auto_sync() -> Callable[[], None]:
    """Returns torch.cuda.synchronize when CUDA is in use in this process, else a no-op."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.synchronize
    return lambda: None


def first_call_time(
    fn: Callable[[], Any],
    *,
    sync: Callable[[], None] | None = None,
    timer: Timer = time.perf_counter,
) -> float:
    """Times one call of `fn`, e.g. the first call of a compiled function (compile + run).

    Args:
        fn: The function; call it before any warm-up for it to include compile/JIT time.
        sync: Called before and after, e.g. `torch.cuda.synchronize`; auto-detected if None.
        timer: The clock.

    Returns:
        Seconds.
    """
    sync = sync or _auto_sync()
    sync()
    start = timer()
    fn()
    sync()
    return timer() - start


def time_contenders(
    fns: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 2,
    repeats: int = 10,
    min_time: float = 0.0,
    max_repeats: int = 1000,
    sync: Callable[[], None] | None = None,
    timer: Timer = time.perf_counter,
) -> dict[str, Timing]:
    """Times contenders in alternation: warm-up, then rounds of A B C.

    Args:
        fns: Name -> zero-argument function, in the order they run within a round.
        warmup: Untimed calls of each contender before timing.
        repeats: Minimum number of timed rounds.
        min_time: Keep adding rounds until every contender has run this many seconds
            in total (at most `max_repeats` rounds).
        max_repeats: Upper bound on rounds.
        sync: Called around each timed call (`torch.cuda.synchronize` on a GPU);
            auto-detected if None.
        timer: The clock, `time.perf_counter` by default.

    Returns:
        Name -> Timing, in the order of `fns`.
    """
    if not fns:
        raise ValueError("no contenders to time")
    if repeats < 1 or max_repeats < repeats:
        raise ValueError(f"need 1 <= repeats <= max_repeats, got {repeats}, {max_repeats}")
    sync = sync or _auto_sync()
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    rounds = 0
    while rounds < repeats or (
        rounds < max_repeats and min(sum(t) for t in times.values()) < min_time
    ):
        for name, fn in fns.items():
            start = timer()
            fn()
            sync()
            times[name].append(timer() - start)
        rounds += 1
    return {name: Timing(name, tuple(t)) for name, t in times.items()}


def ratio(a: Timing | float, b: Timing | float) -> float:
    """Returns median(a) / median(b); `ratio(ref, ours)` is our speed-up over ref."""
    num = a.median if isinstance(a, Timing) else a
    den = b.median if isinstance(b, Timing) else b
    return num / den if den else math.inf


def paired_ratio(a: Timing, b: Timing) -> float:
    """Returns the median over rounds of a's time / b's time in the same round.

    Pairing cancels drifts that a ratio of medians only averages out.
    """
    if len(a.times) != len(b.times):
        raise ValueError(f"{a.name} and {b.name} were not timed in the same rounds")
    return statistics.median(x / y if y else math.inf for x, y in zip(a.times, b.times))


def machine_info() -> dict[str, Any]:
    """Returns the machine a benchmark ran on: CPU model, cores, torch version/threads, GPU."""
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        **torch_info(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@functools.cache
def peak_matmul_flops(
    sizes: tuple[int, ...] = (512, 1024, 2048),
    dtype: torch.dtype | None = None,
    duration: float = 0.3,
    device: str = "cpu",
) -> float:
    """Measures the achieved FLOP/s of `torch.matmul` on square matrices; cached per process.

    The machine's practical peak, against which a kernel's FLOP/s is reported.

    Args:
        sizes: Matrix sizes n to try; the best is kept.
        dtype: Element type, float32 by default.
        duration: Seconds spent timing each size (at least three calls each).
        device: "cpu" or "cuda".

    Returns:
        The best FLOP/s over sizes, counting 2 n^3 per product.
    """
    import torch

    dtype = dtype or torch.float32
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(0)
    best_flops = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
        b = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
        out = torch.empty(n, n, dtype=dtype, device=device)
        torch.matmul(a, b, out=out)  # warm-up: allocation, thread pool
        sync()
        best, calls, start = math.inf, 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - start < duration:
            t0 = time.perf_counter()
            torch.matmul(a, b, out=out)
            sync()
            best = min(best, time.perf_counter() - t0)
            calls += 1
        best_flops = max(best_flops, 2 * n**3 / best)
    return best_flops


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


class BenchReport:
    """A benchmark's table and its one-line JSON document.

    Attributes:
        paper: Paper id.
        cases: One dict per measured case (flat: names to numbers or text).
        summary: Headline numbers, e.g. the speed-up at the paper's setting.
    """

    def __init__(self, paper: str, *, machine: Mapping[str, Any] | None = None) -> None:
        """Starts an empty report.

        Args:
            paper: Paper id.
            machine: The machine description; `machine_info()` if None (looked up lazily).
        """
        self.paper = paper
        self.cases: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self._machine = dict(machine) if machine is not None else None

    @property
    def machine(self) -> dict[str, Any]:
        if self._machine is None:
            self._machine = machine_info()
        return self._machine

    def add_case(self, **row: Any) -> None:
        """Adds one row, e.g. `add_case(seq_len=1024, impl="ours", median_ms=3.1)`."""
        self.cases.append(row)

    def add_timings(
        self, timings: Mapping[str, Timing], *, baseline: str | None = None, **common: Any
    ) -> None:
        """Adds one row per contender: median and IQR in ms, and speed-up over `baseline`.

        Args:
            timings: The result of `time_contenders`.
            baseline: The contender the others are compared with (`speedup` = its median
                over theirs).
            **common: Columns shared by these rows, e.g. `seq_len=1024`.
        """
        base = timings[baseline] if baseline is not None else None
        for name, t in timings.items():
            row = {**common, "impl": name, "median_ms": t.median * 1e3, "iqr_ms": t.iqr * 1e3}
            if base is not None:
                row["speedup"] = ratio(base, t)
            self.add_case(**row)

    def set_summary(self, **values: Any) -> None:
        """Sets headline values, e.g. `set_summary(speedup_at_4k=2.3)`."""
        self.summary.update(values)

    def to_dict(self) -> dict[str, Any]:
        """Returns `{"paper", "machine", "cases", "summary"}` as strict JSON types."""
        return jsonable(
            {
                "paper": self.paper,
                "machine": self.machine,
                "cases": self.cases,
                "summary": self.summary,
            }
        )

    def print_table(self, console: Console | None = None) -> None:
        """Prints the cases as a rich table, then the summary."""
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # Piped output (CI logs, `| tail`) gets a wide table rather than rich's 80 columns.
        console = console or Console(width=None if sys.stdout.isatty() else 200)
        columns: dict[str, None] = {}
        for row in self.cases:
            columns.update(dict.fromkeys(row))
        table = Table(title=f"{self.paper} benchmark")
        for col in columns:
            table.add_column(col, justify="right")
        for row in self.cases:
            table.add_row(*(_cell(row.get(col)) for col in columns))
        console.print(table)
        for key, value in self.summary.items():
            console.print(Text.assemble((key, "bold"), f": {_cell(value)}"))
        m = self.machine
        gpu = f", {m['gpu']}" if m.get("gpu") else ""
        console.print(
            Text(f"{m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}{gpu}", "dim")
        )

    def emit(self, path: str | Path | None = None, *, console: Console | None = None) -> dict:
        """Prints the table, then the JSON document as the last line of stdout.

        Args:
            path: Also write the JSON document to this file.
            console: The rich console for the table; stdout by default.

        Returns:
            The document.
        """
        doc = self.to_dict()
        self.print_table(console)
        line = json.dumps(doc, allow_nan=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(line + "\n")
        print(line, flush=True)
        return doc
