import json
import math

import pytest
from typer.testing import CliRunner

from minirepro import cli
from minirepro.core.results import RunDir
from minirepro.papers.coconut import METHODS, PRESETS, run
from minirepro.papers.coconut.repro import CLAIMS, Config, results


def _rows(acc, tokens=None, frontier=0.3, unreachable=0.1):
    tokens = tokens or {m: 10.0 for m in METHODS}
    fr = {"mass": {"frontier": [frontier], "unreachable": [unreachable]},
          "per_node": {"frontier": [frontier / 2], "unreachable": [unreachable / 5]}}  # fmt: skip
    return {s: {"n_test": 500, "frontier": fr,
                **{m: {"accuracy": acc[m] + s, "tokens_per_answer": tokens[m]} for m in METHODS}}
            for s in (0, 1)}  # fmt: skip


def test_verdicts_follow_the_criteria():
    paper = {"coconut": 97.0, "cot": 77.5, "no_cot": 76.7, "pause": 96.6, "no_curriculum": 76.1}
    tokens = {"coconut": 10.0, "cot": 40.0, "no_cot": 8.0, "pause": 10.0, "no_curriculum": 10.0}
    res = results(Config(), _rows(paper, tokens))
    assert [r.claim for r in res] == CLAIMS
    assert all(r.verdict == "pass" for r in res), [(r.claim, r.mean) for r in res]
    assert res[0].mean == pytest.approx(19.5) and res[4].mean == pytest.approx(0.25)
    flat = {m: 50.0 for m in METHODS}
    bad = results(Config(), _rows(flat, frontier=0.1, unreachable=0.3))
    assert [r.verdict for r in bad] == ["fail"] * 3 + ["pass"] + ["fail"] * 2 + ["fail"] * 5


@pytest.mark.parametrize(
    "kwargs, match",
    [({"seeds": ()}, "seeds"), ({"methods": ("coconut", "x")}, "unknown method"),
     ({"n_nodes": (3, 4)}, "n_nodes"), ({"max_latent_stage": -1}, "max_latent_stage"),
     ({"precision": "fp8"}, "precision"), ({"n_test": 0}, "n_test"),
     ({"warmup_steps": -1}, "warmup_steps"), ({"min_lr_ratio": 1.5}, "min_lr_ratio")],
)  # fmt: skip
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Config(**kwargs)


def test_one_file_without_the_other_is_refused(tmp_path):
    from minirepro.papers.coconut.repro import load_data

    with pytest.raises(ValueError, match="train_path and test_path"):
        load_data(Config(train_path=str(tmp_path / "a.json")), 0)


def test_smoke_runs_every_stage_and_training_beats_untrained(tmp_path):
    cfg = PRESETS["smoke"]
    out = RunDir("coconut", cfg, root=tmp_path, preset="smoke")
    res = run(cfg, out)
    assert [r.claim for r in res] == CLAIMS
    assert all(not math.isnan(r.mean) for r in res)
    logs = [json.loads(line) for line in out.metrics_path.read_text().splitlines()]
    trained = {r["method"]: r for r in logs if "method" in r}
    assert set(trained) == set(METHODS)
    for m, r in trained.items():  # held-out loss of the final-stage sequences falls
        assert r["heldout_loss"] < r["heldout_loss_untrained"] - 0.5, (m, r)
    assert (out.figures_dir / "coconut_frontier.png").exists()


def test_cli_lists_coconut_and_names_a_bad_override(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli.app, ["list"])
    assert res.exit_code == 0 and "coconut" in res.output
    res = runner.invoke(cli.app, ["run", "coconut", "--preset", "smoke", "-o", "methods=['x']"])
    assert res.exit_code != 0 and "unknown method" in res.output


def test_a_users_prosqa_files_train_and_evaluate_unchanged(tmp_path):
    from minirepro.papers.coconut.repro import load_data, run_job
    from minirepro.tasks.prosqa import ProsQAConfig, generate_prosqa, save_prosqa

    small = ProsQAConfig(n_nodes=(7, 9), mode_nodes=None, n_steps=(2, 3))
    save_prosqa(generate_prosqa(60, 7, small), tmp_path / "prosqa_train.json")
    save_prosqa(generate_prosqa(12, 8, small), tmp_path / "prosqa_test.json")
    cfg = Config(
        methods=("no_cot",), n_test=10, d_model=32, max_latent_stage=1, steps_per_stage=2,
        final_steps=2, batch_size=4, train_path=str(tmp_path / "prosqa_train.json"),
        test_path=str(tmp_path / "prosqa_test.json"),
    )  # fmt: skip
    train, test = load_data(cfg, 0)
    assert len(train) == 60 and len(test) == 10
    res = run_job(cfg, 0, "no_cot")
    assert res["n_test"] == 10 and 0.0 <= res["metrics"]["accuracy"] <= 100.0
