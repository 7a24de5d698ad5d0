"""Tile sizes of the kernels, chosen by ConstrINT from the machine's limits.

CPU: a work item of the C++ kernel is (a tile of the batch, a group of heads) run over the
whole sequence. Items must split the batch and heads exactly, come in a multiple of the
thread count (no idle core), and the group's recurrent blocks must fit in half the per-core
L2 cache (the CPU analogue of keeping R on chip). Preferred: the largest head group (each
step then touches a row's memory page once for all heads), then the largest batch tile.

Triton (`triton_tiles`): the batch tile and warp count of `triton_kernel.py`'s programs
(one per head and batch tile), from the GPU's SM count, registers per thread and per block,
and shared memory: the head's R (and, backward, its dR accumulators) must fit in the
program's registers next to the carried states, the dot operands staged through shared
memory must fit, and the grid should fill the SMs before the batch tile grows.

GPU, general: the constraint set of a fused FlashRNN kernel (`gpu_tiles`): warps along the batch and
the gate columns, the recurrent matrix split between registers and shared memory, blocks per
head resident together; used by the Triton backend and as the solver's speed benchmark.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

from minirepro.papers.rnn.constrint import Var, solve

__all__ = [
    "CpuTiles",
    "GpuLimits",
    "cpu_tiles",
    "gpu_constraints",
    "gpu_limits",
    "gpu_tiles",
    "l2_cache_bytes",
    "triton_constraints",
    "triton_tiles",
]


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


class GpuLimits(NamedTuple):
    """The limits `triton_tiles` respects (H100 SXM figures by default)."""

    sm_count: int = 132
    smem_bytes: int = 227 * 1024
    regs_per_thread: int = 255
    regs_per_block: int = 65536
    max_warps: int = 32


def gpu_limits(device=None) -> GpuLimits:
    """The limits of a CUDA device from torch, or the defaults without one (interpreter)."""
    import torch

    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return GpuLimits()
    p = torch.cuda.get_device_properties(device)
    d = GpuLimits()
    return GpuLimits(
        sm_count=p.multi_processor_count,
        smem_bytes=getattr(p, "shared_memory_per_block_optin", d.smem_bytes),
        regs_per_thread=255,
        regs_per_block=getattr(p, "regs_per_multiprocessor", d.regs_per_block),
        max_warps=min(32, p.max_threads_per_multi_processor // 32),
    )


def triton_constraints(
    B: int, D: int, n_gates: int, n_heads: int, backward: bool, limits: GpuLimits
):
    """Constraints of one Triton program (a head and a tile of the batch).

    Register count (fp32 words per program, across its threads): the R tiles
    n_gates * Dp * Dp, doubled backward for the dR accumulators, plus the live (BB, Dp)
    tiles (4 states and the gates forward; also their gradients and the loaded gates and
    states backward); each thread keeps 40 registers for addresses and temporaries.

    Returns (constraints, variables in branching order).
    """
    Dp = max(16, 1 << (D - 1).bit_length())
    tiles_live = (4 + n_gates) * (2 if backward else 1) + 2  # (BB, Dp) tiles alive at once
    r_words = n_gates * Dp * Dp * (2 if backward else 1)
    bb_max = max(16, 16 * ((B + 15) // 16))
    bb = Var("block_b", [v for v in (16, 32, 64, 128) if v <= bb_max])
    nt = Var("batch_tiles", range(1, (B + 15) // 16 + 1))
    progs = Var("programs", range(1, n_heads * ((B + 15) // 16) + 1))
    warps = Var("num_warps", [w for w in (1, 2, 4, 8, 16, 32) if w <= limits.max_warps],
                prefer="smallest")  # fmt: skip
    regs = Var("regs_per_thread", range(48, limits.regs_per_thread + 1, 8))
    # tl.dot stages its operands through shared memory once per step: h (forward), the
    # gate gradients and h (backward), (BB, Dp) fp32 each
    smem_tiles = (n_gates + 1) if backward else 1
    constraints = [
        # nt batch tiles cover B, the last one not empty
        nt * bb >= B,
        nt * bb + bb * -1 <= B - 1,
        progs == nt * n_heads,
        # fill the SMs before growing the tile: programs >= min(SMs, programs at BB=16)
        progs >= min(limits.sm_count, n_heads * ((B + 15) // 16)),
        # registers: R (+ dR) and the live tiles over the program's threads, 40 a thread
        # kept for addresses and temporaries; the block's register file bounds the total
        regs <= limits.regs_per_thread,
        warps * 32 * regs <= limits.regs_per_block,
        warps * 32 * (regs + -40) >= r_words + bb * (tiles_live * Dp),
        bb * (smem_tiles * Dp * 4) <= limits.smem_bytes,
    ]
    return constraints, [bb, warps, regs, nt, progs]


@functools.cache
def triton_tiles(
    B: int, D: int, n_gates: int, n_heads: int, limits: GpuLimits | None = None
) -> dict[str, dict[str, int]]:
    """Batch tile and warps of the Triton forward and backward kernels.

    Raises:
        ValueError: One head's R does not fit a program's registers on this GPU (the
            paper then splits R over several blocks; not done here).
    """
    limits = limits or GpuLimits()
    out = {}
    for name, backward in (("forward", False), ("backward", True)):
        cons, vs = triton_constraints(B, D, n_gates, n_heads, backward, limits)
        sol = solve(cons, vs)
        if sol is None:
            raise ValueError(
                f"the Triton kernel keeps one head's recurrent matrix on chip: {n_gates} gates "
                f"x {D} x {D} fp32 ({name}) do not fit the registers of one program "
                f"({limits.regs_per_block} per block); use smaller heads or backend='cpu'"
            )
        out[name] = {"block_b": sol["block_b"], "num_warps": sol["num_warps"]}
    return out
