"""minirepro: much-discussed ML papers as one package.

Each paper is a subpackage of `minirepro.papers` with a library API, a CPU-sized
reproduction (`minirepro run <id>`) and, where the paper makes a speed claim, a benchmark.
"""

__version__ = "0.1.0"
