"""What the command line prints: verdict tables readable in a terminal and in a pipe.

In a terminal, rich tables in which the claim column takes the width the numbers leave it
(numbers never wrap, so a long claim is not squeezed to a few words per line). When stdout
is not a terminal (a log file, `| less`, CI), rich would wrap every cell at 80 columns, so
the same rows print as one unwrapped line each instead (`Console.is_terminal` decides).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from minirepro.core.report import DashboardRow, format_duration
from minirepro.core.results import Result

VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "error": "bold magenta"}


def _style(word: str) -> str:
    return VERDICT_STYLE.get(word, "dim")


def print_results(
    console: Console, rows: Sequence[tuple[str, Result]], title: str | None = None
) -> None:
    """Prints one row per Result: paper (if several), claim, paper's value, ours, verdict."""
    if not console.is_terminal:
        if title:
            console.print(Text(title, "bold"), soft_wrap=True)
        width = max((len(pid) for pid, _ in rows), default=0)
        for pid, r in rows:
            line = Text.assemble(
                (f"{r.verdict:<5}", _style(r.verdict)),
                f"  {pid:<{width}}  {r.claim} | ours {r.format_measured()} | "
                f"paper {r.format_paper_value()} | {r.criterion}",
            )
            console.print(line, soft_wrap=True)
        return
    several = len({pid for pid, _ in rows}) > 1
    table = Table(title=title, title_justify="left")
    if several:
        table.add_column("paper", no_wrap=True)
    table.add_column("claim", ratio=1, min_width=24, overflow="fold")
    table.add_column("paper's value", max_width=22, overflow="fold")
    table.add_column("ours (mean ± std)", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for pid, r in rows:
        cells = [r.claim, r.format_paper_value(), r.format_measured()]
        table.add_row(*([pid] if several else []), *cells, Text(r.verdict, _style(r.verdict)))
    console.print(table)


def _headline(row: DashboardRow) -> str:
    head = row.headline
    if head is not None:
        return f"{head.claim}: {head.format_measured()} (paper {head.format_paper_value()})"
    return row.run.error or "" if row.run else ""


def print_dashboard(console: Console, rows: Sequence[DashboardRow]) -> None:
    """Prints one row per paper: status, pass/fail counts, wall time, headline."""
    counts = [
        (str(r.run.n_pass), str(r.run.n_fail)) if r.run and r.run.error is None else ("", "")
        for r in rows
    ]
    if not console.is_terminal:
        width = max((len(r.paper) for r in rows), default=0)
        status_width = max((len(r.status) for r in rows), default=0)
        for row, (n_pass, n_fail) in zip(rows, counts, strict=True):
            tally = f"{n_pass} pass {n_fail} fail" if n_pass else ""
            wall = format_duration(row.run.wall_s) if row.run else ""
            line = Text.assemble(
                f"{row.paper:<{width}}  ",
                (f"{row.status:<{status_width}}", _style(row.status)),
                f"  {tally:<15} {wall:>7}  {_headline(row)}".rstrip(),
            )
            console.print(line, soft_wrap=True)
        return
    table = Table(title="minirepro papers")
    table.add_column("paper", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("pass", justify="right", no_wrap=True)
    table.add_column("fail", justify="right", no_wrap=True)
    table.add_column("wall time", justify="right", no_wrap=True)
    table.add_column("headline", ratio=1, min_width=24, overflow="fold")
    for row, (n_pass, n_fail) in zip(rows, counts, strict=True):
        wall = format_duration(row.run.wall_s) if row.run else ""
        status = Text(row.status, _style(row.status))
        table.add_row(row.paper, status, n_pass, n_fail, wall, _headline(row))
    console.print(table)
