"""retry: token-matched data, masking, scoring and the smoke preset end to end."""

import dataclasses
import json
import math
import random

import pytest
import torch

from minirepro.core.results import Result, RunDir
from minirepro.papers.retry import (
    CLAIMS,
    PAPER,
    PRESETS,
    Config,
    Variant,
    bucket_batches,
    build_tokenizer,
    document,
    pack_rows,
    score,
    variants,
)
from minirepro.registry import get_paper
from minirepro.tasks.igsm import BACK, GenConfig, generate_many, retry_solution

GEN = GenConfig(min_op=1, max_op=4, max_edge=6, n_layer=(2, 3), width=(2, 3))


@pytest.fixture(scope="module")
def problems():
    return generate_many(GEN, 80, seed=5)


@pytest.fixture(scope="module")
def tok(problems):
    return build_tokenizer(problems)


def test_paper_is_registered():
    assert get_paper("retry") is PAPER
    names = [v.name for v in variants(PRESETS["full"])]
    assert names == ["error-free", "retry 0.1", "retry 0.3", "retry 0.5", "retry 0.5 masked",
                     "retry_weak 0.5"]  # fmt: skip
    assert [v.name for v in variants(PRESETS["quick"])] == [
        "error-free", "retry 0.1", "retry 0.3", "retry 0.5", "retry 0.1 masked", "retry_weak 0.1"
    ]  # fmt: skip


def test_documents_learn_the_solution_and_mask_only_wrong_steps(problems, tok):
    back = tok.token_to_id(BACK)
    for i, p in enumerate(problems[:30]):
        ids, labels = document(tok, p, Variant("r", 0.5), random.Random(i))
        ids_m, labels_m = document(tok, p, Variant("m", 0.5, mask_errors=True), random.Random(i))
        assert ids == ids_m  # the same draws: the same document
        n_prompt = len(tok.encode(p.text)) + 2
        assert all(v == -100 for v in labels[:n_prompt]) and labels[-1] == tok.eos_id
        assert labels[n_prompt:] == ids[n_prompt:]
        masked = [t for t, lab in zip(ids, labels_m) if lab == -100][n_prompt:]
        wrong = [t for t, lab in zip(ids[n_prompt:], labels_m[n_prompt:]) if lab == -100]
        assert masked == wrong
        if BACK in retry_solution(p, 0.5, random.Random(i)):
            assert back in ids and all(lab != -100 for t, lab in zip(ids, labels_m) if t == back)
            assert tok.decode(wrong).startswith("Define")
        else:
            assert not wrong


def test_whole_names_are_one_token_and_decode_back(problems, tok):
    names = build_tokenizer(problems, whole_names=True)
    for p in problems[:30]:
        for text in (p.text, p.solution):
            ids = names.encode(text)
            assert names.decode(ids) == tok.decode(tok.encode(text))  # same text back
            assert len(ids) <= len(tok.encode(text))
        assert score([p], [names.decode(names.encode(p.solution))])[0].accuracy == 1.0
    assert len(names.encode("Stone City's Night Market")) == 4
    assert len(tok.encode("Stone City's Night Market")) == 6


def test_statement_loss_covers_the_statement_only_when_asked(problems, tok):
    p, v = problems[0], Variant("ef")
    ids, plain = document(tok, p, v, random.Random(0))
    _, full = document(tok, p, v, random.Random(0), statement_loss=True)
    n_prompt = len(tok.encode(p.text)) + 2
    assert full[n_prompt:] == plain[n_prompt:] and full[0] == -100
    assert full[1:n_prompt] == ids[1:n_prompt] and set(plain[:n_prompt]) == {-100}


def test_packing_matches_tokens_and_left_pads(problems, tok):
    counts = {}
    for v in (Variant("ef"), Variant("r", 0.5)):
        rng = random.Random(0)
        docs = (document(tok, p, v, rng) for p in problems)
        x, y, ids, n = pack_rows(docs, 6, 512, tok.pad_id)
        assert x.shape == y.shape == ids.shape == (6, 512)
        assert bool((ids[x == tok.pad_id] == 0).all()) and bool((ids[x == tok.bos_id] > 0).all())
        starts = (x == tok.bos_id).sum(1)  # one document id per <bos>, numbered 1, 2, ...
        assert ids.max(1).values.tolist() == starts.tolist()
        counts[v.name] = n
        for row in x:  # padding only on the left, then <bos> starts a document
            real = (row != tok.pad_id).nonzero()
            first = int(real[0])
            assert row[first] == tok.bos_id and bool((row[first:] != tok.pad_id).all())
        assert bool((y[x == tok.pad_id] == -100).all())
    assert counts["ef"] > counts["r"] > 0  # same tokens, fewer (longer) retry documents
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows((document(tok, p, Variant("ef"), random.Random(0)) for p in problems), 2, 16, 0)


