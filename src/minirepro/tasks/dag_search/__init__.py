"""Graph search on DAGs: the next-vertex task of "Transformers Struggle to Learn to Search".

The token format, the naive and balanced training distributions and the lookahead measure
follow the reference (asaparov/learning_to_search, generator.cpp); the DFS and
selection-inference trace variants are this project's simplified versions of the paper's
in-context exploration tasks.

Example:
    >>> b = generate_batch(4, max_input_size=32, distribution="balanced", lookahead=2, rng=0)
    >>> b.tokens.shape, bool((b.lookahead == 2).all())
    ((4, 32), True)
"""

from minirepro.tasks.dag_search.analysis import (
    all_distances,
    distances_to,
    lookahead,
    reachability,
)
from minirepro.tasks.dag_search.generate import (
    DISTRIBUTIONS,
    SearchBatch,
    generate_batch,
    numpy_rng,
)
from minirepro.tasks.dag_search.graphs import sample_balanced_graph, sample_naive_graph
from minirepro.tasks.dag_search.traces import TRACE_KINDS, generate_trace_batch, valid_next
from minirepro.tasks.dag_search.vocab import SearchVocab

__all__ = [
    "DISTRIBUTIONS",
    "TRACE_KINDS",
    "SearchBatch",
    "SearchVocab",
    "all_distances",
    "distances_to",
    "generate_batch",
    "generate_trace_batch",
    "lookahead",
    "numpy_rng",
    "reachability",
    "sample_balanced_graph",
    "sample_naive_graph",
    "valid_next",
]
