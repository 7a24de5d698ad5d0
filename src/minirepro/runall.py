"""`minirepro run all`: every implemented paper as one job to start, leave, resume and read.

A job writes one folder, `<runs>/all/<UTC time>-<git sha>/`::

    config.json      the job: preset, seed and the papers it runs
    env.json         the machine and the git commit
    <id>/<UTC time>-<git sha>/   one run folder per paper attempt: result.json, or
                     error.json and traceback.txt when the paper raised
    results.jsonl    every Result, one JSON line each
    report.md, report.html   rewritten as each paper starts and finishes

While it runs it shows the paper running, its elapsed time and an estimate of the time
left, from each paper's latest recorded wall time at the same preset (the `wall_s` of the
result.json files under the runs root: the machine's own earlier runs), and prints each
paper's verdicts as soon as that paper finishes. `--resume DIR` continues a job that was
interrupted (Ctrl-C, a crash, a reboot): a paper whose latest run in DIR finished with the
same config at the same git commit is not run again; the others are.
"""

from __future__ import annotations

import enum
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from minirepro import registry
from minirepro.core.env import GitInfo
from minirepro.core.report import Run, dashboard, format_duration, load_run, write_report
from minirepro.core.results import Result, RunDir, git_info, jsonable
from minirepro.terminal import print_dashboard, print_results


class ExitCode(enum.IntEnum):
    """What `minirepro run` exits with (a single paper's run too)."""

    PASS = 0  # every paper ran and every verdict passed
    FAIL = 1  # every paper ran; some verdicts failed
    USAGE = 2  # a bad command line (click's code for usage errors)
    ERROR = 3  # some paper raised; its traceback.txt is in its run folder
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); continue with --resume


@dataclass(frozen=True)
class JobSpec:
    """What a job runs; stored as the job folder's config.json."""

    preset: str
    seed: int | None
    papers: list[str]


def run_paper(paper: registry.Paper, cfg: Any, out: RunDir) -> list[Result]:
    """Runs a paper's reproduction into `out` and writes result.json.

    A run that raises leaves error.json and traceback.txt in `out` and re-raises.
    """
    try:
        results = paper.run(cfg, out)
        if not isinstance(results, list) or not all(isinstance(r, Result) for r in results):
            raise TypeError(f"{paper.id}: run() must return a list of Result, got {results!r}")
    except Exception as exc:
        out.write_error(exc)
        raise
    out.write_results(results)
    return results


def select_papers(only: Sequence[str] = (), skip: Sequence[str] = ()) -> list[str]:
    """The papers `run all` runs: implemented ones (and any that fail to import, to report
    the error), narrowed by `--only` and `--skip`, in catalogue order.

    Raises:
        RegistryError: An unknown id (the message lists the valid ones), `--only` naming a
            paper that is not implemented, or a selection that leaves nothing to run.
    """
    only_ids = registry.parse_ids(only, "--only")
    skip_ids = registry.parse_ids(skip, "--skip")
    runnable = [row.id for row in registry.all_papers() if row.paper or row.error]
    missing = [i for i in only_ids if i not in runnable]
    if missing:
        raise registry.RegistryError(
            f"--only: {', '.join(missing)} {registry.NOT_IMPLEMENTED}; "
            f"implemented: {', '.join(runnable)}"
        )
    chosen = [i for i in runnable if (not only_ids or i in only_ids) and i not in skip_ids]
    if not chosen and (only_ids or skip_ids):
        raise registry.RegistryError("--only/--skip leave no paper to run")
    return chosen