def test_buckets_hold_whole_documents_of_similar_length(problems, tok):
    used = {}
    for v in (Variant("ef"), Variant("r", 0.5)):
        docs = [document(tok, p, v, random.Random(0)) for p in problems]
        batches, n, tokens = bucket_batches(iter(docs), 6, 300, tok.pad_id, 512, window=3)
        assert len(batches) == 6 and n <= len(docs)
        rows = []
        for x, y, ids in batches:
            assert x.shape == y.shape == ids.shape
            real = int((ids > 0).sum()) + len(x)  # inputs drop each document's last token
            assert real >= 300  # a batch closes at the document that reaches step_tokens
            for row, target, d in zip(x, y, ids):
                first = int((d > 0).nonzero()[0])  # left padding, then one whole document
                assert row[first] == tok.bos_id and bool((d[first:] == 1).all())
                assert bool((row[:first] == tok.pad_id).all())
                assert bool((target[: max(0, first - 1)] == -100).all())
                rows.append(row[first:].tolist() + [int(target[-1])])
        # every document used is one of the inputs, whole and unchanged, each once
        assert sorted(rows) == sorted(ids for ids, _ in docs[:n])
        assert tokens == sum(len(r) for r in rows)
        used[v.name] = (n, tokens)
    # about the same tokens (one document per batch apart); fewer, longer retry documents
    assert abs(used["ef"][1] - used["r"][1]) <= 6 * max(
        len(document(tok, p, Variant("r", 0.5), random.Random(0))[0]) for p in problems
    )
    assert used["ef"][0] > used["r"][0]
    docs = [document(tok, p, Variant("ef"), random.Random(0)) for p in problems]
    widths = [
        b[0].shape[1] for b in bucket_batches(iter(docs), 6, 300, tok.pad_id, 512, window=6)[0]
    ]
    assert len(set(widths)) > 1  # sorted windows: short and long documents batched apart
    with pytest.raises(ValueError, match="does not fit max_len=16"):
        bucket_batches(iter(docs), 2, 300, tok.pad_id, 16)
    with pytest.raises(ValueError, match="ran out after"):
        bucket_batches(iter(docs[:3]), 6, 300, tok.pad_id, 512)
    with pytest.raises(ValueError, match="step_tokens"):
        bucket_batches(iter(docs), 6, 0, tok.pad_id, 512)


def test_score_checks_every_step(problems):
    ps = problems[:20]
    sc, _ = score(ps, [p.solution for p in ps])
    assert sc.accuracy == 1.0 and sc.back_rate == 0.0 and sc.progress == 1.0
    sols = [retry_solution(p, 1.0, i) for i, p in enumerate(ps)]
    sc, _ = score(ps, sols)
    assert sc.accuracy == 1.0 and sc.back_rate > 0.5
    broken = [p.solution.rsplit("=", 1)[0] + "= 99." for p in ps]
    sc, checks = score(ps, broken)
    assert sc.accuracy == 0.0 and all(c.failed_step == len(p.steps) - 1 for c, p in zip(checks, ps))
    expect = sum((len(p.steps) - 1) / len(p.steps) for p in ps) / len(ps)
    assert sc.progress == pytest.approx(expect)
    with pytest.raises(ValueError, match="solutions"):
        score(ps, broken[:3])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="retry rates"):
        Config(retry_rates=(0.0,))
    with pytest.raises(ValueError, match="train_ops"):
        Config(train_ops=(4, 1))
    with pytest.raises(ValueError, match="ablation_rate"):
        Config(retry_rates=(0.3,), ablation_rate=0.5)
    with pytest.raises(ValueError, match="workers"):
        Config(workers=0)
    with pytest.raises(ValueError, match="headline_bin 3"):
        Config(test_bins=((1, 1), (2, 2), (3, 3)), headline_bin=3)


def test_smoke_preset_runs_end_to_end(tmp_path):
    cfg = PRESETS["smoke"]
    out = RunDir("retry", cfg, root=tmp_path, preset="smoke")
    torch.manual_seed(0)
    results = PAPER.run(cfg, out)
    assert all(isinstance(r, Result) for r in results) and len(results) == len(CLAIMS)
    for claim, r in zip(CLAIMS, results):
        assert r.claim.startswith(claim)
        assert len(r.values) == len(cfg.seeds)
        assert r.verdict == ("pass" if r.criterion.holds(r.mean) else "fail")
    logs = [json.loads(line) for line in out.metrics_path.read_text().splitlines()]
    evals = [r for r in logs if r.get("stage") == "eval"]
    assert len(evals) == len(cfg.seeds) * len(variants(cfg)) * len(cfg.test_bins)
    packs = {r["variant"]: r for r in logs if r.get("stage") == "pack"}
    tokens = [r["tokens"] for r in packs.values()]  # the same tokens, up to a document a step
    assert max(tokens) - min(tokens) <= cfg.steps * cfg.max_len


