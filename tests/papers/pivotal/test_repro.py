"""Self-revision and instruction reversal on iGSM, the LM policy with the iGSM oracle, and
the smoke preset end to end."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from minirepro.core.results import RunDir
from minirepro.papers.pivotal import PRESETS, Config, reverse_instruction, run, self_revise
from minirepro.tasks.igsm import (
    CORRUPTIONS,
    GenConfig,
    check_solution,
    corrupt_solution,
    generate,
    step_texts,
)

GEN = GenConfig(min_op=3, max_op=5, max_edge=6, mod=7, symbol_method="seq", perm_level=6)


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_self_revision_fixes_a_draft_with_one_mistake(kind):
    revised = 0
    for i in range(12):
        p = generate(GEN, 7, i)
        bad = corrupt_solution(p, kind, i)
        if bad is None:
            continue
        draft, first_wrong = bad
        rev = self_revise(p, draft)
        assert rev is not None, (kind, i)
        assert check_solution(p, rev.revised).correct
        assert rev.kept_steps == first_wrong  # the draft's correct steps stay
        assert rev.critique.startswith(f"step {first_wrong + 1} is wrong")
        revised += 1
    assert revised >= 5
    assert self_revise(p, p.solution) is None  # nothing to revise


def test_instruction_reversal_asks_for_what_the_response_computes():
    n = 0
    for i in range(10):
        p = generate(GEN, 11, i)
        steps = step_texts(p.solution)
        for k in range(1, len(steps)):
            cut = " ".join(steps[:k])
            out = reverse_instruction(p, cut)
            assert out is not None
            q, text = out
            assert q.question == p.needed[k - 1] and q.question != p.question
            assert check_solution(q, text).correct and check_solution(q, q.solution).correct
            assert q.text.startswith(p.statement)  # same facts, a new question
            n += 1
        assert reverse_instruction(p, p.solution) is None  # answers the question already
        assert reverse_instruction(p, "Define nothing as a ; so a = 1 .") is None
    assert n >= 10


def test_smoke_preset_end_to_end(tmp_path):
    cfg = dataclasses.replace(PRESETS["smoke"], seeds=(0,), p_min=0.0, p_max=1.0)
    out = RunDir("pivotal", cfg, root=tmp_path, preset="smoke")
    results = run(cfg, out)
    assert len(results) == 4
    assert all(r.verdict in ("pass", "fail") for r in results)
    logged = [json.loads(line) for line in out.metrics_path.read_text().splitlines()]
    seed = next(m for m in logged if m.get("stage") == "seed")
    assert seed["baseline_in_range"] == cfg.n_search  # the whole range [0, 1] is searched
    assert seed["searched"] == cfg.n_search * cfg.responses_per_query
    assert (out.path / "pts_pairs_seed0.jsonl").exists()
    searched = [m for m in logged if m.get("stage") == "search"]
    assert all(m["estimates"] >= 1 for m in searched)
    assert not math.isnan(results[0].mean)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(seeds=()), "seeds"),
        (dict(search_ops=(3, 1)), "search_ops"),
        (dict(p_gap=0.0), "p_gap"),
        (dict(response_samples=1), "response_samples"),
        (dict(beta=0.0), "beta"),
        (dict(test_bins=((1, 2, 3),)), "test_bins"),
    ],
)
def test_bad_config_is_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        Config(**kw)
