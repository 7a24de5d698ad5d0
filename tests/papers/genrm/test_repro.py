"""The reproduction at smoke size, the CLI, and SmolLM2 as a prompted judge."""

import json

import pytest
import torch
from typer.testing import CliRunner

from minirepro import cli
from minirepro.core.results import RunDir
from minirepro.papers.genrm import CLAIMS, PAPER, PRESETS, Config, TextFormat, llm_judge, yes_scores
from minirepro.registry import get_paper
from minirepro.tasks.algorithmic import LastLetter, Problem

runner = CliRunner(env={"COLUMNS": "200"})


def test_smoke_preset_runs(tmp_path):
    cfg = PRESETS["smoke"]
    out = RunDir("genrm", cfg, root=tmp_path)
    results = PAPER.run(cfg, out)
    assert [r.claim for r in results] == CLAIMS[:4]  # no judge at smoke size
    assert all(r.verdict in ("pass", "fail") and len(r.values) == len(cfg.seeds) for r in results)
    rows = [json.loads(x) for x in out.metrics_path.read_text().splitlines()]
    evals = [r for r in rows if r["stage"] == "eval"]
    assert len(evals) == len(cfg.seeds) and 0 <= evals[0]["pass@1"] <= evals[0]["coverage/4"]
    assert {r["verifier"] for r in rows if r["stage"] == "verifier"} == {
        "genrm", "genrm_lambda0", "genrm_cot", "discriminative"
    }  # fmt: skip


def test_registered_and_cli_rejects_unknown_options(tmp_path):
    assert get_paper("genrm") is PAPER
    res = runner.invoke(
        cli.app, ["run", "genrm", "--preset", "smoke", "--runs-dir", str(tmp_path), "-o", "nope=1"]
    )
    assert res.exit_code != 0 and "nope" in res.output


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ns": (1, 64)}, "ns must lie"),
        ({"ks": (0,)}, "ks must be"),
        ({"lam": 0.0}, "lambda > 0"),
        ({"judge_problems": 100, "n_test": 4}, "judge_problems"),
        ({"seeds": ()}, "must not be empty"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Config(**kwargs)


@pytest.mark.llm
@pytest.mark.slow
def test_smollm2_judge_reads_p_yes_after_the_chat_prompt(smollm2):
    task = LastLetter(["cat", "dog", "bird", "fish", "owl", "ant", "bee", "cow", "elk", "fox"])
    fmt = TextFormat(smollm2.tokenizer, task)
    assert smollm2.tokenizer.decode([fmt.yes_id]) == "Yes" and fmt.yes_id != fmt.no_id
    p = Problem(("cat", "dog", "bird"))
    pairs = [(p, task.solve(p).text), (p, "cat : t | dog : o | bird : d"), (p, "cat : t")]
    judge = llm_judge(smollm2, task)
    right = judge.score(pairs)
    seqs = [fmt.direct_ids(*x) for x in pairs]
    left = yes_scores(smollm2.model, seqs, fmt.yes_id, fmt.no_id, padding="left", pad_id=fmt.pad_id)
    torch.testing.assert_close(left, right, atol=1e-4, rtol=1e-3)
    with torch.no_grad():
        ref = smollm2.model(torch.tensor([seqs[2]]))[0, -1].float().softmax(-1)[fmt.yes_id]
    torch.testing.assert_close(right[2], ref, atol=1e-5, rtol=1e-4)
    assert "Is the answer correct (Yes/No)?" in smollm2.tokenizer.decode(seqs[0])
