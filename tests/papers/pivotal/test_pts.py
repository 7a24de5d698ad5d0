"""Pivotal Token Search on hand-made policies whose success probability jumps at known
tokens: it finds exactly those tokens, within the log bound on p-estimates, and never
samples a prefix twice."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from minirepro.papers.pivotal import (
    PreferencePair,
    PTSConfig,
    SuccessEstimator,
    estimate_bound,
    pivot_pairs,
    pivotal_tokens,
    read_jsonl,
    response_pairs,
    write_jsonl,
)

QUERY = [1, 2, 3]
ALT = 7  # at a pivot, this token moves p the other way
WIN, LOSE = 5, 6  # the outcome token a completion ends with


class JumpPolicy:
    """p(success | prefix) = p0 + the jumps of the response's pivotal tokens in the prefix
    (minus them where the prefix has ALT instead). Completions are one outcome token;
    ``exact`` returns exactly round(p n) wins, otherwise they are drawn at random."""

    def __init__(self, response, jumps: dict[int, float], p0: float, exact=True, seed=0):
        self.response, self.jumps, self.p0, self.exact = list(response), jumps, p0, exact
        self.rng = random.Random(seed)
        self.calls: Counter = Counter()

    def p(self, prefix) -> float:
        assert list(prefix[: len(QUERY)]) == QUERY
        p = self.p0
        for i, t in enumerate(prefix[len(QUERY) :]):
            if i in self.jumps and t == self.response[i]:
                p += self.jumps[i]
            elif i in self.jumps and t == ALT:
                p -= self.jumps[i]
        return min(1.0, max(0.0, p))

    def sample(self, prefix, n):
        self.calls[tuple(prefix)] += 1
        p = self.p(prefix)
        if self.exact:
            k = round(p * n)
            return [[WIN]] * k + [[LOSE]] * (n - k)
        return [[WIN if self.rng.random() < p else LOSE] for _ in range(n)]

    def top_tokens(self, prefix, k):
        i = len(prefix) - len(QUERY)
        return [self.response[i], 99, ALT][:k]


def oracle(response) -> bool:
    return response[-1] == WIN


def search(length, jumps, p0=0.3, exact=True, n_samples=20, seed=0):
    response = [100 + i for i in range(length)]
    policy = JumpPolicy(response, jumps, p0, exact, seed)
    est = SuccessEstimator(policy, oracle, QUERY, n_samples)
    cfg = PTSConfig(n_samples=n_samples, p_gap=0.2)
    return policy, est, pivotal_tokens(est, response, cfg), cfg


@pytest.mark.parametrize(
    "length, jumps",
    [
        (64, {17: 0.3}),
        (100, {0: 0.25, 99: 0.3}),
        (37, {5: 0.25, 6: 0.25}),  # adjacent pivots
        (200, {3: 0.25, 90: 0.25, 150: -0.25}),  # a drop after two rises
        (1, {0: 0.4}),
        (513, {256: 0.35}),
    ],
)
def test_pts_finds_exactly_the_pivots_within_the_log_bound(length, jumps):
    policy, est, pivots, _ = search(length, jumps)
    assert [p.position for p in pivots] == sorted(jumps)
    for pv in pivots:
        assert pv.token == 100 + pv.position
        assert pv.delta == pytest.approx(jumps[pv.position], abs=0.03)
        assert pv.prefix == tuple(100 + i for i in range(pv.position))
    assert est.n_estimates <= estimate_bound(length, len(jumps))
    assert est.oracle_calls == est.n_estimates * 20
    assert max(policy.calls.values()) == 1  # no prefix sampled twice
    if length >= 64:
        assert est.n_estimates < length / 4  # a linear scan needs length + 1


def test_estimate_bound_is_reached_and_grows_with_log_length():
    # one pivot in the last position: every level splits exactly one segment
    for length in (8, 64, 1024):
        _, est, pivots, _ = search(length, {length - 1: 0.3})
        assert len(pivots) == 1
        assert est.n_estimates == estimate_bound(length, 1) == 2 + (length - 1).bit_length()


def test_pts_with_sampled_estimates_finds_the_pivots():
    _, est, pivots, _ = search(120, {30: 0.35, 77: 0.3}, p0=0.25, exact=False, n_samples=400)
    assert [p.position for p in pivots] == [30, 77]
    assert est.n_estimates <= estimate_bound(120, 2)


def test_jumps_that_cancel_inside_a_segment_are_not_searched():
    # Algorithm 1 only splits a segment whose end points differ by p_gap: +0.3 then -0.3
    # inside the whole response leave p where it started, so neither is found
    _, est, pivots, _ = search(64, {10: 0.3, 50: -0.3})
    assert pivots == [] and est.n_estimates == 2


@pytest.mark.parametrize("p0", [0.1, 0.9])
def test_queries_outside_the_baseline_range_are_skipped(p0):
    _, est, pivots, _ = search(64, {17: 0.05}, p0=p0)
    assert pivots == [] and est.n_estimates == 1


def test_pivot_pairs_choose_the_token_that_raises_p():
    policy, est, pivots, cfg = search(64, {10: 0.3, 40: -0.6}, p0=0.4)
    assert [p.position for p in pivots] == [10, 40]
    pairs = pivot_pairs(est, policy, pivots, cfg)
    assert len(pairs) == 2
    up, down = pairs
    assert up.prompt == (*QUERY, *range(100, 110)) and up.chosen == (110,) and up.rejected == (ALT,)
    assert down.chosen == (ALT,) and down.rejected == (140,)
    assert max(policy.calls.values()) == 1  # alternatives are estimated once too


def test_response_pairs_pair_accepted_with_rejected_responses():
    class Fixed:
        def sample(self, prefix, n):
            return [[WIN], [LOSE], [1, LOSE], [2, WIN]][:n]

    pairs = response_pairs(Fixed(), oracle, QUERY, 4, random.Random(0), max_pairs=3)
    assert len(pairs) == 2  # two accepted, two rejected: each response used once
    for p in pairs:
        assert oracle(p.chosen) and not oracle(p.rejected)
    assert response_pairs(Fixed(), oracle, QUERY, 1, random.Random(0)) == []


def test_jsonl_round_trip_in_trl_format(tmp_path):
    pairs = [PreferencePair((1, 2, 3), (4,), (5,)), PreferencePair((1,), (2, 3), (4, 5, 6))]
    path = write_jsonl(pairs, tmp_path / "pairs.jsonl", lambda ids: " ".join(f"w{i}" for i in ids))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[0] == {"prompt": "w1 w2 w3", "chosen": "w4", "rejected": "w5"}
    back = read_jsonl(path, lambda text: [int(w[1:]) for w in text.split()])
    assert back == pairs


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not a JSON record"),
        ('["a"]', "expected an object"),
        ('{"prompt": "w1", "chosen": "w2"}', "'rejected'"),
        ('{"prompt": "w1", "chosen": "", "rejected": "w2"}', "'chosen'"),
        ('{"prompt": "w1", "chosen": "w2", "rejected": "w2"}', "same continuation"),
    ],
)
def test_read_jsonl_names_the_bad_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "w1", "chosen": "w2", "rejected": "w3"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as err:
        read_jsonl(path, lambda text: [int(w[1:]) for w in text.split()])
    assert "bad.jsonl:2" in str(err.value)


@pytest.mark.parametrize(
    "kw", [dict(n_samples=0), dict(p_gap=0), dict(p_min=0.9, p_max=0.1), dict(top_k=0)]
)
def test_bad_search_settings_are_refused(kw):
    with pytest.raises(ValueError):
        PTSConfig(**kw)


def test_estimator_refuses_a_policy_that_returns_too_few_samples():
    class Short:
        def sample(self, prefix, n):
            return [[WIN]]

    with pytest.raises(ValueError, match="1 completions"):
        SuccessEstimator(Short(), oracle, QUERY, 4)([])
