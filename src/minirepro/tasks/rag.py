"""A synthetic retrieval-augmented QA set: passages about invented towns, questions, answers.

Each passage states four facts about one invented town (its mayor, main export, river and
founding year) in a shuffled order; a question asks for one of them. Because every name is
invented, a model can only answer from the passage, and an answer is faithful exactly when
it names the passage's entity. Responses come in two kinds here:

- faithful: the answer sentence with the passage's entity;
- swapped: the same sentence with an entity of the same kind that the passage does not
  contain (a hallucination in RAGTruth's sense: "evident baseless info").

A model's own answers are labelled with `is_faithful` (see `minirepro.papers.lrp4rag`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

__all__ = [
    "FACTS",
    "RAGExample",
    "RAGSample",
    "is_faithful",
    "make_rag_examples",
    "mentions",
    "rag_samples",
    "swap_entity",
]

_TOWNS = [
    "Veloria", "Marsk", "Dunholt", "Ambrel", "Corvath", "Pellin", "Tressa", "Quenby",
    "Ostrava Minor", "Halvik", "Brennor", "Selwick", "Idrana", "Falmouth Cross", "Yarrow",
    "Keldon", "Ruscombe", "Tavish", "Olmar", "Widdon", "Zennor", "Castrel", "Mirefield",
    "Hobbard", "Lunmore", "Eskarth", "Pradova", "Sorrel Bay", "Graffen", "Nettlecombe",
]  # fmt: skip
_FIRST = [
    "Tomas", "Hilda", "Anselm", "Maren", "Oskar", "Liesel", "Bertram", "Ingrid", "Caspar",
    "Odile", "Ferdinand", "Rosalind", "Edmund", "Signe", "Lorcan", "Petra", "Emeric", "Greta",
]  # fmt: skip
_LAST = [
    "Drell", "Brannock", "Voss", "Quill", "Harrow", "Lindqvist", "Mortimer", "Falk", "Ashby",
    "Kestrel", "Oyelaran", "Penhallow", "Strand", "Tamsin", "Wexley", "Yarde", "Corbin",
]  # fmt: skip
_GOODS = [
    "copper", "wool", "salt", "timber", "honey", "linen", "tin", "barley", "amber", "glass",
    "cheese", "paper", "silk", "pottery", "rope", "cider", "slate", "indigo", "tobacco",
]  # fmt: skip
_RIVERS = [
    "Ambry", "Tessel", "Orne", "Kell", "Wyvern", "Lune", "Carrow", "Dessa", "Fenn", "Grise",
    "Hollow", "Isen", "Jorvan", "Merrit", "Nareth", "Pell", "Quarry", "Rill",
]  # fmt: skip

# kind -> (fact sentence, question, answer sentence); {t} the town, {x} the entity.
FACTS: dict[str, tuple[str, str, str]] = {
    "mayor": ("The mayor of {t} is {x}.", "Who is the mayor of {t}?", "The mayor of {t} is {x}."),
    "export": (
        "The main export of {t} is {x}.",
        "What is the main export of {t}?",
        "The main export of {t} is {x}.",
    ),
    "river": ("{t} lies on the river {x}.", "Which river does {t} lie on?", "{t} lies on the river {x}."),
    "founded": ("{t} was founded in {x}.", "When was {t} founded?", "{t} was founded in {x}."),
}  # fmt: skip


def _entity(kind: str, rng: random.Random) -> str:
    if kind == "mayor":
        return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    if kind == "export":
        return rng.choice(_GOODS)
    if kind == "river":
        return rng.choice(_RIVERS)
    return str(rng.randrange(1200, 1900))


@dataclass
class RAGExample:
    """One passage and one question about it.

    Attributes:
        passage: the retrieved context.
        question: the question.
        kind: which fact is asked ("mayor", "export", "river", "founded").
        town: the town the passage describes.
        answer: the passage's entity for the question (the gold answer).
        facts: every fact's entity in the passage, by kind.
    """

    passage: str
    question: str
    kind: str
    town: str
    answer: str
    facts: dict[str, str] = field(default_factory=dict)

    def response(self, entity: str) -> str:
        """The answer sentence naming `entity`."""
        return FACTS[self.kind][2].format(t=self.town, x=entity)

    def user_prompt(self) -> str:
        """The user turn the generator sees: passage, then question."""
        return f"Passage: {self.passage}\nQuestion: {self.question}"


@dataclass
class RAGSample:
    """A prompt, a response to it and whether the response is hallucinated.

    Attributes:
        prompt: the user turn (context and question) as text.
        response: the generator's answer as text.
        hallucinated: True if the response is not supported by the context.
        kind: where the response came from ("faithful", "swapped", "model", "ragtruth").
        source_id: groups responses to the same prompt (cross-validation keeps them apart
            from nothing; it is for bookkeeping and figures).
        system: an optional system turn.
        meta: anything else (the hallucinated span, the gold answer, the generator's name).
    """

    prompt: str
    response: str
    hallucinated: bool
    kind: str
    source_id: str = ""
    system: str | None = None
    meta: dict = field(default_factory=dict)


def make_rag_examples(n: int, seed: int = 0) -> list[RAGExample]:
    """`n` passages with one question each, every town distinct within a block of 30.

    Args:
        n: number of examples (>= 1).
        seed: seed of the names, facts and orders.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    out = []
    towns: list[str] = []
    for i in range(n):
        if not towns:
            towns = rng.sample(_TOWNS, len(_TOWNS))
        town = towns.pop()
        facts = {kind: _entity(kind, rng) for kind in FACTS}
        order = rng.sample(list(FACTS), len(FACTS))
        passage = " ".join(FACTS[k][0].format(t=town, x=facts[k]) for k in order)
        kind = list(FACTS)[i % len(FACTS)]  # every kind equally often
        question = FACTS[kind][1].format(t=town)
        out.append(RAGExample(passage, question, kind, town, facts[kind], facts))
    return out


def swap_entity(example: RAGExample, rng: random.Random) -> str:
    """An entity of the question's kind that the passage does not contain."""
    for _ in range(1000):
        x = _entity(example.kind, rng)
        if x.lower() not in example.passage.lower() and not any(
            part.lower() in example.passage.lower() for part in x.split()
        ):
            return x
    raise RuntimeError(f"found no entity of kind {example.kind!r} absent from the passage")


def mentions(kind: str, text: str) -> set[str]:
    """The entities of `kind` (names, goods, rivers, years) that `text` mentions."""
    if kind == "founded":
        return set(re.findall(r"\b1\d{3}\b", text))
    pool = {"mayor": _FIRST + _LAST, "export": _GOODS, "river": _RIVERS}[kind]
    return {w for w in pool if re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE)}


def is_faithful(example: RAGExample, response: str) -> bool:
    """True if `response` names the passage's answer and no other entity of that kind.

    Used to label a model's own answers against the passage.
    """
    if example.answer.lower() not in response.lower():
        return False
    return mentions(example.kind, response) <= set(example.answer.split())


def rag_samples(
    examples: list[RAGExample], seed: int = 0, system: str | None = None
) -> list[RAGSample]:
    """A faithful and a swapped (hallucinated) response for every example.

    The swapped sample's `meta["span"]` is the invented entity; the faithful one's is the
    passage's entity, so token-level statistics can find the answer tokens.
    """
    rng = random.Random(seed + 1)
    out = []
    for i, ex in enumerate(examples):
        wrong = swap_entity(ex, rng)
        for entity, bad in [(ex.answer, False), (wrong, True)]:
            out.append(
                RAGSample(
                    ex.user_prompt(),
                    ex.response(entity),
                    bad,
                    "swapped" if bad else "faithful",
                    source_id=str(i),
                    system=system,
                    meta={"span": entity, "answer": ex.answer},
                )
            )
    return out
