"""Training documents for the retry experiments: error-free or retry solutions, batched so
that every variant trains on the same number of tokens.

A document is ``<bos> problem <sep> solution <eos>``. The loss covers the solution and
``<eos>`` (the problem's facts are random draws, so predicting them teaches nothing; the
paper pretrains on the whole text, see NOTES.md); with ``mask_errors`` the tokens of each
wrong step (``Define <param> as``) are left out too, while ``[BACK]`` stays in.

`bucket_batches` (what the reproduction uses) puts one whole document in each row and
batches rows of similar length; `pack_rows` fills long rows with several whole documents.
Either way rows are padded *on the left*, so a model trained
on them has seen left padding and can be evaluated on a left-padded batch of prompts. Each
row also gets its document ids (0 on the padding, 1, 2, ... on its documents): a model given
them (``document_ids``, `minirepro.core.documents`) attends only within each document, so
rows can be packed with several problems without one problem's names being looked up in
another, and the padding is invisible.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from minirepro.core.tokenizer import DEFAULT_SPECIALS, WordTokenizer
from minirepro.tasks.igsm import (
    BACK,
    WORLDS,
    Problem,
    RetryKind,
    encode_segments,
    retry_segments,
)
from minirepro.tasks.igsm.generate import SYMBOLS

__all__ = [
    "SEP",
    "NameTokenizer",
    "Variant",
    "bucket_batches",
    "build_tokenizer",
    "document",
    "pack_rows",
    "prompt_ids",
]

SEP = "<sep>"
IGNORE = -100


@dataclass(frozen=True)
class Variant:
    """One kind of training data.

    Attributes:
        name: Label in tables ("error-free", "retry 0.3", ...).
        retry_rate: Chance of a wrong step before each correct step (0: error-free).
        kind: How the wrong parameter is chosen ("retry", "retry_weak", "retry_miss").
        mask_errors: Leave the wrong steps' tokens out of the loss.
    """

    name: str
    retry_rate: float = 0.0
    kind: RetryKind = "retry"
    mask_errors: bool = False


# Every word the templates of `minirepro.tasks.igsm` write.
TEMPLATE_WORDS = (
    "The number of each 's equals more than times the sum difference and , . "
    "How many does have ? Define as ; so = + - * ( )"
)


class NameTokenizer(WordTokenizer):
    """A `WordTokenizer` that reads every multi-word name ("Night Market") as one token.

    Encoding joins the words of each known name with "_" before splitting; decoding turns
    "_" back into spaces, so ``decode(encode(text))`` is the word-split text as usual and
    the checker reads it unchanged. A solution copies "Stone City ' s Night Market" as 4
    tokens instead of 6.
    """

    def __init__(self, vocab: Sequence[str], specials: Sequence[str] = (), **kw) -> None:
        super().__init__(vocab, specials, **kw)
        multi = sorted({w.replace("_", " ") for w in vocab if "_" in w}, key=len, reverse=True)
        self._names = re.compile("|".join(r"\b" + re.escape(n) + r"\b" for n in multi) or "(?!)")

    def _split(self, text: str) -> list[str]:
        return super()._split(self._names.sub(lambda m: m[0].replace(" ", "_"), text))

    def _join(self, symbols: list[str]) -> str:
        return super()._join(symbols).replace("_", " ")


def build_tokenizer(
    problems: Iterable[Problem] = (), mod: int = 23, whole_names: bool = False
) -> WordTokenizer:
    """A word tokenizer (punctuation split off) with ``<sep>`` and ``[BACK]`` as specials,
    covering every template word, every world's names, every symbol and the numbers below
    ``mod`` (so any generated problem encodes), plus the words of ``problems``.

    With ``whole_names`` it is a `NameTokenizer` (one token per multi-word name).
    """
    names = [n for w in WORLDS for n in (*w.categories, *(i for pool in w.items for i in pool))]
    texts = [TEMPLATE_WORDS, " ".join(names), " ".join(SYMBOLS), " ".join(map(str, range(mod)))]
    texts += [t for p in problems for t in (p.text, p.solution)]
    specials = [SEP, BACK]
    if not whole_names:
        return WordTokenizer.from_texts(texts, specials=specials, split_punct=True, strict=True)
    words = WordTokenizer.from_texts(texts, split_punct=True).vocab
    vocab = [w for w in words if w not in DEFAULT_SPECIALS]
    vocab += sorted({n.replace(" ", "_") for n in names if " " in n})
    return NameTokenizer(vocab, specials, split_punct=True, strict=True)


def prompt_ids(tok: WordTokenizer, problem: Problem) -> list[int]:
    """``<bos> problem <sep>``: what the model is given at evaluation."""
    return [tok.bos_id, *tok.encode(problem.text), tok.token_to_id(SEP)]


def document(
    tok: WordTokenizer,
    problem: Problem,
    variant: Variant,
    rng: random.Random,
    statement_loss: bool = False,
) -> tuple[list[int], list[int]]:
    """Token ids of one training document and its labels (next-token targets aligned with
    the ids: ``labels[t]`` is the target for predicting ``ids[t]``; -100 = no loss).

    With ``statement_loss`` the statement's tokens (after ``<bos>``, up to ``<sep>``) are
    learned too, as in the paper's pretraining on whole documents."""
    prompt = prompt_ids(tok, problem)
    segments = retry_segments(problem, variant.retry_rate, rng, variant.kind)
    sol, err = encode_segments(tok, segments)
    ids = prompt + sol + [tok.eos_id]
    keep = [False] + [statement_loss] * (len(prompt) - 1)
    keep += [not (variant.mask_errors and e) for e in err] + [True]
    return ids, [i if k else IGNORE for i, k in zip(ids, keep)]


