"""Long-context QA items: synthetic multi-hop haystacks and common-word extraction (CWE).

- `multihop_item`: two facts that must be chained ("Ada Brennock works at the Copperleaf
  Tea House." ... "The Copperleaf Tea House is located in Dunmoor.") are scattered, far
  apart and in either order, through everyday filler prose, together with distractor
  chains about other people, places and cities; the question needs both facts ("In which
  city does Ada Brennock work?"). All names are invented, so the model cannot know them.
- `cwe_item`: a numbered word list in which a few words occur many times and the rest a
  few times (RULER's common-word extraction); the question asks for the most common words.

Lengths are measured with a caller's `length` function (e.g. a tokenizer's), so a
haystack of 4-7k *model* tokens is exactly that. Everything is drawn from a seeded
`random.Random`; no downloads.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["QAItem", "approx_tokens", "cwe_item", "multihop_item"]


@dataclass
class QAItem:
    """A question about a long context.

    Attributes:
        id: unique name.
        kind: "multihop", "cwe" or "hotpotqa".
        context: the long document.
        question: the question.
        answers: acceptable answers (any one counts for accuracy; CWE: all of them wanted).
        evidence: sentences of the context needed to answer (empty where every part counts).
        meta: extra facts about the item (e.g. CWE's whole vocabulary).
    """

    id: str
    kind: str
    context: str
    question: str
    answers: tuple[str, ...]
    evidence: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)


def approx_tokens(text: str) -> int:
    """About 1.3 tokens per word: a tokenizer-free length estimate."""
    return int(len(text.split()) * 1.3) + 1


_FIRST = "Ada Bruno Celia Dario Elin Farid Greta Hugo Ines Jonas Kira Lorenz Mirela Nils Odile Piet Quinn Rosa Soren Tilde Ulla Viktor Wanda Yusuf Zora".split()  # fmt: skip
_LAST = "Brennock Castellow Dravik Elmquist Farrow Gundry Halloran Istvanek Jessup Korrigan Lindqvist Marwick Nettleby Ostrander Pellham Quartley Rendell Stavros Thistlewood Umbridge Varga Whitlock Yardley Zelenko".split()  # fmt: skip
_ORG_A = "Copperleaf Bluefin Silverpine Redwater Amberline Northgate Stonebridge Greywillow Brightmoor Oakhollow Ironvale Sunreach".split()  # fmt: skip
_ORG_B = [
    ("Tea House", "works at the"),
    ("Analytics", "works at"),
    ("Shipping Company", "works at the"),
    ("Dental Clinic", "works at the"),
    ("Bookbindery", "works at the"),
    ("Robotics Lab", "works at the"),
]
_CITIES = [
    "Dunmoor", "Port Halvey", "Kestrelford", "Valmere", "Ashcombe", "Brindlewick", "Corrowan",
    "Elsmouth", "Fennick", "Galloway Cross", "Harrowgate", "Lysterby", "Marrowdale", "Ostwick",
    "Pellinore", "Quenby",
]  # fmt: skip
_CLUBS = "Chess Rowing Birdwatching Astronomy Pottery Fencing Choir Cycling".split()

# Everyday filler: sentences about weather, towns, food, history, hobbies. Slots are drawn
# from small word lists so the text varies without looking like noise.
_FILLER = [
    "The morning began with a light {weather} that drifted over the {place}.",
    "Several neighbours gathered near the {place} to talk about the {topic}.",
    "A local historian once wrote that the {place} had been rebuilt three times.",
    "In the afternoon the {weather} cleared and the streets filled with people.",
    "Most families in the area grow {food} in small gardens behind their houses.",
    "The old {building} on the hill still opens its doors every {day}.",
    "Visitors often remark on how quiet the {place} becomes after sunset.",
    "A committee was formed to discuss repairs to the {building}.",
    "The price of {food} rose slightly during the long winter.",
    "Children walked to school along the path beside the {place}.",
    "Every {day} a small market sells {food}, bread and honey.",
    "The newspaper printed a long article about the {topic}.",
    "Many residents prefer to travel by bicycle when the {weather} allows it.",
    "The library keeps a collection of maps showing the {place} a century ago.",
    "An annual festival celebrates the harvest of {food} at the end of summer.",
    "Nobody could remember when the {building} had last been painted.",
    "The council debated the {topic} for most of the evening.",
    "A gentle {weather} rolled in from the coast before noon.",
    "Some of the older houses near the {building} have thatched roofs.",
    "Teachers organised a trip to the {place} for the younger pupils.",
    "The bakery on the corner is famous for its {food} pies.",
    "Fishermen repaired their nets while discussing the {topic}.",
    "The {building} was once used as a granary and later as a school.",
    "On clear nights the stars are easy to see from the {place}.",
]
_SLOTS = {
    "weather": ["rain", "fog", "drizzle", "breeze", "frost", "mist", "haze"],
    "place": [
        "harbour",
        "square",
        "meadow",
        "riverbank",
        "orchard",
        "village green",
        "market hall",
    ],
    "topic": ["new bridge", "water supply", "school budget", "bus timetable", "museum plans"],
    "food": ["apples", "cabbage", "barley", "plums", "potatoes", "pears", "onions"],
    "building": ["chapel", "mill", "lighthouse", "town hall", "bell tower", "watermill"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
}

_WORDS = (
    "apple river candle garden window mirror pocket ladder button forest island pepper "
    "violin saddle basket tunnel anchor feather blanket cactus dolphin engine falcon glacier "
    "hammer igloo jacket kettle lantern magnet needle orchard parrot quartz rabbit sandal "
    "teapot umbrella valley walnut yogurt zipper acorn bridge cobalt desert eagle fossil "
    "goblet harbor ivory jigsaw kayak lemon marble nectar otter pillow quiver raisin "
    "scarf thistle urchin velvet wizard yarn barrel canyon dagger ember fiddle granite "
    "helmet insect jewel kernel lizard meadow nutmeg oyster pebble rocket salmon tulip "
    "almond beacon cherry drum elbow fountain garlic harp iris jungle kiwi lobster mango "
    "noodle olive panda quilt ribbon spoon tiger unicorn vase wagon yacht zebra badge cable "
    "daisy easel fence giraffe hazel ink jelly koala lemur mitten nickel onion paddle "
    "puzzle radish sponge trumpet violet walrus bamboo cookie donkey envelope ferret "
    "gravel hornet icicle juniper kitten laurel muffin napkin ostrich peanut rosemary"
).split()


def _person(rng: random.Random, used: set[str]) -> str:
    while True:
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        if name not in used:
            used.add(name)
            return name


def _chain(rng: random.Random, used: set[str]) -> tuple[str, str, str, str]:
    """(fact 1, fact 2, question, answer) of one two-hop chain with fresh names."""
    person = _person(rng, used)
    city = rng.choice([c for c in _CITIES if c not in used])
    used.add(city)
    kind = rng.randrange(2)
    if kind == 0:
        while True:
            (suffix, verb), head = rng.choice(_ORG_B), rng.choice(_ORG_A)
            org = f"{head} {suffix}"
            if org not in used:
                break
        used.add(org)
        the = "The " if verb.endswith("the") else ""
        return (
            f"{person} {verb} {org}.",
            f"{the}{org} is located in {city}.",
            f"In which city does {person} work?",
            city,
        )
    while True:
        club = f"{rng.choice(_ORG_A)} {rng.choice(_CLUBS)} Club"
        if club not in used:
            break
    used.add(club)
    return (
        f"{person} is a member of the {club}.",
        f"The {club} meets every week in {city}.",
        f"In which city does the club of {person} meet?",
        city,
    )


def _filler(rng: random.Random) -> str:
    template = rng.choice(_FILLER)
    return template.format(**{k: rng.choice(v) for k, v in _SLOTS.items()})


def multihop_item(
    seed: int,
    index: int,
    n_tokens: int = 5000,
    n_distractors: int = 3,
    length: Callable[[str], int] = approx_tokens,
) -> QAItem:
    """A haystack of about `n_tokens` with one two-hop question and distractor chains.

    The two needed facts sit in different thirds of the text, in random order; each
    distractor chain's facts are placed at random.

    Args:
        seed, index: the item is a function of (seed, index).
        n_tokens: target length as measured by `length`.
        n_distractors: other two-hop chains (other people, places and cities).
        length: text -> length in tokens (a tokenizer's, or the default estimate).
    """
    if n_tokens < 100:
        raise ValueError(f"n_tokens must be >= 100, got {n_tokens}")
    rng = random.Random(f"multihop:{seed}:{index}")
    used: set[str] = set()
    fact1, fact2, question, answer = _chain(rng, used)
    distractors = [f for _ in range(n_distractors) for f in _chain(rng, used)[:2]]
    sentences: list[str] = []
    budget = n_tokens - sum(length(" " + f) for f in [fact1, fact2, *distractors])
    total = 0
    while total < budget:
        s = _filler(rng)
        sentences.append(s)
        total += length(" " + s)
    n = len(sentences)
    # the two facts in different thirds, in random order
    first, second = sorted([rng.randrange(0, n // 3 + 1), rng.randrange(2 * n // 3, n + 1)])
    a, b = (fact1, fact2) if rng.random() < 0.5 else (fact2, fact1)
    inserts = [(first, a), (second, b)] + [(rng.randrange(0, n + 1), d) for d in distractors]
    for pos, fact in sorted(inserts, key=lambda x: -x[0]):  # back to front keeps indices
        sentences.insert(pos, fact)
    # paragraphs of about six sentences read like prose
    paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
    return QAItem(
        id=f"multihop-{seed}-{index}",
        kind="multihop",
        context="\n\n".join(paragraphs),
        question=question,
        answers=(answer,),
        evidence=(fact1, fact2),
    )


def cwe_item(
    seed: int,
    index: int,
    n_tokens: int = 5000,
    n_common: int = 10,
    freq_common: int = 30,
    length: Callable[[str], int] = approx_tokens,
) -> QAItem:
    """A numbered word list about `n_tokens` long in which `n_common` words occur
    `freq_common` times each and every other word at most a third as often (RULER's CWE:
    30 vs 3 occurrences; with our smaller vocabulary, rare words repeat more to fill the
    length, but always clearly less than the common ones)."""
    if not 1 <= n_common < len(_WORDS) // 2:
        raise ValueError(f"n_common must be in [1, {len(_WORDS) // 2}), got {n_common}")
    if freq_common < 3:
        raise ValueError(f"freq_common must be >= 3, got {freq_common}")
    rng = random.Random(f"cwe:{seed}:{index}")
    words = rng.sample(_WORDS, len(_WORDS))
    common, rare = words[:n_common], words[n_common:]
    per_entry = length("\n100. " + common[0])
    n_entries = max(n_common * freq_common, n_tokens // max(1, per_entry))
    rest = n_entries - n_common * freq_common
    freq_rare = min(freq_common // 3, max(1, -(-rest // len(rare))))
    if freq_rare == 1:  # a short list: fewer rare words rather than one too many entries
        rare = rare[: max(1, rest)]
    entries = common * freq_common + rare * freq_rare
    rng.shuffle(entries)
    context = "\n".join(f"{i + 1}. {w}" for i, w in enumerate(entries))
    return QAItem(
        id=f"cwe-{seed}-{index}",
        kind="cwe",
        context=context,
        question=f"What are the {n_common} most common words in the above list?",
        answers=tuple(common),
        meta={
            "vocabulary": sorted(set(entries)),
            "freq_common": freq_common,
            "freq_rare": freq_rare,
        },
    )
