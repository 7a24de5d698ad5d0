"""DPO pairs: single-token pairs at pivotal tokens (stage 1) and whole responses judged by a
verifier (stage 2), and their JSONL form in TRL's preference format.

A pair is ``(prompt, chosen, rejected)`` in token ids; `write_jsonl` writes
``{"prompt": str, "chosen": str, "rejected": str}`` per line, the "standard" preference
format TRL's `DPOTrainer` reads (`trl` tokenizes prompt and completions separately and
concatenates them), and `read_jsonl` reads it back, naming the line of a malformed record.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from minirepro.papers.pivotal.pts import Pivot, PTSConfig, SuccessEstimator

__all__ = [
    "PreferencePair",
    "pivot_pairs",
    "read_jsonl",
    "response_pairs",
    "write_jsonl",
]


@dataclass(frozen=True)
class PreferencePair:
    """One DPO example.

    Attributes:
        prompt: Query plus the response prefix (token ids).
        chosen: The preferred continuation (one token for a pivotal pair).
        rejected: The other continuation.
    """

    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.prompt or not self.chosen or not self.rejected:
            raise ValueError("a preference pair needs a non-empty prompt, chosen and rejected")
        if self.chosen == self.rejected:
            raise ValueError("chosen and rejected are the same continuation")


def pivot_pairs(
    estimator: SuccessEstimator,
    policy,
    pivots: Sequence[Pivot],
    cfg: PTSConfig,
) -> list[PreferencePair]:
    """One pair per pivot that has an alternative moving p the other way.

    A pivot that raises p is the chosen token, and the rejected one is the first of the
    policy's ``cfg.top_k`` most likely tokens after its prefix whose p lies at least
    ``alt_gap`` *below* p(prefix); a pivot that lowers p is rejected, against an
    alternative at least ``alt_gap`` above (the report: "the other side is an alternative
    token"). Alternatives are estimated through ``estimator`` (cached).

    Args:
        estimator: The query's cached p(success).
        policy: Has ``top_tokens(prefix, k)`` (the ``k`` likeliest next tokens).
        pivots: From `pivotal_tokens` on this query.
        cfg: ``top_k`` and ``alt_gap`` (default ``p_gap``).
    """
    gap = cfg.alt_gap if cfg.alt_gap is not None else cfg.p_gap
    query = tuple(estimator.query)
    out = []
    for pv in pivots:
        up = pv.delta > 0
        for alt in policy.top_tokens([*query, *pv.prefix], cfg.top_k):
            if alt == pv.token:
                continue
            p_alt = estimator([*pv.prefix, alt])
            if (pv.p_before - p_alt if up else p_alt - pv.p_before) >= gap:
                good, bad = (pv.token, alt) if up else (alt, pv.token)
                out.append(PreferencePair((*query, *pv.prefix), (good,), (bad,)))
                break
    return out


def response_pairs(
    policy,
    verifier: Callable[[Sequence[int]], bool],
    query: Sequence[int],
    n_samples: int,
    rng: random.Random,
    max_pairs: int = 1,
) -> list[PreferencePair]:
    """Stage 2: sample ``n_samples`` whole responses to ``query`` and pair responses the
    verifier accepts (chosen) with ones it rejects, at most ``max_pairs``, each response
    used once, drawn with ``rng``; [] when all agree."""
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    responses = [r for r in policy.sample(list(query), n_samples) if r]
    verdicts = [bool(verifier(r)) for r in responses]
    good = [r for r, v in zip(responses, verdicts) if v]
    bad = [r for r, v in zip(responses, verdicts) if not v]
    rng.shuffle(good)
    rng.shuffle(bad)
    return [
        PreferencePair(tuple(query), tuple(g), tuple(b))
        for g, b in list(zip(good, bad))[:max_pairs]
        if g != b
    ]


def write_jsonl(
    pairs: Sequence[PreferencePair], path: str | Path, decode: Callable[[Sequence[int]], str]
) -> Path:
    """Write pairs as TRL preference records, one JSON object per line.

    Args:
        pairs: The pairs.
        path: Output file.
        decode: Token ids -> text (special tokens kept, so that encoding the text gives the
            ids back).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in pairs:
            rec = {
                "prompt": decode(p.prompt),
                "chosen": decode(p.chosen),
                "rejected": decode(p.rejected),
            }
            f.write(json.dumps(rec) + "\n")
    return path


def read_jsonl(path: str | Path, encode: Callable[[str], list[int]]) -> list[PreferencePair]:
    """Read TRL preference records (``prompt`` / ``chosen`` / ``rejected`` strings).

    Raises:
        ValueError: naming the file and line of a record that is not JSON, lacks a field,
            has a field that is not a non-empty string, or encodes to an invalid pair.
    """
    path = Path(path)
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not a JSON record ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object with prompt/chosen/rejected")
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(rec.get(key), str) or not rec[key]:
                raise ValueError(f"{where}: field {key!r} must be a non-empty string")
        try:
            out.append(
                PreferencePair(
                    tuple(encode(rec["prompt"])),
                    tuple(encode(rec["chosen"])),
                    tuple(encode(rec["rejected"])),
                )
            )
        except (ValueError, KeyError) as e:
            raise ValueError(f"{where}: {e}") from None
    return out
