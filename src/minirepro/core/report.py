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


@dataclass(frozen=True)
class Run:
    """A finished run folder, as read back from disk.

    Attributes:
        paper: Paper id.
        preset: Preset name, or None.
        path: The run folder.
        results: The Results of result.json (verdicts recomputed).
        env: The contents of env.json, or {} if missing.
    """

    paper: str
    preset: str | None
    path: Path
    results: list[Result]
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def figures(self) -> list[Path]:
        return sorted((self.path / "figures").glob("*.png"))


def load_run(path: str | os.PathLike[str]) -> Run:
    """Reads a run folder's result.json (and env.json if present).

    Raises:
        ValueError: result.json is malformed; the message names the file.
    """
    path = Path(path)
    result_file = path / "result.json"
    try:
        doc = json.loads(result_file.read_text())
        results = [Result.from_dict(r) for r in doc["results"]]
        paper, preset = doc["paper"], doc.get("preset")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{result_file}: not a valid result.json ({exc})") from exc
    env_file = path / "env.json"
    env = json.loads(env_file.read_text()) if env_file.exists() else {}
    return Run(paper=paper, preset=preset, path=path, results=results, env=env)


def collect_runs(root: str | os.PathLike[str], *, all_runs: bool = False) -> list[Run]:
    """Finds the finished runs (folders with result.json) under a runs root.

    Args:
        root: The runs root, e.g. `./runs`.
        all_runs: Keep every run; by default only the latest run of each paper.

    Returns:
        Runs sorted by paper id, then time.
    """
    runs = [load_run(p.parent) for p in Path(root).rglob("result.json")]
    # Folder names start with the UTC time, so they sort in time order.
    runs.sort(key=lambda r: (r.paper, r.path.name))
    if not all_runs:
        runs = list({r.paper: r for r in runs}.values())
    return runs


def _counts(runs: Sequence[Run], errors: Mapping[str, str]) -> str:
    verdicts = [r.verdict for run in runs for r in run.results]
    text = (
        f"{len(verdicts)} claims from {len(runs)} runs: "
        f"{verdicts.count('pass')} pass, {verdicts.count('fail')} fail"
    )
    return text + (f", {len(errors)} papers errored" if errors else "")


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


def render_markdown(
    runs: Sequence[Run], out_dir: Path, papers: PaperMeta, errors: Mapping[str, str]
) -> str:
    """Returns the Markdown report; figure links are relative to `out_dir`."""
    lines = ["# minirepro report", "", _counts(runs, errors) + ".", ""]
    for paper_id, group in _grouped(runs, papers):
        title, link = papers.get(paper_id, ("", ""))
        heading = f"## {paper_id}" + (f" — {_md_cell(title)}" if title else "")
        lines += [heading, ""]
        if link:
            lines += [f"<{link}>", ""]
        for run in group:
            meta = [f"run `{_rel(run.path, out_dir)}`", f"preset {run.preset}"]
            if run.env:
                meta.append(_md_cell(_machine(run.env)))
            lines += [" · ".join(meta), ""]
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
    if errors:
        lines += ["## Errors", ""]
        lines += [f"- **{_md_cell(pid)}**: {_md_cell(msg)}" for pid, msg in errors.items()]
        lines.append("")
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; width: 100%; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: .35em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.verdict { font-weight: bold; text-transform: uppercase; }
.pass { color: #fff; background: #2e7d32; }
.fail { color: #fff; background: #c62828; }
.error { color: #fff; background: #6a1b9a; }
.meta, .note { color: #666; font-size: .9em; }
figure { display: inline-block; margin: .5em; }
figure img { max-width: 500px; border: 1px solid #eee; }
figcaption { text-align: center; color: #666; font-size: .85em; }
"""


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def render_html(runs: Sequence[Run], papers: PaperMeta, errors: Mapping[str, str]) -> str:
    """Returns one self-contained HTML page: inline CSS, figures as data URIs."""
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>minirepro report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>minirepro report</h1>",
        f'<p class="meta">{e(_counts(runs, errors))}. Generated '
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
    ]
    for paper_id, group in _grouped(runs, papers):
        title, link = papers.get(paper_id, ("", ""))
        heading = e(paper_id) + (f" — {e(title)}" if title else "")
        if link.startswith(("https://", "http://")):
            heading += f' <a href="{e(link)}">arXiv</a>'
        parts.append(f"<section><h2>{heading}</h2>")
        for run in group:
            meta = f"run {run.path.name} · preset {run.preset}"
            if run.env:
                meta += f" · {_machine(run.env)}"
            parts += [
                f'<p class="meta">{e(meta)}</p>',
                "<table><tr><th>claim</th><th>paper</th><th>ours (mean ± std)</th>"
                "<th>criterion</th><th>verdict</th></tr>",
            ]
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
        parts.append("</section>")
    if errors:
        parts.append("<section><h2>Errors</h2><table>")
        parts += [
            f'<tr><td>{e(pid)}</td><td class="verdict error">error</td><td>{e(msg)}</td></tr>'
            for pid, msg in errors.items()
        ]
        parts.append("</table></section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    runs: Iterable[Run],
    out_dir: str | os.PathLike[str],
    *,
    papers: PaperMeta | None = None,
    errors: Mapping[str, str] | None = None,
) -> tuple[Path, Path]:
    """Writes report.md and report.html for the given runs.

    Args:
        runs: The runs to show.
        out_dir: Folder for the two files (created if missing).
        papers: Paper id -> (title, link), for headings and ordering.
        errors: Paper id -> error message, for papers whose run raised.

    Returns:
        The paths of report.md and report.html.
    """
    runs = list(runs)
    papers = papers or {}
    errors = errors or {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(render_markdown(runs, out, papers, errors))
    html_path.write_text(render_html(runs, papers, errors))
    return md_path, html_path


def build_report(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    all_runs: bool = False,
    papers: PaperMeta | None = None,
) -> tuple[Path, Path]:
    """Collects the runs under `root` and writes report.md and report.html.

    Args:
        root: The runs root.
        out_dir: Where to write; `root` by default.
        all_runs: Include every run, not only the latest per paper.
        papers: Paper id -> (title, link).

    Returns:
        The paths of report.md and report.html.
    """
    runs = collect_runs(root, all_runs=all_runs)
    return write_report(runs, root if out_dir is None else out_dir, papers=papers)
