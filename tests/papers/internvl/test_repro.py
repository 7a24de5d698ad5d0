"""The smoke preset end to end through the CLI: every claim measured, verdicts computed."""

import json

import pytest
from typer.testing import CliRunner

from minirepro import cli
from minirepro.core.results import Result
from minirepro.papers.internvl import CLAIMS, Config


def test_smoke_run_through_the_cli(tmp_path):
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        cli.app, ["run", "internvl", "--preset", "smoke", "--runs-dir", str(tmp_path)]
    )
    assert result.exit_code in (0, 1), result.output  # 1: some verdicts failed
    assert "Traceback" not in result.output
    (path,) = tmp_path.glob("internvl/*/result.json")
    results = [Result.from_dict(r) for r in json.loads(path.read_text())["results"]]
    assert [r.claim for r in results] == CLAIMS
    assert all(r.verdict in ("pass", "fail") and len(r.values) == 1 for r in results)
    assert "16 vs 64 tokens per tile" in results[1].note  # 64 px tiles, 8 px patches
    metrics = [
        json.loads(line) for line in path.with_name("metrics.jsonl").read_text().splitlines()
    ]
    variants = {m["variant"] for m in metrics}
    assert {
        "main",
        "single",
        "no_unshuffle",
        "token",
        "unfiltered",
        "large",
        "progressive",
    } <= variants


def test_an_unknown_override_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(
        cli.app,
        [
            "run",
            "internvl",
            "--preset",
            "smoke",
            "-o",
            "stage_steps=1,2",
            "--runs-dir",
            str(tmp_path),
        ],
    )
    assert (
        result.exit_code != 0
        and "stage_steps" in result.output
        and "Traceback" not in result.output
    )


@pytest.mark.parametrize(
    "kw,match",
    [({"seeds": ()}, "seeds"), ({"weightings": ("square",)}, "weightings"), ({"stage_steps": (1, 2)}, "stage_steps"),
     ({"workers": 0}, "workers")],
)  # fmt: skip
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        Config(**kw)
