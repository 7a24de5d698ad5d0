"""Compute-matched sampling: cost ≈ 2 · params · tokens, counted from what was generated.

The paper (§2) matches a weaker-cheaper model (WC, P_WC parameters) with a stronger-expensive
one (SE) by sampling ``S_WC = (P_SE / P_WC) · S_SE`` solutions per problem, assuming both
write solutions of the same length. Here the budget is the FLOPs the SE samples actually
cost (2 · P_SE · tokens they generated), and `sample_at_budget` draws WC samples in rounds
until its own measured FLOPs reach that budget, so a WC model that writes longer (or
shorter) solutions gets fewer (or more) samples. Prompt processing is not counted (the
paper's accounting; both models read the same prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from minirepro.papers.sampling.samplers import Sampler

__all__ = ["Sampled", "generation_flops", "matched_samples", "sample_at_budget"]


def generation_flops(n_params: int, n_tokens: int) -> float:
    """Cost of generating ``n_tokens`` with a model of ``n_params``: 2 · params · tokens."""
    if n_params < 0 or n_tokens < 0:
        raise ValueError(f"n_params and n_tokens must be >= 0, got {n_params}, {n_tokens}")
    return 2.0 * n_params * n_tokens


def matched_samples(p_se: int, p_wc: int, s_se: float) -> float:
    """The paper's compute-matched sample count: S_WC = (P_SE / P_WC) · S_SE (equal tokens
    per sample assumed; `sample_at_budget` measures instead)."""
    if p_se < 1 or p_wc < 1 or s_se < 0:
        raise ValueError(f"need p_se, p_wc >= 1 and s_se >= 0, got {p_se}, {p_wc}, {s_se}")
    return p_se / p_wc * s_se


@dataclass(frozen=True)
class Sampled:
    """Samples drawn under a budget.

    Attributes:
        texts: P lists of k completions (k equal for every problem).
        k: Samples per problem.
        tokens: Tokens generated for them.
        flops: Their cost, 2 · params · tokens.
    """

    texts: list[list[str]]
    k: int
    tokens: int
    flops: float


def sample_at_budget(
    sampler: Sampler,
    prompts: Sequence[str],
    temperature: float,
    *,
    k: int | None = None,
    flops: float | None = None,
    first: int = 1,
    max_k: int = 1024,
) -> Sampled:
    """Draw ``k`` samples per prompt, or as many per prompt as a FLOP budget buys.

    With ``flops``, samples are drawn in rounds (every prompt gets the same number) from the
    measured cost per sample so far, and stop at the round count whose total cost is nearest
    the budget; the result's ``flops`` is the measured cost, within half a round of the
    budget (one round = one sample per prompt).

    Args:
        sampler: A `Sampler` (``sample``, ``n_params``, ``generated_tokens``).
        prompts: P prompts.
        temperature: Sampling temperature.
        k: Samples per prompt (exclusive with ``flops``).
        flops: Budget in FLOPs (exclusive with ``k``).
        first: Samples per prompt of the first round under a budget (a guess such as 0.8 ×
            `matched_samples` saves calls; the rounds after it are sized from measurements).
        max_k: Upper bound on samples per prompt under a budget.

    Returns:
        The samples, k, and their measured token count and FLOPs.
    """
    if (k is None) == (flops is None):
        raise ValueError("pass exactly one of k and flops")
    if not prompts:
        raise ValueError("no prompts")
    start = sampler.generated_tokens
    texts: list[list[str]] = [[] for _ in prompts]

    def draw(n: int) -> None:
        for mine, new in zip(texts, sampler.sample(prompts, n, temperature), strict=True):
            mine.extend(new)

    def spent() -> float:
        return generation_flops(sampler.n_params, sampler.generated_tokens - start)

    if k is not None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        draw(k)
    else:
        if not flops > 0 or first < 1:
            raise ValueError(f"need flops > 0 and first >= 1, got {flops}, {first}")
        done = 0
        while done < max_k:
            per_round = spent() / done if done else 0.0
            if done and (per_round <= 0 or flops - spent() < per_round / 2):
                break  # one more round would overshoot more than stopping undershoots
            # about half the remaining rounds at once: few calls, and the estimate sharpens
            want = first if not done else max(1, int((flops - spent()) / per_round / 2))
            n = min(want, max_k - done)
            draw(n)
            done += n
    tokens = sampler.generated_tokens - start
    return Sampled(texts, len(texts[0]), tokens, generation_flops(sampler.n_params, tokens))
