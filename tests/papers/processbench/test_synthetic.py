"""The synthetic benchmark: every injected error is at its label, checked by iGSM."""

import random
import zlib
from collections import Counter

import pytest

from minirepro.papers.processbench import (
    ERROR_KINDS,
    SynthConfig,
    easy_hard,
    inject_error,
    load_records,
    synthetic_records,
    write_records,
)
from minirepro.tasks.igsm import check_solution, generate


def _problems_and_records(cfg, seed, subset):
    recs = synthetic_records(cfg, seed, subset)
    base = zlib.crc32(f"{subset}:{seed}".encode())
    return [generate(cfg.gen_config(), base, i) for i in range(cfg.n)], recs


@pytest.mark.parametrize("ops", [(1, 3), (5, 7)])
def test_every_error_is_at_its_label_and_earlier_steps_pass(ops):
    cfg = SynthConfig(n=120, min_op=ops[0], max_op=ops[1], p_error=0.8)
    problems, recs = _problems_and_records(cfg, 0, "t")
    kinds = Counter()
    for p, r in zip(problems, recs):
        res = check_solution(p, " ".join(r.steps))
        assert p.op == r.meta["op"] and ops[0] <= p.op <= ops[1]
        if r.label == -1:
            assert res.correct and r.final_answer_correct and r.meta["error_kind"] is None
            continue
        kinds[r.meta["error_kind"]] += 1
        assert res.failed_step == r.label, (r.meta, res.reason)
        assert all(s.ok for s in res.steps[: r.label])  # every step before it is right
    assert set(kinds) == set(ERROR_KINDS)


def test_final_answer_correct_is_computed_from_the_written_steps():
    cfg = SynthConfig(n=150, min_op=2, max_op=5, p_error=1.0)
    problems, recs = _problems_and_records(cfg, 1, "t")
    seen = Counter()
    for p, r in zip(problems, recs):
        last = r.steps[-1]
        written = int(last.rstrip(".").rsplit("=", 1)[1])
        # the question is the last step whenever that step is in the solution
        if r.meta["error_kind"] != "skipped":
            assert (written == p.answer) == r.final_answer_correct
        else:
            assert r.final_answer_correct
        seen[(r.meta["propagated"], r.final_answer_correct)] += 1
    assert seen[(True, False)] > 10  # propagated errors make the answer wrong
    assert seen[(False, True)] > 10  # and errors with a right answer exist


def test_propagation_rewrites_later_steps_consistently():
    p = generate(SynthConfig(min_op=5, max_op=5).gen_config(), 3)
    for seed in range(10):
        made = inject_error(p, "arithmetic", random.Random(seed), propagate=True)
        steps, k, fac = made
        res = check_solution(p, " ".join(steps))
        assert res.failed_step == k
        # from the wrong value on, each later step's arithmetic is internally consistent:
        # the steps after k differ from the originals only where they use changed values
        assert steps[:k] == [s.text for s in p.steps[:k]]


def test_seeded_and_split_by_op(tmp_path):
    cfg = SynthConfig(n=10)
    a = easy_hard(cfg, 5, (2, 3), (6, 7))
    assert a == easy_hard(cfg, 5, (2, 3), (6, 7))
    assert {r.subset for r in a} == {"igsm-easy", "igsm-hard"}
    assert all(r.meta["op"] >= 6 for r in a if r.subset == "igsm-hard")
    back = load_records(write_records(a, tmp_path / "b.jsonl")).records
    assert back == a


def test_bad_config():
    with pytest.raises(ValueError, match="kinds"):
        SynthConfig(kinds=("typo",))
    with pytest.raises(ValueError, match="p_error"):
        SynthConfig(p_error=1.5)
