"""Tile sizes of the kernels, chosen by ConstrINT from the machine's limits.

CPU: a work item of the C++ kernel is (a tile of the batch, a group of heads) run over the
whole sequence. Items must split the batch and heads exactly, come in a multiple of the
thread count (no idle core), and the group's recurrent blocks must fit in half the per-core
L2 cache (the CPU analogue of keeping R on chip). Preferred: the largest head group (each
step then touches a row's memory page once for all heads), then the largest batch tile.

GPU: the constraint set of a fused FlashRNN kernel (`gpu_tiles`): warps along the batch and
the gate columns, the recurrent matrix split between registers and shared memory, blocks per
head resident together; used by the Triton backend and as the solver's speed benchmark.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

from minirepro.papers.rnn.constrint import Var, solve

__all__ = ["CpuTiles", "cpu_tiles", "gpu_constraints", "gpu_tiles", "l2_cache_bytes"]


class CpuTiles(NamedTuple):
    batch_tile: int
    head_group: int


def l2_cache_bytes(default: int = 1 << 20) -> int:
    """Per-core L2 size from sysfs (Linux), else `default`."""
    try:
        for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
            if (idx / "level").read_text().strip() == "2":
                text = (idx / "size").read_text().strip().upper()
                mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
                return int(text.rstrip("KM")) * mult
    except (OSError, ValueError):
        pass
    return default


@functools.cache
def cpu_tiles(
    B: int, N: int, D: int, n_gates: int, n_threads: int, l2_bytes: int | None = None
) -> CpuTiles:
    """Batch tile and head group of the CPU kernel for this problem and machine."""
    l2 = l2_bytes or l2_cache_bytes()
    hg, ng = Var("head_group", range(1, N + 1)), Var("n_groups", range(1, N + 1))
    bt, nb = Var("batch_tile", range(1, B + 1)), Var("n_tiles", range(1, B + 1))
    base = [hg * ng == N, bt * nb == B, hg * (n_gates * D * D * 4) <= l2 // 2]
    balance = [(nb * ng) % max(1, n_threads) == 0]
    for constraints in (base + balance, base):
        sol = solve(constraints, [hg, bt, ng, nb])
        if sol is not None:
            return CpuTiles(sol["batch_tile"], sol["head_group"])
    return CpuTiles(B, 1)  # one head's R does not fit in L2: still correct, just slower


def gpu_constraints(
    B: int,
    D: int,
    n_gates: int,
    n_heads: int,
    *,
    sm_count: int = 132,
    smem_bytes: int = 227 * 1024,
    regs_per_thread: int = 255,
    max_threads: int = 1024,
    dtype_bytes: int = 2,
):
    """The constraint set of a fused recurrent kernel on a GPU (H100 limits by default).

    Returns (constraints, variables in branching order).
    """
    GD = n_gates * D
    bpb = Var("blocks_per_head", [1, 2, 4, 8, 16], prefer="smallest")
    cols = Var("cols_per_block", range(8, GD + 1, 8))
    wg = Var("warps_cols", [1, 2, 4, 8, 16, 32])
    tn = Var("cols_per_warp", [8, 16, 32, 64, 128])
    wb = Var("warps_batch", [1, 2, 4, 8])
    mb = Var("batch_per_warp", [16], prefer="smallest")  # MMA M
    bb = Var("batch_tile", [16, 32, 64, 128])
    tk = Var("k_tile", [16, 32, 64, 128])
    rr = Var("r_regs_per_thread", range(0, 129, 8))  # R entries a thread keeps in registers
    st = Var("stages", [1, 2, 3], prefer="smallest")
    threads = wg * wb * 32
    constraints = [
        cols * bpb == GD,
        tn * wg == cols,
        wb * mb == bb,
        bb <= 16 * ((B + 15) // 16),  # no more padding than one MMA tile
        Var("D", [D]) % tk == 0,
        threads <= max_threads,
        bpb * n_heads <= sm_count,  # every block of a head resident at once (grid sync)
        rr * threads <= cols * D,  # register part of R <= the block's R
        # shared memory: the rest of R, plus the staged input rows
        (cols * D + rr * threads * -1) * dtype_bytes + st * bb * tk * dtype_bytes <= smem_bytes,
        # 32-bit registers per thread, times 128: R part + fp32 accumulators of the
        # warp's mb x tn tile shared by 32 lanes + 40 for addressing and gates
        rr * (dtype_bytes * 32) + mb * tn * 4 + 40 * 128 <= regs_per_thread * 128,
    ]
    return constraints, [bpb, cols, wg, tn, wb, mb, bb, tk, rr, st]


def gpu_tiles(B: int, D: int, n_gates: int, n_heads: int, **limits) -> dict[str, int] | None:
    """Solves `gpu_constraints`; None if the problem does not fit the GPU."""
    constraints, variables = gpu_constraints(B, D, n_gates, n_heads, **limits)
    return solve(constraints, variables)
