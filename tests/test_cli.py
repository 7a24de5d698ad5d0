"""The command line end to end, in-process, with a toy experiment registered at run time."""

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from minirepro import cli, registry  # noqa: E402
from minirepro.core.results import Result, RunDir, Within  # noqa: E402

runner = CliRunner(env={"COLUMNS": "200"})  # wide enough that rich does not fold claims


@dataclass
class PiConfig:
    n: int = 100_000
    seeds: tuple[int, ...] = (0, 1, 2)


def estimate_pi(cfg: PiConfig, out: RunDir) -> list[Result]:
    """Estimates pi by Monte Carlo: the fraction of uniform points inside the unit circle."""
    estimates = []
    for seed in out.track(cfg.seeds, "seeds"):  # a progress bar under the CLI
        xy = np.random.default_rng(seed).random((cfg.n, 2))  # (n, 2)
        inside = (xy**2).sum(axis=1) <= 1.0
        estimates.append(4 * inside.mean())
        out.log(seed=seed, n=cfg.n, estimate=estimates[-1])
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.scatter(xy[:500, 0], xy[:500, 1], c=inside[:500], s=2)
    out.savefig(fig, "samples")
    # The estimate's std is 4 sqrt(p (1 - p) / n) ~ 0.05 at n = 1000: 5% is > 3 sigma.
    return [
        Result.check(
            "Monte Carlo estimate of pi",
            paper_value=math.pi,
            values=estimates,
            criterion=Within(math.pi, rel=0.05),
            seeds=cfg.seeds,
        )
    ]


def _presets(cls: type) -> dict:
    return {"smoke": cls(n=100), "quick": cls(n=10_000), "full": cls(n=1_000_000)}


TOY = registry.Paper(
    id="toy",
    title="Toy: pi by Monte Carlo",
    arxiv="0000.00001",
    claims=["pi is about 3.14"],
    config=PiConfig,
    presets=_presets(PiConfig),
    run=estimate_pi,
)


def _explode(cfg: PiConfig, out: RunDir) -> list[Result]:
    raise RuntimeError("this paper is broken")


BROKEN = registry.Paper(
    id="broken",
    title="Broken toy",
    arxiv="0000.00002",
    claims=["none"],
    config=PiConfig,
    presets=_presets(PiConfig),
    run=_explode,
)


@pytest.fixture
def toy():
    registry.register(TOY)
    registry.register(BROKEN)
    yield TOY
    registry.unregister(TOY.id)
    registry.unregister(BROKEN.id)


def _only(monkeypatch, *ids: str) -> None:
    """Makes `run all` see only these papers, whatever else is implemented by then."""
    rows = [row for row in registry.all_papers() if row.id in ids]
    monkeypatch.setattr(registry, "all_papers", lambda: rows)


