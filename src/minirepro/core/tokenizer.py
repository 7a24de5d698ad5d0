"""Character- and word-level tokenizers for synthetic tasks.

Both tokenizers share one layout: the special tokens come first (``<pad>`` = 0, ``<bos>`` = 1,
``<eos>`` = 2, ``<unk>`` = 3, then any extra specials such as ``<sep>``), followed by the
ordinary symbols. A special token written literally in the text (``"a <sep> b"``) encodes to
its single id.

Example:
    >>> tok = CharTokenizer.from_text("abc", specials=["<sep>"])
    >>> tok.encode("ab<sep>c", add_bos=True)
    [1, 5, 6, 4, 7]
    >>> tok.decode([1, 5, 6, 4, 7])
    'abc'
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
DEFAULT_SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, UNK)

# Words are runs of word characters; with split_punct every other non-space character is a
# token of its own ("don't!" -> "don", "'", "t", "!").
_PUNCT_SPLIT = re.compile(r"\w+|[^\w\s]")


class Tokenizer(ABC):
    """Shared machinery: vocabulary, special tokens, encode/decode, batching, saving.

    Subclasses define how a piece of text without specials splits into symbols
    (``_split``) and how symbols join back (``_join``).

    Args:
        vocab: The ordinary (non-special) symbols, in id order.
        specials: Extra special tokens, added after the four defaults
            (``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``), which are always present.
        strict: Raise ``ValueError`` on a symbol not in the vocabulary instead of mapping it
            to ``<unk>``.
    """

    kind: ClassVar[str]

    def __init__(self, vocab: Sequence[str], specials: Sequence[str] = (), *, strict: bool = False):
        specials = list(DEFAULT_SPECIALS) + [s for s in specials if s not in DEFAULT_SPECIALS]
        vocab = list(vocab)
        if not vocab:
            raise ValueError("vocab is empty: a tokenizer needs at least one ordinary symbol")
        for s in specials:
            if not isinstance(s, str) or not s or any(c.isspace() for c in s):
                raise ValueError(f"special token {s!r} must be a non-empty string without spaces")
        for t in vocab:
            self._check_symbol(t)
        tokens = specials + vocab
        dupes = sorted(t for t, n in Counter(tokens).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate tokens in vocab/specials: {dupes}")
        self.strict = strict
        self._specials = specials
        self._special_set = frozenset(specials)
        self._id_to_token = tokens
        self._token_to_id = {t: i for i, t in enumerate(tokens)}
        self._special_re = _special_pattern(specials)

    # ----- to be provided by subclasses -------------------------------------------------
    @abstractmethod
    def _check_symbol(self, symbol: str) -> None:
        """Raise ValueError if `symbol` cannot be an ordinary vocabulary entry."""

    @abstractmethod
    def _split(self, text: str) -> list[str]:
        """The symbols of a piece of text that holds no special tokens."""

    @abstractmethod
    def _join(self, symbols: list[str]) -> str:
        """The text of a run of ordinary symbols (inverse of `_split`)."""

    def _options(self) -> dict[str, Any]:
        return {"strict": self.strict}

    # ----- vocabulary ---------------------------------------------------------------------
    @property
    def vocab(self) -> list[str]:
        """All tokens in id order, specials first."""
        return list(self._id_to_token)

    @property
    def specials(self) -> list[str]:
        """The special tokens in id order (ids ``0 .. len(specials) - 1``)."""
        return list(self._specials)

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_id(self) -> int:
        return self._token_to_id[PAD]

    @property
    def bos_id(self) -> int:
        return self._token_to_id[BOS]

    @property
    def eos_id(self) -> int:
        return self._token_to_id[EOS]

    @property
    def unk_id(self) -> int:
        return self._token_to_id[UNK]

    def token_to_id(self, token: str) -> int:
        """The id of ``token``; ``KeyError`` if it is not in the vocabulary."""
        return self._token_to_id[token]

    def id_to_token(self, i: int) -> str:
        """The token with id ``i``; ``ValueError`` if out of range."""
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} out of range [0, {self.vocab_size})")
        return self._id_to_token[i]

    # ----- encoding -------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Encode one string.

        Args:
            text: The string; special tokens written literally are recognised.
            add_bos: Prepend ``<bos>``.
            add_eos: Append ``<eos>``.

        Returns:
            Token ids, length ``S``.
        """
        ids = [self.bos_id] if add_bos else []
        # re.split with a capturing group alternates: text, special, text, special, ...
        for k, piece in enumerate(self._special_re.split(text)):
            if k % 2:
                ids.append(self._token_to_id[piece])
                continue
            for symbol in self._split(piece):
                i = self._token_to_id.get(symbol)
                if i is None:
                    if self.strict:
                        raise ValueError(
                            f"unknown symbol {symbol!r} in {text!r} (strict tokenizer with "
                            f"{self.vocab_size} tokens; build with strict=False to map it to {UNK})"
                        )
                    i = self.unk_id
                ids.append(i)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(
        self,
        texts: Sequence[str],
        pad_to: int | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode several strings into one right-padded tensor.

        Args:
            texts: ``B`` strings.
            pad_to: Sequence length ``S``; default the longest encoding. A longer encoding
                raises ``ValueError``.
            add_bos: Prepend ``<bos>`` to every sequence.
            add_eos: Append ``<eos>`` to every sequence.

        Returns:
            ``(ids, mask)``: ids ``(B, S)`` int64 padded with ``pad_id``, and mask ``(B, S)``
            bool, True on real tokens.
        """
        encoded = [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]
        longest = max((len(e) for e in encoded), default=0)
        seq_len = longest if pad_to is None else pad_to
        if longest > seq_len:
            raise ValueError(f"a text encodes to {longest} tokens, longer than pad_to={pad_to}")
        ids = torch.full((len(encoded), seq_len), self.pad_id, dtype=torch.long)  # (B, S)
        mask = torch.zeros((len(encoded), seq_len), dtype=torch.bool)  # (B, S)
        for b, e in enumerate(encoded):
            ids[b, : len(e)] = torch.tensor(e, dtype=torch.long)
            mask[b, : len(e)] = True
        return ids, mask

    # ----- decoding -------------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Decode one sequence of ids.

        Args:
            ids: ``S`` token ids (a list or a 1-D tensor).
            skip_special: Drop every special token (padding, ``<bos>``, ``<sep>``, ...).
                Otherwise specials are written out literally.

        Returns:
            The text.
        """
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1:
                raise ValueError(
                    f"decode expects a 1-D sequence of ids, got shape {tuple(ids.shape)}"
                )
            ids = ids.tolist()
        tokens = [self.id_to_token(int(i)) for i in ids]  # raises on an id out of range
        if skip_special:
            tokens = [t for t in tokens if t not in self._special_set]
        return self._join(tokens)

    def decode_batch(self, ids: torch.Tensor, skip_special: bool = True) -> list[str]:
        """Decode a batch of ids ``(B, S)`` into ``B`` strings."""
        return [self.decode(row, skip_special=skip_special) for row in ids]

    # ----- saving ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: type, vocab (all tokens by id), specials, options."""
        return {
            "type": self.kind,
            "vocab": self.vocab,
            "specials": self.specials,
            "options": self._options(),
        }

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON; read it back with `load_tokenizer`."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, options={self._options()})"


class CharTokenizer(Tokenizer):
    """One token per character.

    ``decode(encode(text), skip_special=False) == text`` for any text whose characters are
    all in the vocabulary.
    """

    kind = "char"

    @classmethod
    def from_text(
        cls, text: str, specials: Sequence[str] = (), *, strict: bool = False
    ) -> CharTokenizer:
        """Build the vocabulary from the distinct characters of ``text`` (sorted)."""
        return cls(sorted(set(text)), specials, strict=strict)

    def _check_symbol(self, symbol: str) -> None:
        if not isinstance(symbol, str) or len(symbol) != 1:
            raise ValueError(f"CharTokenizer symbols are single characters, got {symbol!r}")

    def _split(self, text: str) -> list[str]:
        return list(text)

    def _join(self, symbols: list[str]) -> str:
        return "".join(symbols)


class WordTokenizer(Tokenizer):
    """One token per whitespace-separated word, optionally splitting off punctuation.

    Decoding joins tokens with single spaces, so ``decode(encode(text)) == " ".join(text.split())``
    when every word is known and ``split_punct`` is off.

    Args:
        vocab: The ordinary words, in id order.
        specials: Extra special tokens after the four defaults.
        split_punct: Split each word into runs of word characters and single punctuation marks.
        strict: Raise on an unknown word instead of mapping it to ``<unk>``.
    """

    kind = "word"

    def __init__(
        self,
        vocab: Sequence[str],
        specials: Sequence[str] = (),
        *,
        split_punct: bool = False,
        strict: bool = False,
    ):
        self.split_punct = split_punct
        super().__init__(vocab, specials, strict=strict)

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        specials: Sequence[str] = (),
        *,
        split_punct: bool = False,
        min_freq: int = 1,
        max_size: int | None = None,
        strict: bool = False,
    ) -> WordTokenizer:
        """Build the vocabulary from a corpus.

        Words are ordered by decreasing count, ties alphabetically, so the result does not
        depend on the order of ``texts``.

        Args:
            texts: The corpus.
            specials: Extra special tokens.
            split_punct: See the class docstring.
            min_freq: Drop words seen fewer times.
            max_size: Keep at most this many ordinary words (the most frequent).
            strict: See the class docstring.
        """
        split = _PUNCT_SPLIT.findall if split_punct else str.split
        special_re = _special_pattern(list(DEFAULT_SPECIALS) + list(specials))
        counts: Counter[str] = Counter()
        for text in texts:
            for piece in special_re.split(text)[::2]:  # even pieces are free text
                counts.update(split(piece))
        words = sorted(
            (w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w)
        )
        return cls(words[:max_size], specials, split_punct=split_punct, strict=strict)

    def _check_symbol(self, symbol: str) -> None:
        if not isinstance(symbol, str) or not symbol or any(c.isspace() for c in symbol):
            raise ValueError(
                f"WordTokenizer symbols are non-empty words without spaces, got {symbol!r}"
            )

    def _split(self, text: str) -> list[str]:
        return _PUNCT_SPLIT.findall(text) if self.split_punct else text.split()

    def _join(self, symbols: list[str]) -> str:
        return " ".join(symbols)

    def _options(self) -> dict[str, Any]:
        return {"strict": self.strict, "split_punct": self.split_punct}


def _special_pattern(specials: Sequence[str]) -> re.Pattern[str]:
    """A regex whose `split` alternates free text and special tokens."""
    # Longest first so "<sep2>" is not read as "<sep" plus text; escaped since specials may
    # contain regex metacharacters.
    alternation = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
    return re.compile(f"({alternation})")


_KINDS: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "word": WordTokenizer}


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer written by `Tokenizer.save`, returning the right class."""
    data = json.loads(Path(path).read_text())
    kind = data.get("type")
    if kind not in _KINDS:
        raise ValueError(
            f"{path}: unknown tokenizer type {kind!r}, expected one of {sorted(_KINDS)}"
        )
    specials, vocab = data["specials"], data["vocab"]
    if vocab[: len(specials)] != specials:
        raise ValueError(f"{path}: vocab must start with the special tokens {specials}")
    return _KINDS[kind](vocab[len(specials) :], specials, **data.get("options", {}))
