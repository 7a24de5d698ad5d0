"""The token format of the search task (the reference's, asaparov/learning_to_search).

An input of `max_input_size` tokens, left-padded::

    PAD ... PAD  E u1 v1  E u2 v2 ...  Q s g  P s x1 ... x_{j-1}

lists the DAG's edges in random order, the query (start `s`, goal `g`) and the path so far.
The target is the next vertex: any child of the last path vertex from which `g` is
reachable is correct (a multi-hot set over the vocabulary).

Vertex ids are 1..n with n = (max_input_size - 5) // 3 (id 0 is reserved and never used),
then PATH = n+1, EDGE = n+2, PAD = n+3, QUERY = n+4; the vocabulary has n + 5 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SearchVocab"]


@dataclass(frozen=True)
class SearchVocab:
    """Token ids and limits derived from `max_input_size`.

    Attributes:
        max_input_size: Tokens per input (the model's sequence length).
    """

    max_input_size: int

    def __post_init__(self) -> None:
        if not isinstance(self.max_input_size, int) or self.max_input_size < 17:
            raise ValueError(
                f"max_input_size must be an int >= 17 (4 vertex ids, room for a graph), "
                f"got {self.max_input_size!r}"
            )

    @property
    def n_ids(self) -> int:
        """Vertex ids are 1..n_ids; a graph has at most n_ids vertices."""
        return (self.max_input_size - 5) // 3

    @property
    def path(self) -> int:
        return self.n_ids + 1

    @property
    def edge(self) -> int:
        return self.n_ids + 2

    @property
    def pad(self) -> int:
        return self.n_ids + 3

    @property
    def query(self) -> int:
        return self.n_ids + 4

    @property
    def vocab_size(self) -> int:
        return self.n_ids + 5

    @property
    def max_lookahead(self) -> int:
        """The largest lookahead the balanced distribution asks for: ((n - 1) // 2)."""
        return (self.n_ids - 1) // 2

    @property
    def max_edges(self) -> int:
        """The reference's default edge budget for the search task: n."""
        return self.n_ids

    def decode(self, tokens: list[int]) -> str:
        """A readable rendering of one input, e.g. ``E 3 5 E 5 2 Q 3 2 P 3``."""
        names = {self.path: "P", self.edge: "E", self.query: "Q"}
        return " ".join(names.get(t, str(t)) for t in tokens if t != self.pad)
