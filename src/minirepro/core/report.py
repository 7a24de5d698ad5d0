"""Markdown and HTML reports built from run folders after the fact.

`build_report(root)` reads every `result.json` under a runs root (the latest run of each
paper by default) and writes report.md, whose figures are relative links, and one
self-contained report.html, whose figures are embedded as base64 PNG data URIs. Nothing
here runs during training: a report is a view of finished runs.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from minirepro.core.results import Result

PaperMeta = Mapping[str, tuple[str, str]]  # paper id -> (title, link)


RUN_FILES = ("result.json", "error.json")  # a finished run holds one of them


@dataclass(frozen=True)
class Run:
    """A finished run folder, as read back from disk: results, or the error it raised.

    Attributes:
        paper: Paper id.
        preset: Preset name, or None.
        path: The run folder.
        results: The Results of result.json (verdicts recomputed); empty for an error.
        env: The contents of env.json, or {} if missing.
        wall_s: The run's wall time in seconds, where recorded.
        error: `"<Type>: <message>"` for a run that raised (error.json), else None.
    """

    paper: str
    preset: str | None
    path: Path
    results: list[Result]
    env: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None
    error: str | None = None

    @property
    def figures(self) -> list[Path]:
        return sorted((self.path / "figures").glob("*.png"))

    @property
    def traceback(self) -> str | None:
        """The traceback of a run that raised (traceback.txt), or None."""
        path = self.path / "traceback.txt"
        return path.read_text(errors="replace") if path.is_file() else None

    @property
    def n_pass(self) -> int:
        return sum(r.verdict == "pass" for r in self.results)

    @property
    def n_fail(self) -> int:
        return sum(r.verdict == "fail" for r in self.results)

    @property
    def status(self) -> str:
        """ "error", "fail" (some verdict failed) or "pass"."""
        return "error" if self.error is not None else ("fail" if self.n_fail else "pass")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return doc


def load_run(path: str | os.PathLike[str]) -> Run:
    """Reads a run folder: its result.json, or error.json for a run that raised.

    Raises:
        ValueError: Neither file exists, or the file is malformed; the message names it.
    """
    path = Path(path)
    result_file, error_file = (path / name for name in RUN_FILES)
    env_file = path / "env.json"
    env = json.loads(env_file.read_text()) if env_file.exists() else {}
    if not result_file.exists() and error_file.exists():
        doc = _read_json(error_file)
        try:
            return Run(
                doc["paper"], doc.get("preset"), path, [], env, doc.get("wall_s"), doc["error"]
            )
        except KeyError as exc:
            raise ValueError(f"{error_file}: not a valid error.json (lacks {exc})") from None
    try:
        doc = _read_json(result_file)
        results = [Result.from_dict(r) for r in doc["results"]]
        paper, preset = doc["paper"], doc.get("preset")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{result_file}: not a valid result.json ({exc})") from exc
    return Run(paper, preset, path, results, env, doc.get("wall_s"))


def collect_runs(root: str | os.PathLike[str], *, all_runs: bool = False) -> list[Run]:
    """Finds the finished runs (folders with result.json or error.json) under a runs root.

    Args:
        root: The runs root, e.g. `./runs`.
        all_runs: Keep every run; by default only the latest run of each paper.

    Returns:
        Runs sorted by paper id, then time.
    """
    folders = {p.parent for name in RUN_FILES for p in Path(root).rglob(name)}
    runs = [load_run(p) for p in folders]
    # Folder names start with the UTC time, so they sort in time order.
    runs.sort(key=lambda r: (r.paper, r.path.name))
    if not all_runs:
        runs = list({r.paper: r for r in runs}.values())
    return runs


def format_duration(seconds: float | None) -> str:
    """`42s`, `3m 05s`, `1h 02m`; an em dash for None."""
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


@dataclass(frozen=True)
class DashboardRow:
    """One paper in the report's opening table.

    Attributes:
        paper: Paper id.
        title: Paper title ("" if unknown).
        status: "pass", "fail", "error", or for a paper without a run the caller's word
            ("not implemented yet", "skipped", "interrupted", ...; "no run" by default).
        run: The paper's latest run shown in the report, or None.
    """

    paper: str
    title: str
    status: str
    run: Run | None

    @property
    def headline(self) -> Result | None:
        """A paper's first Result is its headline claim."""
        return self.run.results[0] if self.run and self.run.results else None


def dashboard(
    runs: Sequence[Run], papers: PaperMeta, status: Mapping[str, str] | None = None
) -> list[DashboardRow]:
    """One row per paper: every paper of `papers` (in order), then any other with a run."""
    status = status or {}
    latest = {run.paper: run for run in runs}
    ids = list(dict.fromkeys([*papers, *(r.paper for r in runs), *status]))
    rows = []
    for pid in ids:
        run = latest.get(pid)
        word = run.status if run else status.get(pid, "no run")
        rows.append(DashboardRow(pid, papers.get(pid, ("", ""))[0], word, run))
    return rows


