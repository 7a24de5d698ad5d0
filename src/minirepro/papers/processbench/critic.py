"""A general LLM prompted as a critic: the prompt, the answer parser and the vote.

The prompt follows the reference's protocol (``code/run_eval.py`` and
``templates/critique_template.txt``; our own wording): the problem, then the solution with
each step wrapped in ``<paragraph_i>`` ... ``</paragraph_i>`` (indexed from 0, a blank line
between), and the request to put the index of the earliest wrong paragraph, or -1, in
``\\boxed{}``. One user turn in the model's chat template.

`parse_answer` is tolerant of how small models write the box (spaces, ``$``, ``\\text{}``,
a missing backslash, a trailing period, "paragraph 3") and strict about what counts: the
last box must hold exactly one integer, and with ``n_steps`` given it must be -1 or a
step index; anything else is no answer (None), which never matches a label. The
reference takes the last ``\\boxed{...}`` and ``int()`` of its stripped content.

`majority_vote` is the reference's vote over n samples: the most common parsed answer,
ties to the one that came first; None when no sample has an answer. (The reference counts
answer *strings* before converting; counting parsed integers differs only where two
spellings of one integer, such as "2" and "2.", would split a vote.)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from minirepro.papers.processbench.records import Record

__all__ = [
    "CRITIC_TEMPLATE",
    "Critic",
    "CriticOutput",
    "critic_prompt",
    "majority_vote",
    "parse_answer",
    "tag_steps",
]

CRITIC_TEMPLATE = """Below are a math problem and a proposed solution. The solution is split into \
paragraphs, each enclosed in tags and numbered from 0.

[Math Problem]

{problem}

[Solution]

{tagged_response}

Check the solution paragraph by paragraph. If a paragraph contains an error, give the index \
of the earliest paragraph with an error. If every paragraph is correct, give -1.

Put your final answer (the index only) in \\boxed{{}}."""


def tag_steps(steps: Sequence[str]) -> str:
    """The steps as ``<paragraph_i>\\nstep\\n</paragraph_i>``, blank lines between."""
    return "\n\n".join(f"<paragraph_{i}>\n{s}\n</paragraph_{i}>" for i, s in enumerate(steps))


def critic_prompt(record: Record, template: str = CRITIC_TEMPLATE) -> str:
    """The critic's user message for one record.

    Args:
        record: The record (its label is not used).
        template: A format string with ``{problem}`` and ``{tagged_response}``; literal
            braces doubled (``\\boxed{{}}``).
    """
    try:
        return template.format(problem=record.problem, tagged_response=tag_steps(record.steps))
    except (KeyError, IndexError) as exc:
        raise ValueError(
            f"the critic template may only use {{problem}} and {{tagged_response}} "
            f"(double other braces), got a field {exc}"
        ) from None


_BOX = re.compile(r"\\?boxed\s*\{")
_WRAPPERS = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\s*\{(.*)\}$", re.S)
_INT = re.compile(r"(?:paragraph[_\s]*)?([-\u2212]?\s*\d+)", re.I)


def _boxes(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` (braces balanced; unclosed boxes dropped)."""
    out = []
    for m in _BOX.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def parse_answer(text: str, n_steps: int | None = None) -> int | None:
    """The index in the last ``\\boxed{}`` of a critique, or None.

    Args:
        text: The model's critique.
        n_steps: If given, an index outside [-1, n_steps) is no answer.

    Returns:
        The integer, or None when there is no box, the last box does not hold exactly one
        integer, or the integer is out of range.
    """
    boxes = _boxes(text)
    if not boxes:
        return None
    s = boxes[-1].strip().strip("$").strip()
    while (m := _WRAPPERS.match(s)) is not None:
        s = m.group(1).strip()
    s = s.rstrip(".").strip()
    m = _INT.fullmatch(s)
    if m is None:
        return None
    value = int(m.group(1).replace("\u2212", "-").replace(" ", ""))
    if n_steps is not None and not -1 <= value < n_steps:
        return None
    return value


