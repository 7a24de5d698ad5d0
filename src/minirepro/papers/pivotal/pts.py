"""Pivotal Token Search (Algorithm 1 of the Phi-4 report): find the tokens of a response
at which the probability of eventually succeeding jumps.

``p(success | Q, prefix)`` is estimated by sampling ``n_samples`` completions of
``Q + prefix`` from the policy and checking each with an oracle. ``subdivide`` splits the
response into halves while a segment moves that probability by at least ``p_gap`` and stops
at single tokens; every estimate is cached by its prefix, so no prefix is sampled twice.

Works with any policy with ``sample(prefix, n)`` and any oracle: a response is a list of
token ids (or any hashable items), the oracle judges a whole response.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "Pivot",
    "Policy",
    "PTSConfig",
    "SuccessEstimator",
    "estimate_bound",
    "pivotal_tokens",
    "subdivide",
]

Token = Hashable
Oracle = Callable[[Sequence[Token]], bool]


@runtime_checkable
class Policy(Protocol):
    """What PTS needs from a model.

    ``sample(prefix, n)`` returns ``n`` continuations of ``prefix`` (the query plus a part
    of the response), each a list of tokens up to and without the end of the response.
    ``top_tokens(prefix, k)`` (needed only for DPO pairs) returns the ``k`` most likely next
    tokens, most likely first.
    """

    def sample(self, prefix: Sequence[Token], n: int) -> list[list[Token]]: ...


@dataclass(frozen=True)
class PTSConfig:
    """Search settings.

    Attributes:
        n_samples: Completions per estimate ("M", the report's sampling budget per prefix).
        p_gap: Minimum jump in p(success) for a pivotal token ("p_gap" in Algorithm 1;
            the report's threshold, 0.2 by default here).
        p_min, p_max: Only queries whose baseline p(success | Q) lies in this range are
            searched ("we only search queries with 0.2 <= p(success) <= 0.8").
        top_k: Alternative next tokens tried for the other side of a DPO pair.
        alt_gap: How far an alternative must move p the other way from p(prefix) (None:
            ``p_gap``).
    """

    n_samples: int = 20
    p_gap: float = 0.2
    p_min: float = 0.2
    p_max: float = 0.8
    top_k: int = 4
    alt_gap: float | None = None

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if not 0 < self.p_gap <= 1:
            raise ValueError(f"p_gap must lie in (0, 1], got {self.p_gap}")
        if not 0 <= self.p_min <= self.p_max <= 1:
            raise ValueError(f"need 0 <= p_min <= p_max <= 1, got {self.p_min}, {self.p_max}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.alt_gap is not None and not 0 < self.alt_gap <= 1:
            raise ValueError(f"alt_gap must lie in (0, 1], got {self.alt_gap}")


@dataclass
class SuccessEstimator:
    """``p(success | query, prefix)`` from ``n_samples`` sampled completions, cached.

    Attributes:
        policy: Anything with ``sample(prefix, n)``.
        oracle: ``oracle(response) -> bool`` on a whole response (prefix + completion,
            without the query).
        query: The query tokens Q (the prompt).
        n_samples: Completions per estimate.
        cache: Estimate of each response prefix already sampled (tuple of tokens -> p).
        n_estimates: Prefixes sampled so far (cache misses).
        oracle_calls: Oracle calls so far.
    """

    policy: Policy
    oracle: Oracle
    query: Sequence[Token]
    n_samples: int = 20
    cache: dict[tuple[Token, ...], float] = field(default_factory=dict)
    n_estimates: int = 0
    oracle_calls: int = 0

    def __call__(self, prefix: Sequence[Token]) -> float:
        """p(success) after ``prefix`` (a part of the response)."""
        key = tuple(prefix)
        if key not in self.cache:
            self.record(key, self.policy.sample([*self.query, *key], self.n_samples))
        return self.cache[key]

    def record(self, prefix: Sequence[Token], completions: Sequence[Sequence[Token]]) -> float:
        """Judge ``n_samples`` completions of ``prefix`` sampled elsewhere (e.g. many
        queries in one batch) and cache the estimate; returns it."""
        key = tuple(prefix)
        if key in self.cache:
            raise ValueError(f"prefix of {len(key)} tokens is estimated already")
        if len(completions) != self.n_samples:
            raise ValueError(
                f"got {len(completions)} completions for an estimate of {self.n_samples}"
            )
        wins = sum(bool(self.oracle([*key, *c])) for c in completions)
        self.cache[key] = wins / self.n_samples
        self.n_estimates += 1
        self.oracle_calls += self.n_samples
        return self.cache[key]


@dataclass(frozen=True)
class Pivot:
    """A single-token segment that moves p(success) by at least ``p_gap``.

    Attributes:
        position: Index of the token in the response.
        token: The token.
        prefix: The response before it.
        p_before: p(success | Q, prefix).
        p_after: p(success | Q, prefix + token).
    """

    position: int
    token: Token
    prefix: tuple[Token, ...]
    p_before: float
    p_after: float

    @property
    def delta(self) -> float:
        return self.p_after - self.p_before


def subdivide(
    estimate: Callable[[Sequence[Token]], float],
    prefix: Sequence[Token],
    segment: Sequence[Token],
    p_gap: float,
) -> list[tuple[int, int]]:
    """Algorithm 1's ``Subdivide``: split ``segment`` (which follows ``prefix``) in halves
    while it moves p by at least ``p_gap``.

    Args:
        estimate: ``estimate(response_prefix) -> p`` (cached, e.g. a `SuccessEstimator`).
        prefix: Response tokens before the segment.
        segment: The tokens to search.
        p_gap: Threshold.

    Returns:
        The leaves as ``(start, end)`` offsets into ``prefix + segment``, in order: single
        tokens that move p by >= p_gap, and longer segments that do not.
    """
    base = len(prefix)
    out: list[tuple[int, int]] = []
    stack = [(base, base + len(segment))]
    full = [*prefix, *segment]
    while stack:  # depth first, left before right: the report's recursion without recursion
        lo, hi = stack.pop()
        if hi - lo <= 1 or abs(estimate(full[:hi]) - estimate(full[:lo])) < p_gap:
            out.append((lo, hi))
            continue
        mid = (lo + hi) // 2
        stack += [(mid, hi), (lo, mid)]
    return out


def pivotal_tokens(
    estimator: Callable[[Sequence[Token]], float], response: Sequence[Token], cfg: PTSConfig
) -> list[Pivot]:
    """The pivotal tokens of ``response`` to ``estimator.query``, or [] when the query's
    baseline p(success) lies outside ``[cfg.p_min, cfg.p_max]``.

    Args:
        estimator: ``estimator(response_prefix) -> p``: the cached p(success) of this
            query under a policy and an oracle (a `SuccessEstimator`, or a wrapper of one).
        response: A whole response (e.g. sampled from the policy), tokens.
        cfg: Search settings (``p_gap``, the baseline range).
    """
    p0 = estimator([])
    if not cfg.p_min <= p0 <= cfg.p_max:
        return []
    pivots = []
    for lo, hi in subdivide(estimator, [], response, cfg.p_gap):
        if hi - lo != 1:
            continue
        before, after = estimator(response[:lo]), estimator(response[:hi])
        if abs(after - before) >= cfg.p_gap:
            pivots.append(Pivot(lo, response[lo], tuple(response[:lo]), before, after))
    return pivots


def estimate_bound(length: int, n_pivots: int) -> int:
    """Most p-estimates `pivotal_tokens` makes on a response of ``length`` tokens with
    ``n_pivots`` single tokens that move p (and no segment whose jumps cancel): the empty
    prefix and the whole response, then at every level of the binary tree
    (``ceil(log2 length)`` levels) at most ``n_pivots`` segments are split, each adding one
    estimate (its midpoint)."""
    if length < 1:
        return 1
    depth = (length - 1).bit_length()  # ceil(log2(length))
    return 2 + n_pivots * depth