def _counts(runs: Sequence[Run]) -> str:
    verdicts = [r.verdict for run in runs for r in run.results]
    errors = sum(run.error is not None for run in runs)
    text = (
        f"{len(verdicts)} claims from {len(runs) - errors} runs: "
        f"{verdicts.count('pass')} pass, {verdicts.count('fail')} fail"
    )
    return text + (f"; {errors} paper{'s' if errors > 1 else ''} raised an error" if errors else "")


def _machine(env: Mapping[str, Any]) -> str:
    if not env:
        return ""
    parts = [env.get("cpu"), f"{env.get('usable_cores')} cores", f"torch {env.get('torch')}"]
    if env.get("gpu"):
        parts.append(env["gpu"])
    if env.get("git_sha"):
        parts.append(f"git {env['git_sha'][:7]}{' (dirty)' if env.get('git_dirty') else ''}")
    return ", ".join(str(p) for p in parts if p)


def _grouped(runs: Sequence[Run], papers: PaperMeta) -> list[tuple[str, list[Run]]]:
    """Groups runs by paper, in catalogue order and then by id."""
    order = {pid: i for i, pid in enumerate(papers)}
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.paper, []).append(run)
    return sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _headline_text(r: Result) -> str:
    return f"{r.claim}: {r.format_measured()} (paper {r.format_paper_value()})"


def _markdown_dashboard(rows: Sequence[DashboardRow]) -> list[str]:
    lines = ["| paper | status | pass | fail | wall time | headline |", "|---|---|---|---|---|---|"]
    for row in rows:
        run, head = row.run, row.headline
        cells = [
            row.paper,
            f"**{row.status}**" if run else row.status,
            str(run.n_pass) if run and not run.error else "",
            str(run.n_fail) if run and not run.error else "",
            format_duration(run.wall_s) if run else "",
            _headline_text(head) if head else (run.error or "" if run else ""),
        ]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return lines


def _meta(run: Run) -> str:
    meta = [f"preset {run.preset}", f"wall time {format_duration(run.wall_s)}"]
    return " · ".join(meta + ([_machine(run.env)] if run.env else []))


def render_markdown(
    runs: Sequence[Run],
    out_dir: Path,
    papers: PaperMeta,
    status: Mapping[str, str] | None = None,
) -> str:
    """Returns the Markdown report; figure links are relative to `out_dir`."""
    lines = ["# minirepro report", "", _counts(runs) + ".", ""]
    lines += [*_markdown_dashboard(dashboard(runs, papers, status)), ""]
    for paper_id, group in _grouped(runs, papers):
        title, link = papers.get(paper_id, ("", ""))
        heading = f"## {paper_id}" + (f" — {_md_cell(title)}" if title else "")
        lines += [heading, ""]
        if link:
            lines += [f"<{link}>", ""]
        for run in group:
            lines += [f"run `{_rel(run.path, out_dir)}` · {_md_cell(_meta(run))}", ""]
            if run.error is not None:
                lines += [f"**error**: {_md_cell(run.error)}", ""]
                lines += [f"traceback: `{_rel(run.path / 'traceback.txt', out_dir)}`", ""]
                continue
            lines += [
                "| claim | paper | ours (mean ± std) | criterion | verdict |",
                "|---|---|---|---|---|",
            ]
            for r in run.results:
                cells = [
                    r.claim,
                    r.format_paper_value(),
                    r.format_measured(),
                    str(r.criterion),
                    f"**{r.verdict}**",
                ]
                lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
            notes = [f"- {_md_cell(r.claim)}: {_md_cell(r.note)}" for r in run.results if r.note]
            lines += ["", *notes, *([""] if notes else [])]
            for fig in run.figures:
                lines += [f"![{_md_cell(fig.stem)}](<{_rel(fig, out_dir)}>)", ""]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; width: 100%; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: .35em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
/* Fixed column shares: a long claim wraps in its own wide column, and numbers wrap at
   spaces instead of squeezing the claim to a few words per line. */