def majority_vote(predictions: Sequence[int | None]) -> int | None:
    """The most common non-None prediction (ties: the earliest); None if there is none."""
    counts = Counter(p for p in predictions if p is not None)
    return counts.most_common(1)[0][0] if counts else None


@dataclass(frozen=True)
class CriticOutput:
    """A critic's verdict on one record.

    Attributes:
        prediction: The (voted) index, -1, or None for no answer.
        samples: The parsed answer of each sample.
        critiques: The generated texts.
    """

    prediction: int | None
    samples: tuple[int | None, ...]
    critiques: tuple[str, ...]


class Critic:
    """A chat model prompted as a critic, decoded in batches by the serve engine.

    Args:
        pretrained: A `minirepro.core.pretrained.Pretrained` (e.g. `load_smollm2()`).
        template: The prompt template (`CRITIC_TEMPLATE` by default).
        max_num_seqs: Sequences the engine decodes together.
    """

    def __init__(self, pretrained, template: str = CRITIC_TEMPLATE, max_num_seqs: int = 32):
        from minirepro.papers.serve import EngineConfig, LLMEngine

        self.pretrained = pretrained
        self.template = template
        cfg = pretrained.model.cfg
        config = EngineConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=2048,
            num_blocks=max(256, cfg.max_seq_len // 16 * 4),
        )
        self.engine = LLMEngine.from_pretrained(pretrained, config)

    def prompt_ids(self, record: Record, answer_prefix: str = "") -> list[int]:
        """Token ids of the critic prompt in the model's chat template, and the start of
        the assistant's reply when ``answer_prefix`` is given."""
        msg = [{"role": "user", "content": critic_prompt(record, self.template)}]
        ids = self.pretrained.encode_chat(msg)
        if answer_prefix:
            ids += self.pretrained.tokenizer.encode(answer_prefix, add_special_tokens=False)
        return ids

    def predict(
        self,
        records: Sequence[Record],
        n_samples: int = 1,
        *,
        temperature: float | None = None,
        top_p: float = 0.9,
        max_tokens: int = 256,
        seed: int = 42,
        answer_prefix: str = "",
    ) -> list[CriticOutput]:
        """Critique every record: greedy (``n_samples=1``) or a majority vote of samples.

        Args:
            records: (N,) records.
            n_samples: Samples per record; more than 1 votes (the paper: 8).
            temperature: Default 0 (greedy) for one sample and 1.0 for several (the
                reference's voting setting, with ``top_p=0.9``).
            top_p: Nucleus for sampling.
            max_tokens: Generation budget per sample (the reference: 8192).
            seed: Sample ``j`` of record ``i`` uses seed ``seed + 1000 * i + j``.
            answer_prefix: Text the reply is forced to begin with, e.g. ``"\\boxed{"`` to
                make a model that never answers commit to an index (not the paper's
                protocol; a diagnostic). It is part of each returned critique.
        """
        from minirepro.papers.serve import SamplingParams

        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        temp = temperature if temperature is not None else (0.0 if n_samples == 1 else 1.0)
        prompts, params = [], []
        for i, r in enumerate(records):
            ids = self.prompt_ids(r, answer_prefix)
            for j in range(n_samples):
                prompts.append(ids)
                params.append(
                    SamplingParams(
                        max_tokens=max_tokens,
                        temperature=temp,
                        top_p=top_p if temp > 0 else 1.0,
                        seed=seed + 1000 * i + j,
                    )
                )
        outs = self.engine.generate(prompts, params) if prompts else []
        decode = self.pretrained.tokenizer.decode
        results = []
        for i, r in enumerate(records):
            texts = tuple(
                answer_prefix + decode(o, skip_special_tokens=True)
                for o in outs[i * n_samples : (i + 1) * n_samples]
            )
            samples = tuple(parse_answer(t, len(r.steps)) for t in texts)
            results.append(CriticOutput(majority_vote(samples), samples, texts))
        return results

    def close(self) -> None:
        self.engine.close()