def _assert_clean_error(result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_list_shows_the_eighteen_papers() -> None:
    result = runner.invoke(cli.app, ["list"])
    assert result.exit_code == 0, result.output
    for entry in registry.CATALOGUE:
        assert entry.id in result.output and entry.link in result.output
    if any(row.paper is None for row in registry.all_papers()):
        assert "not implemented yet" in result.output


def test_run_toy_end_to_end(toy, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["run", "toy", "--preset", "smoke", "--runs-dir", str(runs), "-o", "n=1000"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "Monte Carlo estimate of pi" in result.output and "pass" in result.output

    [run_dir] = (runs / "toy").iterdir()
    assert json.loads((run_dir / "config.json").read_text()) == {"n": 1000, "seeds": [0, 1, 2]}
    env = json.loads((run_dir / "env.json").read_text())
    assert {"python", "torch", "numpy", "cpu", "cpu_count", "git_sha", "git_dirty"} <= set(env)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["seed"] for m in metrics] == [0, 1, 2] and all(m["n"] == 1000 for m in metrics)
    assert (run_dir / "figures" / "samples.png").read_bytes()[:4] == b"\x89PNG"

    doc = json.loads((run_dir / "result.json").read_text())
    assert set(doc) == {"paper", "preset", "wall_s", "results"}
    assert (doc["paper"], doc["preset"]) == ("toy", "smoke") and 0 < doc["wall_s"] < 60
    [res] = doc["results"]
    assert res["verdict"] == "pass" and res["seeds"] == [0, 1, 2]
    assert res["mean"] == pytest.approx(np.mean([m["estimate"] for m in metrics]))
    assert res["measured"] == res["mean"] and res["criterion"] == "within 5% of 3.14159"

    result = runner.invoke(cli.app, ["report", str(runs)])
    assert result.exit_code == 0, result.output
    md, html = (runs / "report.md").read_text(), (runs / "report.html").read_text()
    assert "Monte Carlo estimate of pi" in md and "**pass**" in md
    assert "## toy — Toy: pi by Monte Carlo" in md
    assert 'src="data:image/png;base64,' in html and 'class="verdict pass"' in html


def test_seed_option(toy, tmp_path: Path) -> None:
    args = ["run", "toy", "--preset", "smoke", "--seed", "5", "--runs-dir", str(tmp_path)]
    assert runner.invoke(cli.app, args).exit_code == 0
    [run_dir] = (tmp_path / "toy").iterdir()
    assert json.loads((run_dir / "config.json").read_text())["seeds"] == [5, 6, 7]


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "toyy"], "unknown paper 'toyy'. Did you mean 'toy'?"),
        (["run", "toy", "-o", "n=abc"], "bad value for 'n': expected int, got 'abc'"),
        (["run", "toy", "-o", "m=3"], "unknown config key 'm'"),
        (["run", "toy", "--preset", "huge"], "unknown preset 'huge' for toy; presets: smoke"),
        (["run", "all", "-o", "n=3"], "not allowed with 'all'"),
        (
            ["run", "all", "--only", "toy,zzzz"],
            "--only: unknown paper 'zzzz'. Valid ids: flexattn",
        ),
        (["run", "all", "--skip", "toyy"], "--skip: unknown paper 'toyy'. Did you mean 'toy'?"),
        (["run", "all", "--only", "toy", "--skip", "toy"], "leave no paper to run"),
        (["run", "toy", "--only", "toy"], "--only, --skip and --resume go with 'run all'"),
        (["run", "all", "--resume", "/no/such/job"], "--resume: no such folder"),
        (["bench", "nosuchpaper"], "unknown paper 'nosuchpaper'"),
        (["bench", "toy"], "toy has no benchmark"),
    ],
)
def test_user_errors_are_one_line(toy, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(
        cli.app, [*args, *(["--runs-dir", str(tmp_path)] if args[0] == "run" else [])]
    )
    _assert_clean_error(result, 2, message)
    assert not list(tmp_path.iterdir())  # nothing written


def test_run_all_with_nothing_implemented(tmp_path: Path, monkeypatch) -> None:
    _only(monkeypatch)
    result = runner.invoke(cli.app, ["run", "all", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0 and "No paper is implemented yet" in result.output
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_bench_runs_the_benchmark_script(toy, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "toy.py").write_text(
        "import sys, json\nopen(sys.argv[1], 'w').write(json.dumps({'ran': True}))\n"
    )
    monkeypatch.setattr(cli, "_REPO_ROOT", tmp_path)
    out = tmp_path / "out.json"
    result = runner.invoke(cli.app, ["bench", "toy", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == {"ran": True}


def test_report_errors(tmp_path: Path) -> None:
    _assert_clean_error(runner.invoke(cli.app, ["report", str(tmp_path / "nope")]), 2, "no such")
    _assert_clean_error(runner.invoke(cli.app, ["report", str(tmp_path)]), 1, "no result.json")


def test_help_does_not_import_torch() -> None:
    import subprocess

    code = "import sys; from minirepro import cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_import_error_names_the_paper(tmp_path: Path, monkeypatch) -> None:
    def get_paper(paper_id: str) -> registry.Paper:
        try:
            raise ModuleNotFoundError("No module named 'flash_thing'")
        except ModuleNotFoundError as exc:
            raise registry.PaperImportError(f"paper {paper_id!r}: importing failed") from exc

    monkeypatch.setattr(registry, "get_paper", get_paper)
    result = runner.invoke(cli.app, ["run", "flow", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 3
    assert "paper 'flow': importing failed" in result.output
    assert "flash_thing" in result.output  # the cause is shown, not hidden
