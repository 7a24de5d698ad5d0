"""Verifiers that score (problem, solution) pairs, and the generator's sampler.

- `GenRM`: r = p(Yes | x, y, I) from any causal LM and a format (`WordFormat` for the tiny
  models, `TextFormat` for a pretrained chat LM or an HF causal LM);
- `GenRMCoT`: K sampled verification rationales v_i, r = mean_i p(Yes | x, y, I_cot, v_i, I)
  (sampling needs a core decoder: `minirepro.core.generate`);
- `DiscriminativeRM`: sigmoid of a linear head on the backbone's state at I;
- `llm_judge`: an untrained pretrained chat model (SmolLM2-135M-Instruct) as a `GenRM`.

Every ``score`` returns a (N,) float tensor aligned with its (problem, solution) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from minirepro.core.generate import SamplingParams, generate_many
from minirepro.papers.genrm.formats import TextFormat, WordFormat
from minirepro.papers.genrm.score import Normalize, Padding, last_logits, yes_scores
from minirepro.tasks.algorithmic import Problem, Task

__all__ = ["DiscriminativeRM", "GenRM", "GenRMCoT", "llm_judge", "sample_solutions"]

Pairs = Sequence[tuple[Problem, str]]


@dataclass
class GenRM:
    """Direct generative verifier: p(Yes) at the instruction.

    Attributes:
        model: A core `Transformer` or an HF causal LM.
        fmt: Builds the input ids (``direct_ids``) and knows ``yes_id``/``no_id``/``pad_id``.
        normalize: "softmax" (the paper) or "yes_no" (`p_yes`).
        padding: Side to pad batches on (scores do not depend on it).
        batch_size: Sequences per forward pass.
    """

    model: nn.Module
    fmt: WordFormat | TextFormat
    normalize: Normalize = "softmax"
    padding: Padding = "right"
    batch_size: int = 64

    def score(self, pairs: Pairs) -> Tensor:
        """p(Yes) for each (problem, solution text): (N,)."""
        seqs = [self.fmt.direct_ids(p, s) for p, s in pairs]
        return yes_scores(
            self.model, seqs, self.fmt.yes_id, self.fmt.no_id, pad_id=self.fmt.pad_id,
            padding=self.padding, normalize=self.normalize, batch_size=self.batch_size,
        )  # fmt: skip


@dataclass
class GenRMCoT:
    """GenRM-CoT: sample K rationales after I_cot, average p(Yes) after each.

    Attributes:
        model: A core `Transformer` trained on `WordFormat.cot_example`s.
        fmt: The `WordFormat`.
        temperature: Rationale sampling temperature (the paper samples; 0 would make all K
            rationales equal).
        max_rationale: Token budget of a rationale (it ends at ``<ans>``).
        normalize: As in `GenRM`.
        batch_size: Sequences per scoring pass.
    """

    model: nn.Module
    fmt: WordFormat
    temperature: float = 1.0
    max_rationale: int = 96
    normalize: Normalize = "softmax"
    batch_size: int = 256

    def rationales(self, pairs: Pairs, k: int, seed: int = 0) -> list[list[str]]:
        """K sampled rationales per pair (text before ``<ans>``)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        prompts = [self.fmt.cot_prompt_ids(p, s) for p, s in pairs for _ in range(k)]
        params = SamplingParams(
            max_new_tokens=self.max_rationale, temperature=self.temperature,
            stop_tokens=(self.fmt.ans_id, self.fmt.eos_id), seed=seed,
        )  # fmt: skip
        outs = generate_many(self.model, prompts, params) if prompts else []
        texts = [self.fmt.decode(o) for o in outs]
        return [texts[i * k : (i + 1) * k] for i in range(len(pairs))]

    def scores_per_rationale(self, pairs: Pairs, k: int, seed: int = 0) -> Tensor:
        """p(Yes) after each of K sampled rationales: (N, K)."""
        rats = self.rationales(pairs, k, seed)
        seqs = [self.fmt.cot_ids(p, s, r) for (p, s), rs in zip(pairs, rats) for r in rs]
        probs = yes_scores(
            self.model, seqs, self.fmt.yes_id, self.fmt.no_id, pad_id=self.fmt.pad_id,
            normalize=self.normalize, batch_size=self.batch_size,
        )  # fmt: skip
        return probs.view(len(pairs), k)

    def score(self, pairs: Pairs, k: int = 8, seed: int = 0) -> Tensor:
        """The mean over K rationales: (N,)."""
        return self.scores_per_rationale(pairs, k, seed).mean(1)


@dataclass
class DiscriminativeRM:
    """A classification head on the backbone: sigmoid(head(h at I)).

    Attributes:
        model: A `minirepro.papers.processbench.StepScorer` (`train_discriminative`).
        fmt: The `WordFormat` (inputs are the direct GenRM inputs, ending with I).
        batch_size: Sequences per forward pass.
    """

    model: nn.Module
    fmt: WordFormat
    batch_size: int = 256

    def score(self, pairs: Pairs) -> Tensor:
        seqs = [self.fmt.direct_ids(p, s) for p, s in pairs]
        # the head's (B, S) logits read like (B, S, 1) next-token logits at the last token
        logits = last_logits(
            _Unsqueeze(self.model), seqs, pad_id=self.fmt.pad_id, batch_size=self.batch_size
        )
        return torch.sigmoid(logits[:, 0])


class _Unsqueeze(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: Tensor, **kw) -> Tensor:
        return self.model(idx).unsqueeze(-1)  # (B, S, 1)


def llm_judge(
    pretrained, task: Task, normalize: Normalize = "softmax", batch_size: int = 8
) -> GenRM:
    """A prompted, untrained chat model as judge: `GenRM` with a `TextFormat`.

    Args:
        pretrained: A `minirepro.core.pretrained.Pretrained` (e.g. `load_smollm2()`), or
            anything with ``.model`` (core or HF causal LM) and ``.tokenizer`` (HF).
        task: Words the problems as questions.
    """
    return GenRM(
        pretrained.model, TextFormat(pretrained.tokenizer, task), normalize=normalize,
        batch_size=batch_size,
    )  # fmt: skip


def sample_solutions(
    model: nn.Module,
    fmt: WordFormat,
    problems: Sequence[Problem],
    n: int,
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    seed: int = 0,
) -> list[list[str]]:
    """``n`` sampled solution texts per problem from the generator: (P, n)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    prompts = [fmt.prompt_ids(p) for p in problems for _ in range(n)]
    params = SamplingParams(
        max_new_tokens=max_new_tokens, temperature=temperature, stop_tokens=(fmt.eos_id,),
        seed=seed,
    )  # fmt: skip
    texts = [fmt.decode(o) for o in generate_many(model, prompts, params)] if prompts else []
    return [texts[i * n : (i + 1) * n] for i in range(len(problems))]
