"""The reproduction at smoke size, the eval command end to end, and the SmolLM2 critic."""

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from minirepro import cli
from minirepro.core.generate import generate
from minirepro.core.results import RunDir
from minirepro.papers.processbench import (
    PAPER,
    PRESETS,
    Critic,
    SynthConfig,
    Verifier,
    parse_answer,
    synthetic_records,
    write_records,
)
from minirepro.papers.processbench.evaluate import evaluate_records

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cfg = replace(PRESETS["smoke"], save_verifiers=True)
    out = RunDir("processbench", cfg, root=tmp_path_factory.mktemp("runs"))
    return cfg, out, PAPER.run(cfg, out)


def test_smoke_preset_runs_and_writes_the_benchmark(smoke_run):
    cfg, out, results = smoke_run
    assert len(results) == 2  # no critic at smoke size
    assert all(r.verdict in ("pass", "fail") and r.values for r in results)
    lines = (out.path / "benchmark.jsonl").read_text().splitlines()
    assert len(lines) == 2 * cfg.n_test and json.loads(lines[0])["id"] == "igsm-easy-0"
    stages = [json.loads(x)["stage"] for x in out.metrics_path.read_text().splitlines()]
    assert stages.count("verifier") == 2 * len(cfg.seeds)
    assert Verifier.load(out.path / "verifiers" / "prm-seed0").supervision == "process"


def test_eval_command_with_a_saved_verifier(smoke_run, tmp_path):
    _, out, _ = smoke_run
    recs = synthetic_records(SynthConfig(n=12), 9, "gsm8k") + synthetic_records(
        SynthConfig(n=12), 9, "math"
    )
    data = write_records(recs, tmp_path / "mine.jsonl")
    pred = tmp_path / "pred.jsonl"
    model = str(out.path / "verifiers" / "prm-seed0")
    args = ["processbench", "eval", str(data), "--evaluator", "prm", "--model", model]
    res = runner.invoke(cli.app, [*args, "--calibration-subset", "gsm8k", "--output", str(pred)])
    assert res.exit_code == 0, res.output
    assert "gsm8k" in res.output and "math" in res.output and "average F1" in res.output
    rows = [json.loads(x) for x in pred.read_text().splitlines()]
    assert len(rows) == 24 and {"prediction", "match", "step_scores"} <= set(rows[0])
    res = runner.invoke(cli.app, [*args, "--limit", "3", "--output", str(pred)])
    assert res.exit_code == 0 and len(pred.read_text().splitlines()) == 6
    # a malformed record: a one-line error naming it, or skipped with --skip-bad
    with open(data, "a") as f:
        f.write(json.dumps(recs[0].to_dict() | {"id": "math-99", "label": 50}) + "\n")
    res = runner.invoke(cli.app, args)
    assert res.exit_code == 2 and "line 25 (id 'math-99'): field 'label'" in res.output
    res = runner.invoke(cli.app, [*args, "--skip-bad"])
    assert res.exit_code == 0 and "skipped 1 malformed record" in res.output
    res = runner.invoke(cli.app, [*args, "--skip-bad", "--evaluator", "outcome"])
    assert res.exit_code == 2 and "not 'outcome'" in res.output
    res = runner.invoke(cli.app, ["processbench", "eval", str(data), "--evaluator", "magic"])
    assert res.exit_code == 2 and "unknown evaluator" in res.output
    res = runner.invoke(cli.app, ["processbench", "eval", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2 and "no such file" in res.output


@pytest.mark.llm
@pytest.mark.slow
def test_critic_decodes_like_core_generate(smollm2):
    torch.set_num_threads(1)  # one thread: far less time lost to busy cores (reset per test)
    rec = synthetic_records(SynthConfig(n=2, min_op=1, max_op=2, max_edge=3), 0, "t")
    critic = Critic(smollm2)
    try:
        outs = critic.predict(rec, max_tokens=8)
        ids = critic.prompt_ids(rec[0])
        want = generate(smollm2.model, ids, max_new_tokens=8, stop_tokens=smollm2.stop_tokens)[0]
        assert outs[0].critiques[0] == smollm2.tokenizer.decode(want, skip_special_tokens=True)
        assert outs[0].prediction == parse_answer(outs[0].critiques[0], len(rec[0].steps))
        voted = critic.predict(rec[:1], n_samples=3, max_tokens=6)
        assert len(voted[0].samples) == 3 and len(set(voted[0].critiques)) > 1
        forced = critic.predict(rec, max_tokens=4, answer_prefix="\\boxed{")
        assert all(o.critiques[0].startswith("\\boxed{") for o in forced)
    finally:
        critic.close()
    report, rows = evaluate_records(rec[:1], "critic", smollm2, max_new_tokens=1)
    assert rows[0]["critiques"] and "t" in report.subsets


def test_config_errors():
    with pytest.raises(ValueError, match="n_critic"):
        replace(PRESETS["smoke"], n_critic=100)
    with pytest.raises(ValueError, match="easy_ops"):
        replace(PRESETS["smoke"], easy_ops=(3, 1))
