"""FlashRNN: traditional RNNs made fast (Pöppel et al., arXiv 2412.07752).

https://arxiv.org/abs/2412.07752

Claim: LSTM, GRU, sLSTM and Elman networks with head-wise (block-diagonal) recurrent
matrices become practical when each step's recurrent matmul is fused with the gate math and
the recurrent weights stay in fast memory; tile sizes come from an integer constraint solver
(ConstrINT). Up to 50x faster than a vanilla PyTorch loop (on GPU).

Implemented here:
- `flashrnn(Wx, R, b, states, function, backend)` with the PyPI `flashrnn` package's layouts,
  gate orders and states, plus forward and recurrent-gradient clipping;
- a CPU backend: a C++ extension (built on first use, cached) whose threads each own a
  (batch tile, head group) for the whole sequence, with a register-tiled per-step GEMM and
  the gate math fused after it, and a hand-written fused backward;
- a Triton backend (`triton_kernel.py`): one program per (head, batch tile) keeps the
  head's R in registers and loops over time inside the kernel; forward and backward
  kernels (dR accumulated in registers), tiles from ConstrINT; tested under
  TRITON_INTERPRET=1 on the CPU, not yet timed on a GPU;
- `reference.py`, the Python loop under autograd (the oracle);
- `FlashRNNLayer` modules, registered as the core model's token mixers "lstm", "slstm",
  "gru" and "elman" (with a decoding cache);
- ConstrINT (`constrint.py`), choosing the CPU kernel's and the Triton kernels' tiles.

Deviations: the Triton kernels are fp32 only and need one head's R to fit one program's
registers (the paper splits larger R over blocks); no CUDA kernels; the CPU kernel computes
in fp32/fp64 (bf16/fp16 inputs are computed in fp32 and cast back; no AMX); the benchmark
runs on a shared 2-core CPU, not a GPU. See NOTES.md.

Run: `minirepro run rnn` (quick preset); benchmark: `python benchmarks/rnn.py`.
"""

from minirepro.papers.rnn import modules as _modules  # registers the token mixers
from minirepro.papers.rnn.constrint import Var, solve
from minirepro.papers.rnn.cpu import (
    CpuKernelUnavailable,
    buffer_pool_stats,
    load_extension,
    release_buffers,
    set_buffer_pool_limit,
)
from minirepro.papers.rnn.dispatch import flashrnn
from minirepro.papers.rnn.functions import FUNCTIONS, CellSpec, cell_spec
from minirepro.papers.rnn.modules import FlashRNNLayer, RNNMixer, RNNState
from minirepro.papers.rnn.reference import flashrnn_reference
from minirepro.papers.rnn.repro import PRESETS, Config, run
from minirepro.registry import Paper

CLAIMS = [
    "An sLSTM mixer learns running parity and length-generalises; attention of the same "
    "size does not (state tracking needs recurrence).",
    "Fusing the recurrent matmul with the gate math (R kept in fast memory) makes the RNN "
    "loop much faster than a vanilla PyTorch loop (paper: up to 50x on GPU).",
]

PAPER = Paper(
    id="rnn",
    title="FlashRNN: Optimizing Traditional RNNs on Modern Hardware",
    arxiv="2412.07752",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
    status="partial",  # the Triton backend is interpreter-tested only, never timed on a GPU
)

__all__ = [
    "CLAIMS",
    "FUNCTIONS",
    "PAPER",
    "PRESETS",
    "CellSpec",
    "Config",
    "CpuKernelUnavailable",
    "FlashRNNLayer",
    "RNNMixer",
    "RNNState",
    "Var",
    "buffer_pool_stats",
    "cell_spec",
    "flashrnn",
    "flashrnn_reference",
    "load_extension",
    "release_buffers",
    "run",
    "set_buffer_pool_limit",
    "solve",
]

del _modules