def read_job(path: Path) -> tuple[JobSpec, str | None]:
    """Reads a job folder's config.json and the git commit it started at.

    Raises:
        RegistryError: `path` is not a folder written by `run all`.
    """
    hint = "--resume takes a folder written by `run all`, e.g. runs/all/<UTC time>-<git sha>"
    try:
        doc = json.loads((path / "config.json").read_text())
        spec = JobSpec(doc["preset"], doc["seed"], list(doc["papers"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise registry.RegistryError(f"{path} is not a run-all folder ({exc}); {hint}") from None
    unknown = [p for p in spec.papers if p not in registry.known_ids()]
    if unknown:
        raise registry.RegistryError(f"{path} lists papers unknown here: {', '.join(unknown)}")
    try:
        sha = json.loads((path / "env.json").read_text()).get("git_sha")
    except (OSError, ValueError):
        sha = None
    return spec, sha


def _short(sha: str | None) -> str:
    return sha[:7] if sha else "none"


def reusable_run(
    job: Path, paper_id: str, config: Any, git_sha: str | None
) -> tuple[Run | None, str | None]:
    """The paper's latest finished run in a job folder, if it can stand for a new one.

    Returns:
        (run, None) when that run has the same config and git commit; (None, reason) when
        there is a finished run that cannot be reused; (None, None) when there is none.
    """
    finished = sorted((job / paper_id).glob("*/result.json"), key=lambda p: p.parent.name)
    if not finished:
        return None, None
    folder = finished[-1].parent
    try:
        run = load_run(folder)
        stored = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return None, f"its run folder is unreadable ({exc})"
    if stored != json.loads(json.dumps(jsonable(config))):
        return None, "its config differs"
    if run.env.get("git_sha") != git_sha:
        return None, f"it ran at commit {_short(run.env.get('git_sha'))}, not {_short(git_sha)}"
    return run, None


def recorded_times(roots: Sequence[Path], preset: str) -> dict[str, float]:
    """Each paper's latest recorded wall time at `preset` in result.json files under roots."""
    latest: dict[str, tuple[str, float]] = {}
    files = {f.resolve() for root in roots if root.is_dir() for f in root.rglob("result.json")}
    for f in files:
        try:
            doc = json.loads(f.read_text())
            paper, wall = doc["paper"], doc.get("wall_s")
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an unreadable file only costs an estimate
        if doc.get("preset") != preset or not isinstance(wall, (int, float)):
            continue
        stamp = f.parent.name  # "<UTC time>-<sha>" sorts in time order
        if paper not in latest or stamp > latest[paper][0]:
            latest[paper] = (stamp, float(wall))
    return {paper: wall for paper, (_, wall) in latest.items()}


def time_left(
    recorded: Mapping[str, float], todo: Sequence[str], elapsed: float = 0.0
) -> tuple[float, int]:
    """Estimates the time left for papers `todo`, the first of which has run `elapsed` s.

    Returns:
        (seconds, how many of them have no recorded time and are not counted).
    """
    seconds, unknown = 0.0, 0
    for i, pid in enumerate(todo):
        if pid not in recorded:
            unknown += 1
        else:
            seconds += max(recorded[pid] - elapsed, 0.0) if i == 0 else recorded[pid]
    return seconds, unknown


def describe_left(seconds: float, unknown: int, n_todo: int) -> str:
    """`about 8m 30s left`, or what is known when some papers were never timed."""
    if unknown == 0:
        return f"about {format_duration(seconds)} left"
    if unknown == n_todo:
        return "time left unknown (no earlier run at this preset)"
    papers = "paper" if unknown == 1 else "papers"
    return f"over {format_duration(seconds)} left ({unknown} {papers} never timed here)"


class _JobColumn(ProgressColumn):
    """Renders the job's status line for the overall task; nothing for a paper's bars."""

    def render(self, task: Any) -> Text:
        status = task.fields.get("status")
        return Text(status(), "cyan") if status else Text("")


class _Display:
    """The job's progress: a live bar in a terminal; in a pipe, one line per event and a
    `still running` line every `heartbeat_s` seconds, so `tail -f` of a log shows life."""

    def __init__(
        self,
        console: Console,
        papers: Sequence[str],
        recorded: Mapping[str, float],
        heartbeat_s: float = 60.0,
    ):
        self.console, self.papers, self.recorded = console, list(papers), recorded
        self.done = 0
        self.running: str | None = None
        self.started = 0.0
        self.progress: Progress | None = None
        self.job_started = time.monotonic()
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> _Display:
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                _JobColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "run all", total=len(self.papers), status=self.status
            )
        else:
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self._beat is not None:
            self._stop.set()
            self._beat.join()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if self.running is not None:
                self.print(Text(f"still running: {self.status()}", "dim"))

    def _left(self) -> str:
        todo = self.papers[self.done :]
        elapsed = time.monotonic() - self.started if self.running else 0.0
        return describe_left(*time_left(self.recorded, todo, elapsed), len(todo))

    def _last_time(self) -> str:
        last = self.recorded.get(self.running or "")
        return f" (last time {format_duration(last)})" if last is not None else ""

    def status(self) -> str:
        """The live line: `flow 1m 10s (last time 2m 00s) · about 8m 30s left`."""
        if self.done == len(self.papers):
            return "done"
        if self.running is None:
            return self._left()
        elapsed = format_duration(time.monotonic() - self.started)
        return f"{self.running} {elapsed}{self._last_time()} · {self._left()}"

    def print(self, renderable: Any) -> None:
        console = self.progress.console if self.progress is not None else self.console
        console.print(renderable, soft_wrap=True)

    def start(self, paper_id: str) -> None:
        self.running, self.started = paper_id, time.monotonic()
        step = f"[{self.done + 1}/{len(self.papers)}] {paper_id}"
        if self.progress is not None:
            self.progress.update(self.task, description=step)
            return
        job = format_duration(time.monotonic() - self.job_started)
        self.print(Text(f"{step} started{self._last_time()} · job {job} · {self._left()}"))

    def finish(self, paper_id: str, run: Run, reused: bool = False) -> None:
        self.done += 1
        self.running = None
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done)
            if self.done == len(self.papers):
                self.progress.update(self.task, description="run all")
        how = "reused from this folder" if reused else format_duration(run.wall_s)
        if run.error is not None:
            tb = run.path / "traceback.txt"
            self.print(Text(f"{paper_id}: error ({how}): {run.error}\n  traceback: {tb}", "red"))
            return
        title = f"{paper_id}: {run.n_pass} pass, {run.n_fail} fail ({how}) · {run.path}"
        console = self.progress.console if self.progress is not None else self.console
        print_results(console, [(paper_id, r) for r in run.results], title=title)


def _publish(
    job: Path, papers: Sequence[str], runs: Mapping[str, Run], status: Mapping[str, str]
) -> tuple[Path, Path]:
    """Writes results.jsonl and the report of the job so far."""
    ordered = [runs[p] for p in papers if p in runs]
    lines = [
        json.dumps(jsonable({"paper": run.paper, **r.to_dict()}))
        for run in ordered
        for r in run.results
    ]
    (job / "results.jsonl").write_text("".join(line + "\n" for line in lines))
    return write_report(ordered, job, papers=registry.paper_meta(), status=status)


def _attempt(
    row: registry.Listing,
    spec: JobSpec,
    job: Path,
    git: GitInfo,
    reuse: bool,
    display: _Display,
    status: dict[str, str],
    runs: Mapping[str, Run],
) -> Run:
    """One paper of the job: its finished run in the job folder if `reuse` allows, else a
    new run (an error is recorded in its folder, not raised)."""
    pid, cfg, problem = row.id, None, None
    try:
        if row.error is not None:
            raise row.error
        assert row.paper is not None
        cfg = registry.make_config(row.paper, spec.preset, seed=spec.seed)
    except (registry.RegistryError, registry.PaperImportError) as exc:
        problem = exc
    if cfg is not None and reuse:
        run, why = reusable_run(job, pid, cfg, git.sha)
        if run is not None:
            display.finish(pid, run, reused=True)
            return run
        if why:
            display.print(Text(f"{pid}: running again: {why}", "yellow"))
    display.start(pid)
    status[pid] = "running"
    _publish(job, spec.papers, runs, status)
    out = RunDir(pid, cfg if cfg is not None else {}, root=job, preset=spec.preset, git=git)
    out.progress = display.progress
    if problem is not None:
        out.write_error(problem)
    else:
        try:
            run_paper(row.paper, cfg, out)  # type: ignore[arg-type]
        except Exception:
            pass  # run_paper recorded it in the run folder
    run = load_run(out.path)
    display.finish(pid, run)
    return run


def run_all(
    console: Console,
    *,
    runs_dir: Path,
    preset: str | None = None,
    seed: int | None = None,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    resume: Path | None = None,
    heartbeat_s: float = 60.0,
) -> ExitCode:
    """Runs the selected papers as one job (or continues one) and writes its report.

    Args:
        console: Where progress and verdicts go.
        runs_dir: The runs root; a new job folder goes in `<runs_dir>/all/`.
        preset: Preset of every paper; "quick" for a new job; a resumed job keeps its own.
        seed: Base seed of every paper (see `registry.make_config`).
        only: Ids to run (comma-separated or repeated); all implemented papers if empty.
        skip: Ids not to run.
        resume: A job folder to continue instead of starting a new one.
        heartbeat_s: When `console` is not a terminal, the seconds between the
            `still running` lines.

    Returns:
        The exit code (see `ExitCode`).

    Raises:
        RegistryError: A bad selection, or a `resume` folder that is not a job's or whose
            preset or seed differs from the one given.
    """
    git = git_info()  # the code imported now; a commit made during the job is not it
    if resume is not None:
        spec, _ = read_job(resume)
        for name, given, kept in [("preset", preset, spec.preset), ("seed", seed, spec.seed)]:
            if given is not None and given != kept:
                raise registry.RegistryError(
                    f"--{name} {given}: the job in {resume} runs {name} {kept}; "
                    "a resumed job keeps its own"
                )
        papers = select_papers(only, skip) if (only or skip) else spec.papers
        if papers != spec.papers:
            spec = JobSpec(spec.preset, spec.seed, papers)
            (resume / "config.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
        job = resume
    else:
        papers = select_papers(only, skip)
        if not papers:
            console.print("No paper is implemented yet: nothing to run.")
            return ExitCode.PASS
        spec = JobSpec(preset or "quick", seed, papers)
        job = RunDir("all", asdict(spec), root=runs_dir, preset=spec.preset, git=git).path
    console.print(
        f"job folder: {job} (its report.html is updated as papers finish)", soft_wrap=True
    )

    rows = {row.id: row for row in registry.all_papers()}
    status = {
        pid: ("skipped" if registry.has_package(pid) else registry.NOT_IMPLEMENTED)
        for pid in registry.known_ids()
    }
    status.update({pid: "pending" for pid in papers})
    recorded = recorded_times([runs_dir, job], spec.preset)
    runs: dict[str, Run] = {}
    interrupted = False
    with _Display(console, papers, recorded, heartbeat_s) as display:
        try:
            for pid in papers:
                reuse = resume is not None
                runs[pid] = _attempt(rows[pid], spec, job, git, reuse, display, status, runs)
                _publish(job, papers, runs, status)
        except KeyboardInterrupt:  # a paper's partial folder stays, without result.json
            interrupted = True
            status.update({p: "interrupted" for p in papers if status[p] == "running"})
    if interrupted:
        status.update({p: "not run (interrupted)" for p in papers if status[p] == "pending"})
    md, html = _publish(job, papers, runs, status)
    if not console.is_terminal:
        console.print()
    print_dashboard(console, dashboard(list(runs.values()), registry.paper_meta(), status))
    console.print(f"report: {html}\n        {md}", soft_wrap=True)
    return _conclude(console, job, papers, runs, interrupted)


def _conclude(
    console: Console, job: Path, papers: Sequence[str], runs: Mapping[str, Run], interrupted: bool
) -> ExitCode:
    """Prints the job's outcome in one line and returns its exit code."""
    errored = [p for p, run in runs.items() if run.error is not None]
    verdicts = [r.verdict for run in runs.values() for r in run.results]
    failed = verdicts.count("fail")
    if interrupted:
        code, line = (
            ExitCode.INTERRUPTED,
            (
                f"interrupted after {len(runs)} of {len(papers)} papers; continue with: "
                f"minirepro run all --resume {job}"
            ),
        )
    elif errored:
        code, line = (
            ExitCode.ERROR,
            (
                f"{len(errored)} of {len(papers)} papers raised an error ({', '.join(errored)}; "
                f"traceback.txt in their run folders); {failed} of {len(verdicts)} verdicts failed"
            ),
        )
    elif failed:
        code, line = ExitCode.FAIL, f"{failed} of {len(verdicts)} verdicts failed"
    else:
        code, line = ExitCode.PASS, f"all {len(verdicts)} verdicts pass"
    style = {ExitCode.PASS: "bold green", ExitCode.FAIL: "bold red"}.get(code, "bold magenta")
    console.print(Text(f"{line} (exit code {int(code)})", style), soft_wrap=True)
    return code