table.claims { table-layout: fixed; }
table.claims col.claim { width: 42%; }
table.claims col.value { width: 17%; }
table.claims col.verdict { width: 7em; }
td.num { font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
td.time { white-space: nowrap; font-variant-numeric: tabular-nums; }
.verdict { font-weight: bold; text-transform: uppercase; }
.pass { color: #fff; background: #2e7d32; }
.fail { color: #fff; background: #c62828; }
.error { color: #fff; background: #6a1b9a; }
.other { color: #777; }
.badge { font-weight: bold; text-transform: uppercase; font-size: .85em; padding: .1em .5em;
         border-radius: .3em; }
table.dashboard td.status, table.dashboard th { white-space: nowrap; }
table.dashboard .headline { color: #555; }
.meta, .note { color: #666; font-size: .9em; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: .85em; }
figure { display: inline-block; margin: .5em; vertical-align: top; }
figure img { max-width: 500px; border: 1px solid #eee; }
figcaption { text-align: center; color: #666; font-size: .85em; }
"""


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _html_dashboard(rows: Sequence[DashboardRow]) -> list[str]:
    e = html.escape
    parts = [
        '<table class="dashboard"><tr><th>paper</th><th>status</th><th>pass</th><th>fail</th>'
        "<th>wall time</th><th>headline</th></tr>"
    ]
    for row in rows:
        run, head = row.run, row.headline
        name = f'<a href="#{e(row.paper)}">{e(row.paper)}</a>' if run else e(row.paper)
        title = f' title="{e(row.title)}"' if row.title else ""
        badge = f'<span class="badge {row.status}">' if run else '<span class="other">'
        counts = (run.n_pass, run.n_fail) if run and run.error is None else ("", "")
        if head:
            headline = (
                f"{e(head.claim)}: <b>{e(head.format_measured())}</b> "
                f'<span class="headline">(paper {e(head.format_paper_value())})</span>'
            )
        else:
            headline = e(run.error or "") if run else ""
        parts.append(
            f'<tr><td{title}>{name}</td><td class="status">{badge}{e(row.status)}</span></td>'
            f'<td class="num">{counts[0]}</td><td class="num">{counts[1]}</td>'
            f'<td class="time">{format_duration(run.wall_s) if run else ""}</td>'
            f"<td>{headline}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _html_run(run: Run) -> list[str]:
    e = html.escape
    parts = [f'<p class="meta">run {e(run.path.name)} · {e(_meta(run))}</p>']
    if run.error is not None:
        parts.append(f'<p><span class="verdict error">&nbsp;error&nbsp;</span> {e(run.error)}</p>')
        if run.traceback:
            parts.append(
                f"<details><summary>traceback</summary><pre>{e(run.traceback)}</pre></details>"
            )
        return parts
    parts.append(
        '<table class="claims"><colgroup><col class="claim"><col class="value">'
        '<col class="value"><col class="value"><col class="verdict"></colgroup>'
        "<tr><th>claim</th><th>paper</th><th>ours (mean ± std)</th>"
        "<th>criterion</th><th>verdict</th></tr>"
    )
    for r in run.results:
        note = f'<div class="note">{e(r.note)}</div>' if r.note else ""
        parts.append(
            f"<tr><td>{e(r.claim)}{note}</td>"
            f'<td class="num">{e(r.format_paper_value())}</td>'
            f'<td class="num">{e(r.format_measured())}</td>'
            f'<td class="num">{e(str(r.criterion))}</td>'
            f'<td class="verdict {r.verdict}">{r.verdict}</td></tr>'
        )
    parts.append("</table>")
    for fig in run.figures:
        parts.append(
            f'<figure><img src="{_data_uri(fig)}" alt="{e(fig.stem)}">'
            f"<figcaption>{e(fig.stem)}</figcaption></figure>"
        )
    return parts


def render_html(
    runs: Sequence[Run], papers: PaperMeta, status: Mapping[str, str] | None = None
) -> str:
    """Returns one self-contained HTML page: inline CSS, figures as data URIs."""
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>minirepro report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>minirepro report</h1>",
        f'<p class="meta">{e(_counts(runs))}. Generated '
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
        *_html_dashboard(dashboard(runs, papers, status)),
    ]
    for paper_id, group in _grouped(runs, papers):
        title, link = papers.get(paper_id, ("", ""))
        heading = e(paper_id) + (f" — {e(title)}" if title else "")
        if link.startswith(("https://", "http://")):
            heading += f' <a href="{e(link)}">arXiv</a>'
        parts.append(f'<section id="{e(paper_id)}"><h2>{heading}</h2>')
        for run in group:
            parts += _html_run(run)
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    runs: Iterable[Run],
    out_dir: str | os.PathLike[str],
    *,
    papers: PaperMeta | None = None,
    status: Mapping[str, str] | None = None,
) -> tuple[Path, Path]:
    """Writes report.md and report.html for the given runs.

    Both open with a dashboard of every paper in `papers` (and any other with a run):
    status, pass/fail counts, wall time and the headline claim; then one section per paper.

    Args:
        runs: The runs to show (a run that raised is shown with its error and traceback).
        out_dir: Folder for the two files (created if missing).
        papers: Paper id -> (title, link), for headings and ordering.
        status: Paper id -> the dashboard's word for a paper without a run, e.g.
            "not implemented yet" or "skipped"; "no run" by default.

    Returns:
        The paths of report.md and report.html.
    """
    runs = list(runs)
    papers = papers or {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / "report.md", out / "report.html"
    # Written whole and renamed, so a reader never sees half a report of a running job.
    for path, text in [
        (md_path, render_markdown(runs, out, papers, status)),
        (html_path, render_html(runs, papers, status)),
    ]:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return md_path, html_path


def build_report(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    all_runs: bool = False,
    papers: PaperMeta | None = None,
    status: Mapping[str, str] | None = None,
) -> tuple[Path, Path]:
    """Collects the runs under `root` and writes report.md and report.html.

    Args:
        root: The runs root.
        out_dir: Where to write; `root` by default.
        all_runs: Include every run, not only the latest per paper.
        papers: Paper id -> (title, link).
        status: Paper id -> the dashboard's word for a paper without a run.

    Returns:
        The paths of report.md and report.html.
    """
    runs = collect_runs(root, all_runs=all_runs)
    return write_report(runs, root if out_dir is None else out_dir, papers=papers, status=status)
