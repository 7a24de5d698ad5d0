"""The reproduction end to end at smoke size, finetuning, and dataset building."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from minirepro.core.results import RunDir
from minirepro.papers.retry import build_tokenizer, prompt_ids
from minirepro.papers.sampling import (
    CLAIMS,
    PRESETS,
    Config,
    ModelSpec,
    TrainSpec,
    build_dataset,
    finetune,
    igsm_sampler,
    pretrain,
    run,
    solution_document,
)
from minirepro.tasks.igsm import GenConfig, generate

GEN = GenConfig(min_op=1, max_op=2, max_edge=3, n_layer=(2, 2), width=(2, 2), mod=7,
                symbol_method="seq", perm_level=6)  # fmt: skip


def test_smoke_run_never_passes_on_nothing(tmp_path) -> None:
    cfg = dataclasses.replace(PRESETS["smoke"], seeds=(0,))
    out = RunDir("sampling", cfg, root=tmp_path)
    results = run(cfg, out)
    assert [r.claim for r in results] == CLAIMS
    logs = [json.loads(line) for line in out.metrics_path.read_text().splitlines()]
    samples = [m for m in logs if m["stage"] == "sample"]
    assert {m["model"] for m in samples} == {"SE", "WC", "WC d=24 L=1"}
    for m in samples:  # every WC model sampled to SE's measured FLOPs
        assert m["flops"] == 2 * m["params"] * m["tokens"]
        assert m["k"] >= 1 and 0.5 < m["flops_ratio"] < 1.5
    params = {m["model"]: m["params"] for m in logs if m["stage"] == "pretrain"}
    assert all(params[m["model"]] == m["params"] for m in samples)  # tied weights once
    assert len([m for m in logs if m["stage"] == "finetune"]) == 6
    # smoke models learn nothing: 0 against 0 is NaN, never a pass
    by_claim = {r.claim: r for r in results}
    for claim in CLAIMS[3:7]:
        assert by_claim[claim].verdict == "fail"
    assert math.isnan(by_claim[CLAIMS[3]].mean)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="smaller than se"):
        Config(wc=(64, 2, 4), se=(32, 2, 2))
    with pytest.raises(ValueError, match="n_head"):
        Config(student=(30, 1, 4))
    with pytest.raises(ValueError, match="temperature"):
        Config(temperature=0.0)
    with pytest.raises(ValueError, match="k_se"):
        Config(k_se=0)


def test_finetune_learns_the_given_solutions_and_dataset_filters() -> None:
    torch.manual_seed(0)
    problems = [generate(GEN, 5, i) for i in range(6)]
    tok = build_tokenizer(problems, mod=7, whole_names=True)
    ids, labels = solution_document(tok, problems[0], problems[0].solution)
    n_prompt = len(prompt_ids(tok, problems[0]))
    assert labels[:n_prompt] == [-100] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tok.eos_id
    spec = ModelSpec("m", 32, 1, 2)
    model, _ = pretrain(spec, tok, iter(problems * 4), TrainSpec(steps=2, seq_len=192), 192)
    before = [p.detach().clone() for p in model.parameters()]
    pairs = [(p, p.solution) for p in problems] + [(problems[0], "Define <bos> junk")]
    tuned, loss = finetune(
        model, tok, pairs, TrainSpec(steps=25, lr=1e-2, warmup_steps=2, seq_len=192)
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # a copy
    assert all(not torch.equal(a, b) for a, b in zip(before, tuned.parameters()))
    assert loss < 2.5  # from ~5 (uniform over the vocabulary) on 6 memorised solutions
    with pytest.raises(ValueError, match="none of the 1 pairs"):
        finetune(model, tok, [(problems[0], "x" * 10)], TrainSpec(steps=1, seq_len=192))
    # dataset building: the sampled, judged and answer-filtered pairs of a real sampler
    sampler = igsm_sampler(tuned, tok, max_new_tokens=60, seed=1)
    data = build_dataset(sampler, problems, 0.5, k=2)
    assert len(data.judged) == 6 and all(len(j) == 2 for j in data.judged)
    kept = [j.text for js in data.judged for j in js if j.answer_correct]
    assert [t for _, t in data.pairs] == kept and data.stats.n_kept == len(kept)
    assert data.sampled.flops == 2 * sampler.n_params * data.sampled.tokens