def test_workers_give_the_results_of_one_process(tmp_path):
    # two spawned single-threaded workers train each model exactly as this process would
    cfg = dataclasses.replace(PRESETS["smoke"], seeds=(0,), threads=1)
    logs = {}
    for workers in (1, 2):
        c = dataclasses.replace(cfg, workers=workers)
        out = RunDir("retry", c, root=tmp_path / str(workers), preset="smoke")
        values = json.dumps([r.values for r in PAPER.run(c, out)])  # NaN reads as NaN
        lines = [json.loads(line) for line in out.metrics_path.read_text().splitlines()]
        keep = ("train", "eval")
        logs[workers] = (
            values,
            [
                {k: v for k, v in r.items() if k != "seconds"}
                for r in lines
                if r.get("stage") in keep
            ],
        )
    assert logs[1] == logs[2]
    assert len(logs[1][1]) == len(variants(cfg)) * (1 + len(cfg.test_bins))


def test_cli_rejects_bad_options_cleanly(tmp_path):
    from typer.testing import CliRunner

    from minirepro import cli

    runner = CliRunner()
    for override, message in [
        ("retry_rates=0", "retry rates"),
        ("symbol_method=greek", "symbol_method"),
        ("workers=0", "workers"),
        ("headline_bin=5", "headline_bin"),
        ("ablation_bin=3", "ablation_bin"),
        ("step_tokens=0", "step_tokens"),
    ]:
        args = ["run", "retry", "--preset", "smoke", "--runs-dir", str(tmp_path), "-o", override]
        result = runner.invoke(cli.app, args)
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output


def test_verdicts_follow_the_measured_accuracies():
    from minirepro.papers.retry.repro import _results

    cfg = dataclasses.replace(
        PRESETS["quick"], headline_bin=-1, ablation_bin=None, ablation_rate=0.5
    )
    names = [v.name for v in variants(cfg)]

    def table(hard):  # accuracies per variant, seed, bin; `hard` sets the last bin
        return {n: [[0.9, 0.8, hard[n]] for _ in cfg.seeds] for n in names}

    good = dict.fromkeys(names, 0.5) | {"error-free": 0.3, "retry 0.5 masked": 0.45}
    rs = _results(cfg, table(good), dict.fromkeys(names, [0.01, 0.02]))
    assert [r.verdict for r in rs] == ["pass", "pass", "pass", "pass"]
    assert rs[0].mean == pytest.approx(0.2)
    zero = dict.fromkeys(names, 0.0)
    rs = _results(cfg, table(zero), dict.fromkeys(names, [0.0, 0.0]))
    assert rs[0].verdict == "fail"  # no gain
    assert rs[1].verdict == rs[2].verdict == "fail"  # nothing to compare: NaN
    quick = dataclasses.replace(cfg, ablations=False)  # not trained: NaN
    trained = {n: v for n, v in table(good).items() if "masked" not in n and "weak" not in n}
    rs = _results(quick, trained, dict.fromkeys(trained, [0.01, 0.02]))
    assert [r.verdict for r in rs] == ["pass", "fail", "fail", "pass"]
    assert all(math.isnan(v) for r in rs[1:3] for v in r.values)
    # the headline on the second bin: the last (0.5 vs 0.3) no longer counts
    inside = dataclasses.replace(
        cfg, headline_bin=1, train_ops=(1, 2), test_bins=((1, 1), (2, 2), (3, 3))
    )
    rs = _results(inside, table(good), dict.fromkeys(names, [0.01, 0.02]))
    assert list(rs[0].values) == [0.0, 0.0] and rs[0].verdict == "fail"
    assert "op 2-2, inside the training range" in rs[0].claim
    # the ablations on their own bin: the first (0.9 for every model) compares equal models
    first = dataclasses.replace(inside, ablation_bin=0)
    rs = _results(first, table(zero), dict.fromkeys(names, [0.0, 0.0]))
    assert list(rs[1].values) == list(rs[2].values) == [0.0, 0.0]
    assert rs[1].verdict == rs[2].verdict == "pass" and "op 1-1" in rs[1].claim