def pack_rows(
    docs: Iterable[tuple[list[int], list[int]]], n_rows: int, seq_len: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Fill ``n_rows`` rows of ``seq_len + 1`` tokens with whole documents, left-padded.

    Args:
        docs: ``(ids, labels)`` pairs, consumed in order (an iterator is drawn lazily).
        n_rows: Rows to fill.
        seq_len: Model sequence length S; a row holds S + 1 tokens (inputs and targets).
        pad_id: Padding id (its labels are ignored).

    Returns:
        ``(x, y, doc_ids, n_docs)``: inputs (n_rows, S), targets (n_rows, S) with -100
        where no loss is taken, the inputs' document ids (n_rows, S; 0 on the padding, 1, 2,
        ... on the row's documents) and how many documents were used.
    """
    it = iter(docs)
    x = torch.full((n_rows, seq_len + 1), pad_id, dtype=torch.long)
    y = torch.full((n_rows, seq_len + 1), IGNORE, dtype=torch.long)
    d = torch.zeros((n_rows, seq_len + 1), dtype=torch.long)
    pending: tuple[list[int], list[int]] | None = None
    n_docs = 0
    for r in range(n_rows):
        ids: list[int] = []
        labels: list[int] = []
        doc_ids: list[int] = []
        while True:
            if pending is None:
                pending = next(it)
                n_docs += 1
                if len(pending[0]) > seq_len + 1:
                    raise ValueError(
                        f"a document of {len(pending[0])} tokens does not fit seq_len={seq_len}"
                    )
            if len(ids) + len(pending[0]) > seq_len + 1:
                break
            ids += pending[0]
            labels += pending[1]
            doc_ids += [(doc_ids[-1] if doc_ids else 0) + 1] * len(pending[0])
            pending = None
        start = seq_len + 1 - len(ids)
        x[r, start:] = torch.tensor(ids)
        y[r, start:] = torch.tensor(labels)
        d[r, start:] = torch.tensor(doc_ids, dtype=torch.long)
    n_docs -= pending is not None
    return x[:, :-1], y[:, 1:], d[:, :-1], n_docs


def bucket_batches(
    docs: Iterable[tuple[list[int], list[int]]],
    n_steps: int,
    step_tokens: int,
    pad_id: int,
    max_len: int,
    window: int = 16,
    seed: int = 0,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], int, int]:
    """Batches of whole documents, one per row, grouped by length so little is padding.

    Packing several documents into a long row with a block-diagonal mask computes what each
    document computes alone, but attention still costs the row's length squared. Here each
    row is one document, left-padded to the longest of its batch: attention costs each
    document's own length squared (1.6x the training tokens per second of 384-token packed
    rows for the quick model on this CPU, NOTES.md), and the model computes the same thing.

    Documents are consumed in order, ``window`` steps' worth at a time; each window is sorted
    by length, cut into batches of at least ``step_tokens`` real (non-padding) tokens, and
    its batches are put back in a seeded random order. Every variant given the same
    ``n_steps`` and ``step_tokens`` thus trains on the same number of real tokens, up to one
    document per step.

    Args:
        docs: ``(ids, labels)`` pairs, consumed in order (an iterator is drawn lazily).
        n_steps: Batches to make.
        step_tokens: Real tokens per batch (a batch closes at the first document that
            reaches it).
        pad_id: Padding id (its labels are ignored).
        max_len: Longest document accepted (the model's context), in tokens.
        window: Batches per sorted window (1: no sorting across batches).
        seed: Seed of the order of the batches within each window.

    Returns:
        ``(batches, n_docs, n_tokens)``: for each step ``(x, y, doc_ids)``, inputs and
        next-token targets ``(B, L - 1)`` (B documents, L the batch's longest) with -100
        where no loss is taken, and document ids (0 on the padding, 1 on the document);
        how many documents and real tokens were used.
    """
    if n_steps < 1 or step_tokens < 1 or window < 1:
        raise ValueError(
            f"n_steps, step_tokens and window must be >= 1, got {n_steps}, {step_tokens}, {window}"
        )
    it = iter(docs)
    rng = random.Random(seed)
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    n_docs = n_tokens = 0
    while len(batches) < n_steps:
        chunk, size, want = [], 0, min(window, n_steps - len(batches)) * step_tokens
        while size < want:
            try:
                ids, labels = next(it)
            except StopIteration:
                raise ValueError(
                    f"the documents ran out after {len(batches)} of {n_steps} batches"
                ) from None
            if len(ids) > max_len:
                raise ValueError(f"a document of {len(ids)} tokens does not fit max_len={max_len}")
            if len(ids) < 2:
                raise ValueError("a document needs at least 2 tokens (an input and a target)")
            chunk.append((ids, labels))
            size += len(ids)
        chunk.sort(key=lambda d: len(d[0]))
        groups, group, size = [], [], 0
        for d in chunk:
            group.append(d)
            size += len(d[0])
            if size >= step_tokens:
                groups.append(group)
                group, size = [], 0
        if group:  # the window's remainder joins its last batch
            groups[-1:] = [groups[-1] + group] if groups else [group]
        rng.shuffle(groups)
        for group in groups[: n_steps - len(batches)]:
            n = max(len(ids) for ids, _ in group)
            x = torch.full((len(group), n), pad_id, dtype=torch.long)
            y = torch.full((len(group), n), IGNORE, dtype=torch.long)
            d = torch.zeros((len(group), n), dtype=torch.long)
            for r, (ids, labels) in enumerate(group):
                x[r, n - len(ids) :] = torch.tensor(ids)
                y[r, n - len(ids) :] = torch.tensor(labels)
                d[r, n - len(ids) :] = 1
            batches.append((x[:, :-1], y[:, 1:], d[:, :-1]))
            n_docs += len(group)
            n_tokens += sum(len(ids) for ids, _ in group)
    return batches, n_docs, n_tokens


def left_pad(prompts: Sequence[list[int]], pad_id: int) -> torch.Tensor:
    """Prompts (B lists) as one left-padded (B, S) tensor."""
    n = max(len(p) for p in prompts)
    return torch.tensor([[pad_id] * (n - len(p)) + list(p) for p in prompts])
