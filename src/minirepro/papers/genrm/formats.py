"""How problems, solutions, rationales and the Yes/No question become token ids.

`WordFormat` is the format of the tiny models trained here (one token per word, letter or
symbol of the task's space-separated text)::

    generator:      <bos> problem <sol> solution <eos>
    direct GenRM:   <bos> problem <sol> solution <ans> -> <yes> | <no>
    GenRM-CoT:      <bos> problem <sol> solution <cot> rationale <ans> -> <yes> | <no>

``<ans>`` stands for the paper's instruction I, "Is the answer correct (Yes/No)?", and
``<cot>`` for I_cot, "Let's verify step by step." `TextFormat` writes the same inputs as
text for a pretrained chat model (SmolLM2 as LLM-as-judge, or a user's HF causal LM):
the question, the solution and the literal instruction, scored at the "Yes" token.

Both expose ``direct_ids``, ``yes_id``, ``no_id`` and ``pad_id``, all that `GenRM` needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from minirepro.core.tokenizer import WordTokenizer
from minirepro.tasks.algorithmic import LETTERS, SYMBOLS, Problem, Task

__all__ = ["IGNORE", "INSTRUCTION", "Example", "TextFormat", "WordFormat"]

SOL, ANS, COT, YES, NO = "<sol>", "<ans>", "<cot>", "<yes>", "<no>"
INSTRUCTION = "Is the answer correct (Yes/No)?"
IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One training sequence: inputs ``ids[:-1]``, targets ``targets`` (IGNORE = no loss).

    Attributes:
        ids: (S,) token ids.
        targets: (S - 1,) next-token targets aligned with ``ids[:-1]``.
    """

    ids: tuple[int, ...]
    targets: tuple[int, ...]


def _example(prefix: Sequence[int], trained: Sequence[int]) -> Example:
    """Loss only on ``trained``, the tokens that follow ``prefix``."""
    ids = (*prefix, *trained)
    return Example(tuple(ids), (IGNORE,) * (len(prefix) - 1) + tuple(trained))


class WordFormat:
    """The format of the tiny generator and verifiers (module docstring).

    Args:
        words: The task's words (`Task.words`); each becomes one token.
    """

    def __init__(self, words: Sequence[str]) -> None:
        vocab = [*LETTERS, *SYMBOLS, *sorted(set(words) - set(LETTERS) - set(SYMBOLS))]
        self.tokenizer = WordTokenizer(vocab, specials=[SOL, ANS, COT, YES, NO])
        t = self.tokenizer.token_to_id
        self.sol_id, self.ans_id, self.cot_id = t(SOL), t(ANS), t(COT)
        self.yes_id, self.no_id = t(YES), t(NO)
        self.pad_id, self.eos_id = self.tokenizer.pad_id, self.tokenizer.eos_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if self.tokenizer.unk_id in ids:
            known = set(self.tokenizer.vocab)
            bad = sorted({w for w in text.split() if w not in known})
            raise ValueError(f"text {text!r} has symbols outside the vocabulary: {bad[:5]}")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def prompt_ids(self, problem: Problem) -> list[int]:
        """The generator's prompt: ``<bos> problem <sol>``."""
        return [self.tokenizer.bos_id, *self.encode(problem.text), self.sol_id]

    def direct_ids(self, problem: Problem, solution: str) -> list[int]:
        """Direct verification input, ending with I (``<ans>``)."""
        return [*self.prompt_ids(problem), *self.encode(solution), self.ans_id]

    def cot_prompt_ids(self, problem: Problem, solution: str) -> list[int]:
        """CoT verification prompt, ending with I_cot (``<cot>``)."""
        return [*self.prompt_ids(problem), *self.encode(solution), self.cot_id]

    def cot_ids(self, problem: Problem, solution: str, rationale: str) -> list[int]:
        """CoT verification input after a rationale, ending with I (``<ans>``)."""
        return [*self.cot_prompt_ids(problem, solution), *self.encode(rationale), self.ans_id]

    # ----- training examples ------------------------------------------------------------
    def solution_example(self, problem: Problem, solution: str) -> Example:
        """SFT on a solution: loss on the solution and ``<eos>``."""
        return _example(self.prompt_ids(problem), [*self.encode(solution), self.eos_id])

    def direct_example(self, problem: Problem, solution: str, label: bool) -> Example:
        """Direct GenRM: loss on the Yes/No token only."""
        return _example(self.direct_ids(problem, solution), [self.yes_id if label else self.no_id])

    def cot_example(self, problem: Problem, solution: str, rationale: str, label: bool) -> Example:
        """GenRM-CoT: loss on the rationale, I and the Yes/No token."""
        trained = [*self.encode(rationale), self.ans_id, self.yes_id if label else self.no_id]
        return _example(self.cot_prompt_ids(problem, solution), trained)


class TextFormat:
    """Verification inputs as text for a pretrained (chat) LM with an HF tokenizer.

    Args:
        tokenizer: An HF tokenizer.
        task: Writes the problem as a question (`Task.question`).
        chat: Wrap the prompt in the tokenizer's chat template as one user turn.
        yes, no: The answer words; their first token ids are read.
    """

    def __init__(
        self, tokenizer: Any, task: Task, chat: bool = True, yes: str = "Yes", no: str = "No"
    ) -> None:
        self.tokenizer, self.task, self.chat = tokenizer, task, chat
        self.yes_id = tokenizer.encode(yes, add_special_tokens=False)[0]
        self.no_id = tokenizer.encode(no, add_special_tokens=False)[0]
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    def text(self, problem: Problem, solution: str) -> str:
        return (
            f"Problem: {self.task.question(problem)}\n"
            f"Solution (steps separated by '|', the answer after '='): {solution}\n"
            f"{INSTRUCTION} Answer with one word."
        )

    def direct_ids(self, problem: Problem, solution: str) -> list[int]:
        text = self.text(problem, solution)
        if not self.chat:
            return list(self.tokenizer.encode(text + "\n", add_special_tokens=False))
        out = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        return list(out["input_ids"] if hasattr(out, "keys") else out)
