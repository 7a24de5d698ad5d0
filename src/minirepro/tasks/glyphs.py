"""Small glyphs in large wide or tall canvases: visual questions for dynamic tiling.

Real handwritten digits (scikit-learn's 1,797 8x8 digits, shipped in the wheel) are placed
in a row (wide canvas) or a column (tall canvas) at their native 8 px size, in canvases of
``tile x k·tile`` pixels. Squeezed into one tile, a 4:1 canvas leaves each glyph 2 px wide;
tiled, it keeps every pixel. Questions:

- ``first`` (short answer): the first digit in reading order (left to right, top to bottom);
- ``read`` (long answer): every digit in reading order;
- ``max`` (chain of thought): the digits, then ``so`` and the largest one.

Some records can be corrupted for the filtering experiment: ``repetitive`` ones loop their
first two digits to a long answer (the degenerate samples InternVL 2.5's filters target),
``noisy`` ones carry a wrong answer (what a quality judge would reject).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["KINDS", "GlyphConfig", "answer_quality", "digit_pool", "generate_glyphs"]

KINDS = ("first", "read", "max")
QUESTIONS = {"first": "first digit ?", "read": "read the digits", "max": "largest digit ?"}


@dataclass
class GlyphConfig:
    """What the canvases and questions look like.

    Attributes:
        tile: the short side of a canvas in pixels (one tile of the model).
        ratios: long side / short side of the canvases; each wide or tall at random.
        n_digits: (min, max) digits per canvas.
        kinds: question kinds drawn uniformly.
        repetitive_frac: share of ``read`` / ``max`` records given a looping answer.
        noisy_frac: share of records given a wrong answer.
        loop_words: length of a looping answer in words.
        noise: std of the background noise in grey levels (0-255).
        aligned: put glyphs on the 8 px grid (one glyph per patch of an unresized tile).
    """

    tile: int = 64
    ratios: tuple[int, ...] = (2, 3, 4)
    n_digits: tuple[int, int] = (2, 3)
    kinds: tuple[str, ...] = KINDS
    repetitive_frac: float = 0.0
    noisy_frac: float = 0.0
    loop_words: int = 24
    noise: float = 8.0
    aligned: bool = True

    def __post_init__(self) -> None:
        for k in self.kinds:
            if k not in KINDS:
                raise ValueError(f"unknown question kind {k!r}; choose from {KINDS}")
        lo, hi = self.n_digits
        if not 1 <= lo <= hi:
            raise ValueError(
                f"n_digits must be (min, max) with 1 <= min <= max, got {self.n_digits}"
            )
        if self.tile < 10 or any(r < 1 for r in self.ratios) or not self.ratios:
            raise ValueError("tile must be >= 10 px and ratios >= 1")
        if hi * 10 > self.tile * min(self.ratios):
            raise ValueError(
                f"{hi} glyphs of 8 px do not fit a canvas {self.tile * min(self.ratios)} px long"
            )
        for name in ("repetitive_frac", "noisy_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8) grey 0-255
    return images, data.target.astype(np.int64)


def digit_pool(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Glyphs and labels of a fixed split: ``train`` (every 5th digit left out) or ``test``
    (those), so test canvases show handwriting the model never saw."""
    images, labels = _digits()
    held = np.arange(len(labels)) % 5 == 0
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    keep = held if split == "test" else ~held
    return images[keep], labels[keep]


def _canvas(rng: np.random.Generator, cfg: GlyphConfig, glyphs: np.ndarray) -> np.ndarray:
    """Glyphs (n, 8, 8) placed in reading order on a wide or tall canvas (H, W) uint8."""
    n, ratio = len(glyphs), int(rng.choice(cfg.ratios))
    length, side = cfg.tile * ratio, cfg.tile
    canvas = rng.normal(0, cfg.noise, (side, length)).clip(0, 255)
    slot = length // n
    spots = []
    for _ in glyphs:
        along = len(spots) * slot + int(rng.integers(0, slot - 8 + 1))
        across = int(rng.integers(0, side - 8 + 1))
        if cfg.aligned:  # on the 8 px patch grid of the tiles
            along, across = along // 8 * 8, across // 8 * 8
        spots.append((across, along))
    tall = rng.random() >= 0.5
    for (across, along), g in zip(spots, glyphs):
        g = g.T if tall else g  # the canvas is transposed below: glyphs stay upright
        canvas[across : across + 8, along : along + 8] = np.maximum(
            canvas[across : across + 8, along : along + 8], g
        )
    canvas = canvas.astype(np.uint8)
    return canvas.T.copy() if tall else canvas


def _answer(kind: str, digits: list[int]) -> str:
    words = " ".join(map(str, digits))
    return {"first": str(digits[0]), "read": words, "max": f"{words} so {max(digits)}"}[kind]


def generate_glyphs(
    n: int, seed: int, cfg: GlyphConfig | None = None, split: str = "train"
) -> list[dict]:
    """`n` records: ``image`` (H, W) uint8, ``question``, ``answer``, ``kind``, ``digits``,
    ``repetitive`` and ``noisy`` flags.

    Args:
        n: number of records.
        seed: seeds the canvases, glyph choice and corruption.
        cfg: the canvases and questions.
        split: which glyphs to draw from (`digit_pool`).
    """
    cfg = cfg or GlyphConfig()
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    pool, labels = digit_pool(split)
    records = []
    for _ in range(n):
        k = int(rng.integers(cfg.n_digits[0], cfg.n_digits[1] + 1))
        pick = rng.integers(0, len(pool), k)
        digits = [int(d) for d in labels[pick]]
        kind = str(rng.choice(cfg.kinds))
        rec = {
            "image": _canvas(rng, cfg, pool[pick]), "question": QUESTIONS[kind],
            "answer": _answer(kind, digits), "kind": kind, "digits": digits,
            "repetitive": False, "noisy": False,
        }  # fmt: skip
        if kind != "first" and rng.random() < cfg.repetitive_frac:
            loop = [str(d) for d in digits[:2]] * cfg.loop_words
            rec["answer"], rec["repetitive"] = " ".join(loop[: cfg.loop_words]), True
        elif rng.random() < cfg.noisy_frac:
            wrong = _answer(kind, [int(d) for d in rng.integers(0, 10, len(digits))])
            if wrong != rec["answer"]:
                rec["answer"], rec["noisy"] = wrong, True
        records.append(rec)
    return records


def answer_quality(record: dict) -> float:
    """The quality stand-in for the glyph task: 10 when the answer is the one the record's
    digits imply, 0 otherwise (an LLM judge in the paper; here the task's own structure)."""
    return 10.0 if record["answer"] == _answer(record["kind"], record["digits"]) else 0.0
