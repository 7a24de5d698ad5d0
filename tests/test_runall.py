"""`minirepro run all` as a job: interruption, resume, a paper that raises, exit codes.

Fake papers registered at run time drive the job's mechanics; jacobian at its smoke preset
is the real paper that must be reused, not re-run, by a resume.
"""

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from minirepro import cli, registry, runall
from minirepro.core.report import collect_runs, dashboard
from minirepro.core.results import AtLeast, Result, RunDir
from minirepro.terminal import print_dashboard, print_results

runner = CliRunner()  # stdout is not a terminal: the compact, unwrapped layout

LONG_CLAIM = (
    "a deliberately long claim that goes on and on about what the paper says the method "
    "does on which benchmark and under which conditions, as some claims really do"
)


@dataclass
class Cfg:
    value: float = 1.0
    seed: int = 0


CALLS: dict[str, int] = {}


def _result(value: float, seed: int) -> Result:
    return Result.check(LONG_CLAIM, ">= 1", [value], AtLeast(1.0), seeds=[seed])


def _ok(cfg: Cfg, out: RunDir) -> list[Result]:
    CALLS["ok"] = CALLS.get("ok", 0) + 1
    return [_result(cfg.value, cfg.seed)]


def _low(cfg: Cfg, out: RunDir) -> list[Result]:
    return [_result(cfg.value - 0.5, cfg.seed)]  # verdict fail


def _slow(cfg: Cfg, out: RunDir) -> list[Result]:
    time.sleep(0.3)
    return [_result(cfg.value, cfg.seed)]


def _broken(cfg: Cfg, out: RunDir) -> list[Result]:
    raise RuntimeError("this paper is broken")


def _ctrl_c_once(cfg: Cfg, out: RunDir) -> list[Result]:
    """Ctrl-C the first time (as a user would, mid-run), results the next."""
    CALLS["flaky"] = CALLS.get("flaky", 0) + 1
    if CALLS["flaky"] == 1:
        out.log(step=1)  # some work in the folder when the interrupt comes
        raise KeyboardInterrupt
    return [_result(cfg.value, cfg.seed)]


def _paper(pid: str, run) -> registry.Paper:
    presets = {name: Cfg() for name in registry.REQUIRED_PRESETS}
    return registry.Paper(pid, f"Fake {pid}", "0000.00000", ["x"], Cfg, presets, run)


FAKES = [_paper("broken", _broken), _paper("flaky", _ctrl_c_once), _paper("ok", _ok)]
LOW = _paper("low", _low)
SLOW = _paper("slow", _slow)


@pytest.fixture
def fakes(monkeypatch):
    """Registers the fake papers; `run all` sees them (and, if `real`, jacobian) only."""
    CALLS.clear()
    for paper in [*FAKES, LOW, SLOW]:
        registry.register(paper)

    def only(*ids: str) -> None:
        rows = [row for row in registry.all_papers() if row.id in ids]
        monkeypatch.setattr(registry, "all_papers", lambda: rows)

    yield only
    for paper in [*FAKES, LOW, SLOW]:
        registry.unregister(paper.id)


def _run_all(runs: Path, *args: str):
    return runner.invoke(
        cli.app, ["run", "all", "--preset", "smoke", "--runs-dir", str(runs), *args]
    )


