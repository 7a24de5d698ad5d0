"""The four cell functions: the one table of gates and states that every backend follows.

| function | recurrent gates (R) | input gates (Wx) | bias gates (b) | states | id |
|---|---|---|---|---|---|
| lstm  | i, f, z, o | i, f, z, o | i, f, z, o | h, c | 0 |
| slstm | i, f, z, o | i, f, z, o | i, f, z, o | y, c, n, m | 1 |
| gru   | g, r, z    | r, z, n    | g, r, z, n | h | 2 |
| elman | a          | a          | a          | h | 3 |

The bias gates list every gate; the first len(gates_r) take R h, the last len(gates_w) take
Wx (gru's g is recurrent-only, its n input-only). State 0 is always the hidden output that
feeds the recurrence. The reference loop unpacks gates and states by these names, the C++
kernel gets the ids as build-time defines (`cpp_defines`) and the counts with every call
(`CellSpec.kernel_args`), and the Triton kernels take the ids and counts as constexprs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FUNCTIONS", "CellSpec", "cell_spec", "cpp_defines"]


@dataclass(frozen=True)
class CellSpec:
    """Gates and states of a cell function, in the reference package's order.

    Attributes:
        name: "lstm", "slstm", "gru" or "elman".
        gates_r: Gates fed by the recurrent matmul (rows of R).
        gates_w: Gates fed by the input projection (Wx).
        gates_b: All gates, each with a bias: gates_r is a prefix, gates_w a suffix.
        states: States carried along the sequence; state 0 feeds the recurrence.
        kernel_id: The function's number in the C++ and Triton kernels.
    """

    name: str
    gates_r: tuple[str, ...]
    gates_w: tuple[str, ...]
    gates_b: tuple[str, ...]
    states: tuple[str, ...]
    kernel_id: int

    def __post_init__(self) -> None:
        n_r, n_w = len(self.gates_r), len(self.gates_w)
        if self.gates_b[:n_r] != self.gates_r or self.gates_b[len(self.gates_b) - n_w :] != (
            self.gates_w
        ):
            raise ValueError(f"{self.name}: gates_r must prefix and gates_w suffix gates_b")
        if len(self.gates_b) > 4 or len(self.states) > 4:
            raise ValueError(f"{self.name}: the kernels take at most 4 gates and 4 states")

    @property
    def n_gates_r(self) -> int:
        return len(self.gates_r)

    @property
    def n_gates_w(self) -> int:
        return len(self.gates_w)

    @property
    def n_gates_b(self) -> int:
        return len(self.gates_b)

    @property
    def n_states(self) -> int:
        return len(self.states)

    @property
    def w_offset(self) -> int:
        """Bias gate of Wx's gate 0 (gru's Wx skips the recurrent-only gate g)."""
        return self.n_gates_b - self.n_gates_w

    @property
    def kernel_args(self) -> list[int]:
        """(id, states, recurrent gates, input gates, bias gates), as the C++ kernel takes it."""
        return [self.kernel_id, self.n_states, self.n_gates_r, self.n_gates_w, self.n_gates_b]


_IFZO = ("i", "f", "z", "o")
FUNCTIONS: dict[str, CellSpec] = {
    "lstm": CellSpec("lstm", _IFZO, _IFZO, _IFZO, ("h", "c"), 0),
    "slstm": CellSpec("slstm", _IFZO, _IFZO, _IFZO, ("y", "c", "n", "m"), 1),
    "gru": CellSpec("gru", ("g", "r", "z"), ("r", "z", "n"), ("g", "r", "z", "n"), ("h",), 2),
    "elman": CellSpec("elman", ("a",), ("a",), ("a",), ("h",), 3),
}


def cell_spec(function: str) -> CellSpec:
    """Returns the CellSpec of `function`; raises ValueError naming the known ones."""
    if function not in FUNCTIONS:
        raise ValueError(f"unknown RNN function {function!r}; known: {sorted(FUNCTIONS)}")
    return FUNCTIONS[function]


def cpp_defines() -> list[str]:
    """The cell ids as compiler flags for csrc/rnn_cpu.cpp (`-DRNN_FN_LSTM=0`, ...)."""
    return [f"-DRNN_FN_{s.name.upper()}={s.kernel_id}" for s in FUNCTIONS.values()]
