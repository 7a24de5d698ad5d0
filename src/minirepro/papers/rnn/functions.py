"""The four cell functions: how many gates and states each has, in the reference's order.

| function | recurrent gates (R) | input gates (Wx) | bias gates (b) | states |
|---|---|---|---|---|
| lstm  | i, f, z, o | i, f, z, o | i, f, z, o | h, c |
| slstm | i, f, z, o | i, f, z, o | i, f, z, o | y, c, n, m |
| gru   | g, r, z    | r, z, n    | g, r, z, n | h |
| elman | a          | a          | a          | h |

State 0 is always the hidden output that feeds the recurrence.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FUNCTIONS", "CellSpec", "cell_spec"]


@dataclass(frozen=True)
class CellSpec:
    """Gate and state counts of a cell function.

    Attributes:
        name: "lstm", "slstm", "gru" or "elman".
        n_gates_r: Gates fed by the recurrent matmul (rows of R).
        n_gates_w: Gates fed by the input projection (Wx).
        n_gates_b: Gates with a bias; the first n_gates_r take R, the last n_gates_w take Wx.
        n_states: States carried along the sequence.
        kernel_id: The function's number in the C++ kernel.
    """

    name: str
    n_gates_r: int
    n_gates_w: int
    n_gates_b: int
    n_states: int
    kernel_id: int

    @property
    def w_offset(self) -> int:
        """Bias gate of Wx's gate 0 (gru's Wx skips the recurrent-only gate g)."""
        return self.n_gates_b - self.n_gates_w


FUNCTIONS: dict[str, CellSpec] = {
    "lstm": CellSpec("lstm", 4, 4, 4, 2, 0),
    "slstm": CellSpec("slstm", 4, 4, 4, 4, 1),
    "gru": CellSpec("gru", 3, 3, 4, 1, 2),
    "elman": CellSpec("elman", 1, 1, 1, 1, 3),
}


def cell_spec(function: str) -> CellSpec:
    """Returns the CellSpec of `function`; raises ValueError naming the known ones."""
    if function not in FUNCTIONS:
        raise ValueError(f"unknown RNN function {function!r}; known: {sorted(FUNCTIONS)}")
    return FUNCTIONS[function]