def test_interrupt_resume_and_a_paper_that_raises(fakes, tmp_path: Path) -> None:
    fakes("jacobian", "broken", "flaky", "ok")  # catalogue order: jacobian runs first
    runs = tmp_path / "runs"

    first = _run_all(runs)
    assert first.exit_code == runall.ExitCode.INTERRUPTED, first.output
    [job] = (runs / "all").iterdir()
    assert f"continue with: minirepro run all --resume {job}" in first.output
    assert "[1/4] jacobian started" in first.output
    # jacobian's verdicts are printed when it finishes, before the later papers start.
    assert first.output.index("jacobian: ") < first.output.index("[2/4] broken started")
    assert "broken: error" in first.output and "this paper is broken" in first.output
    [broken_run] = (job / "broken").iterdir()
    assert "RuntimeError: this paper is broken" in (broken_run / "traceback.txt").read_text()
    assert "ok" not in CALLS  # the job stopped at the interrupt
    [flaky_run] = (job / "flaky").iterdir()
    assert not (flaky_run / "result.json").exists() and (flaky_run / "metrics.jsonl").exists()
    md = (job / "report.md").read_text()
    assert "| flaky | interrupted |" in md and "| ok | not run (interrupted) |" in md
    assert "| broken | **error** |" in md and "this paper is broken" in md
    jacobian_runs = list((job / "jacobian").iterdir())
    assert len(jacobian_runs) == 1

    second = _run_all(runs, "--resume", str(job))
    assert second.exit_code == runall.ExitCode.ERROR, second.output  # broken raises again
    assert list((job / "jacobian").iterdir()) == jacobian_runs  # reused, not re-run
    assert "jacobian: " in second.output and "reused from this folder" in second.output
    assert CALLS == {"flaky": 2, "ok": 1}
    assert len(list((job / "broken").iterdir())) == 2  # an error is run again on resume
    assert "1 of 4 papers raised an error (broken" in second.output

    # The job folder reads as a whole: every paper's verdicts, the error, 18 + 4 rows.
    lines = [json.loads(s) for s in (job / "results.jsonl").read_text().splitlines()]
    assert {d["paper"] for d in lines} == {"jacobian", "flaky", "ok"}
    md = (job / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    dash = rows[1 : 1 + len(registry.known_ids())]
    assert [r.split(" | ")[0][2:] for r in dash] == registry.known_ids()
    for entry in registry.CATALOGUE:
        if not registry.has_package(entry.id):
            assert f"| {entry.id} | {registry.NOT_IMPLEMENTED} |" in md
        elif entry.id != "jacobian":
            assert f"| {entry.id} | skipped |" in md
    assert "| ok | **pass** | 1 | 0 |" in md
    html = (job / "report.html").read_text()
    assert '<section id="jacobian">' in html and "<summary>traceback</summary>" in html


def test_resume_reuses_only_the_same_commit_and_config(fakes, tmp_path: Path) -> None:
    fakes("ok")
    assert _run_all(tmp_path).exit_code == runall.ExitCode.PASS
    [job] = (tmp_path / "all").iterdir()
    spec, sha = runall.read_job(job)
    assert spec == runall.JobSpec("smoke", None, ["ok"])
    run, why = runall.reusable_run(job, "ok", Cfg(), sha)
    assert run is not None and why is None
    assert runall.reusable_run(job, "ok", Cfg(value=2.0), sha) == (None, "its config differs")
    run, why = runall.reusable_run(job, "ok", Cfg(), "0123456789abcdef")
    assert run is None and "not 0123456" in why

    result = _run_all(tmp_path, "--resume", str(job), "--seed", "3")
    assert result.exit_code == 2 and "a resumed job keeps its own" in result.output
    result = _run_all(tmp_path, "--resume", str(tmp_path))
    assert result.exit_code == 2 and "is not a run-all folder" in result.output


def test_exit_codes_say_pass_fail_error(fakes, tmp_path: Path) -> None:
    fakes("ok", "low", "broken")
    assert _run_all(tmp_path, "--only", "ok").exit_code == runall.ExitCode.PASS
    result = _run_all(tmp_path, "--skip", "broken")
    assert result.exit_code == runall.ExitCode.FAIL and "1 of 2 verdicts failed" in result.output
    assert _run_all(tmp_path, "--only", "ok,broken").exit_code == runall.ExitCode.ERROR
    single = runner.invoke(
        cli.app, ["run", "low", "--preset", "smoke", "--runs-dir", str(tmp_path)]
    )
    assert single.exit_code == runall.ExitCode.FAIL
    ctrl_c = runner.invoke(
        cli.app, ["run", "flaky", "--preset", "smoke", "--runs-dir", str(tmp_path)]
    )
    assert ctrl_c.exit_code == runall.ExitCode.INTERRUPTED and "interrupted" in ctrl_c.output


def test_only_an_unimplemented_paper_is_a_clear_error(tmp_path: Path) -> None:
    missing = [e.id for e in registry.CATALOGUE if not registry.has_package(e.id)]
    if not missing:
        pytest.skip("every paper is implemented")
    result = _run_all(tmp_path, "--only", missing[0])
    assert result.exit_code == 2, result.output
    assert f"--only: {missing[0]} not implemented yet; implemented: " in result.output


def test_time_left_from_recorded_runs(tmp_path: Path) -> None:
    for pid, wall in [("a", 100.0), ("b", 50.0)]:
        out = RunDir(pid, Cfg(), root=tmp_path, preset="quick")
        out.write_results([_result(1.0, 0)], wall_s=wall)
    older = tmp_path / "all" / "20000101T000000Z-0000000" / "a" / "20000101T000000Z-0000000"
    older.mkdir(parents=True)  # an earlier job's run of a: its time is not the latest
    doc = {"paper": "a", "preset": "quick", "wall_s": 999.0, "results": []}
    (older / "result.json").write_text(json.dumps(doc))
    recorded = runall.recorded_times([tmp_path], "quick")
    assert recorded == {"a": 100.0, "b": 50.0}
    assert runall.recorded_times([tmp_path], "smoke") == {}
    # a has run 30 s of its 100: 70 + 50 left; c has no record.
    assert runall.time_left(recorded, ["a", "b"], elapsed=30.0) == (120.0, 0)
    assert runall.time_left(recorded, ["a", "c"], elapsed=130.0) == (0.0, 1)
    assert runall.describe_left(120.0, 0, 2) == "about 2m 00s left"
    assert "(1 paper never timed here)" in runall.describe_left(50.0, 1, 2)
    assert "unknown" in runall.describe_left(0.0, 2, 2)


def test_live_display_in_a_terminal(fakes, tmp_path: Path) -> None:
    fakes("ok", "broken")
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    code = runall.run_all(console, runs_dir=tmp_path, preset="smoke")
    assert code == runall.ExitCode.ERROR
    text = buf.getvalue()
    assert "ok: 1 pass, 0 fail" in text and "minirepro papers" in text  # dashboard table


def test_tables_keep_long_claims_readable() -> None:
    rows = [("rnn", _result(6.6, 0))]
    tty = Console(file=io.StringIO(), force_terminal=True, width=100)
    print_results(tty, rows)
    lines = tty.file.getvalue().splitlines()
    claim_lines = [line for line in lines if "claim" in line or "deliberately" in line]
    # The claim column takes what the numbers leave: > 40 characters a line, not 3 words.
    first = next(line for line in lines if "a deliberately" in line)
    assert len(first.split("│")[1].strip()) > 40, claim_lines
    assert "6.6 (n=1)" in tty.file.getvalue()  # numbers are never folded

    pipe = Console(file=io.StringIO(), width=80)  # not a terminal: one unwrapped line
    print_results(pipe, rows)
    [line] = pipe.file.getvalue().splitlines()
    assert line.startswith("pass ") and LONG_CLAIM in line and "| ours 6.6" in line

    dash = Console(file=io.StringIO(), width=80)
    print_dashboard(dash, dashboard([], {"rnn": ("FlashRNN", "")}, {"rnn": "skipped"}))
    assert dash.file.getvalue().split() == ["rnn", "skipped"]


def test_report_command_marks_unimplemented_papers(fakes, tmp_path: Path) -> None:
    fakes("ok")
    _run_all(tmp_path)
    result = runner.invoke(cli.app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "report.md").read_text()
    assert "| ok | **pass** | 1 | 0 |" in md
    assert [r.paper for r in collect_runs(tmp_path)] == ["ok"]


def test_a_log_shows_the_running_paper(fakes, tmp_path: Path) -> None:
    fakes("slow")
    buf = io.StringIO()
    code = runall.run_all(Console(file=buf), runs_dir=tmp_path, preset="smoke", heartbeat_s=0.05)
    assert code == runall.ExitCode.PASS
    assert "still running: slow 0s · time left unknown" in buf.getvalue()
    # The second job knows how long `slow` took: its estimate comes from the first job.
    buf = io.StringIO()
    runall.run_all(Console(file=buf), runs_dir=tmp_path, preset="smoke", heartbeat_s=0.05)
    assert "[1/1] slow started (last time 0s) · job 0s · about 0s left" in buf.getvalue()
