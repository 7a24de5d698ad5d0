"""The one CPU planner: how the listed blocks of a BlockMask are computed.

A plan is built once per (BlockMask, input shape) and kept with the mask
(`BlockMask.cached`). For each (batch, head) group of the mask (all of B or H where the
mask broadcasts over it) it reads the listed blocks and evaluates mask_mod once on the
partial tiles (`mods.mask_values`: torch's vmap semantics), keeping each *distinct* tile
once as booleans (`Group.tiles`). Two strategies run from that:

- "calls" (`calls.py`, mask-only): the listed blocks covered by a few large calls of
  PyTorch's fused CPU flash kernel on *views* of q, k, v, merged by LSE: causal squares
  (`is_causal=True`; equal squares back to back batched), bands (every query block lists
  key blocks [i + d0, i + d1): one call on overlapping key windows), diagonal runs and
  rectangles for what is left, whichever needs fewer calls. Used when that takes few
  calls and the tiles do not vary over a group's batches/heads.
- "stream" (`stream.py`, everything else, and every score_mod): the query blocks of a
  group, in a few buckets of similar block counts, walk their key blocks one step at a
  time with an fp32 online softmax; memory per step is O(S x block), never the listed
  area.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from minirepro.papers.flexattn.block_mask import BlockMask
from minirepro.papers.flexattn.mods import mask_values

__all__ = ["Bucket", "Call", "Group", "Plan", "get_plan"]

ALL, NONE = 0, 1  # tile ids of the all-allowed and all-masked tiles in every table
# A "calls" plan with more calls than this (and than twice its stream buckets) is not used.
_MAX_CALLS = 12
# Widest band (in key blocks) run as one call; wider ones go through diagonals/rectangles.
_MAX_BAND = 8
# A call's additive mask is kept (per dtype) up to this many tiles, else rebuilt per call.
_KEEP_TILES = 8
# Booleans of mask_mod evaluated at once while reading tiles.
_TILE_CHUNK = 1 << 22
# Scores per stream step and batch/head at least this many (1 MB fp32): small problems
# take several key blocks per step (fewer ops); large ones one block for all rows.
_MIN_STEP = 1 << 18
# Stream buckets per group, and the per-step overhead counted in query-block rows.
_MAX_BUCKETS, _STEP_OVERHEAD = 4, 4


@dataclass
class Call:
    """`cnt` pieces: piece p covers query blocks q0 + p·mq ... and key blocks k0 + p·mk ...

    Attributes:
        q0, k0: First query / key block.
        cnt: Pieces, batched as the call's head dim.
        mq, mk: Blocks per piece along queries / keys.
        causal: `is_causal=True` (square pieces).
        tile_ids: (1 | cnt, mq, mk) ids into the group's tiles, or None (no mask).
        dead: (1 | cnt, mq·qb) rows the mask empties (the op returns lse 0 there), or None.
        band: The pieces overlap: query block p sees key blocks k0 + p + [0, mk) (k0 may be
            negative; keys outside the sequence are padding, masked).
    """

    q0: int
    k0: int
    cnt: int
    mq: int
    mk: int
    causal: bool = False
    tile_ids: Tensor | None = None
    dead: Tensor | None = None
    band: bool = False
    _additive: dict = field(default_factory=dict, repr=False)

    def mask(self, tiles: Tensor, dtype: torch.dtype) -> Tensor | None:
        """The additive mask (1, 1 | cnt, mq·qb, mk·kb) in `dtype`, or None.

        Kept only when it is small (one pattern for every piece, at most _KEEP_TILES
        tiles: a band's window); otherwise built from the boolean tiles at each call.
        """
        if self.tile_ids is None:
            return None
        if dtype in self._additive:
            return self._additive[dtype]
        n, mq, mk = self.tile_ids.shape
        allowed = tiles[self.tile_ids.flatten(), 0, 0]  # (n·mq·mk, qb, kb)
        qb, kb = allowed.shape[-2:]
        allowed = allowed.view(n, mq, mk, qb, kb).transpose(2, 3).reshape(n, mq * qb, mk * kb)
        out = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf"))
        if n * mq * mk <= _KEEP_TILES:
            self._additive[dtype] = out[None]
        return out[None]


@dataclass
class Bucket:
    """Query blocks of a group that walk their key blocks together, one block per step.

    Attributes:
        rows: (r,) query blocks.
        blocks: (r, n) key block of each row at each step (0 where the row has no more).
        tile_ids: (r, n) ids into the group's tiles (NONE past a row's last block).
        masked: per column, whether any row's tile there is not ALL.
        chunk: Key blocks per step (several where the bucket has few rows, so a step's
            scores stay within max(S x block, _MIN_STEP) per batch/head).
    """

    rows: Tensor
    blocks: Tensor
    tile_ids: Tensor
    masked: list[bool]
    chunk: int = 1


@dataclass
class Group:
    """One (batch, head) slice of the BlockMask: all of B or H where it broadcasts.

    tiles: (P, B'', H'', qb, kb) bool, the distinct tiles; B''/H'' are 1 unless mask_mod
    differs over the group's batches/heads. Id ALL is all True, NONE all False.
    """

    b: slice
    h: slice
    tiles: Tensor
    calls: list[Call] | None = None
    buckets: list[Bucket] | None = None


@dataclass
class Plan:
    strategy: str  # "calls" or "stream"
    groups: list[Group]
    n_q: int
    n_kv: int
    qb: int
    kb: int

    @property
    def n_calls(self) -> int:
        return sum(len(g.calls or ()) + len(g.buckets or ()) for g in self.groups)


@dataclass
class _Layout:
    """What both strategies read: the listed blocks of each group and their tiles."""

    b: slice
    h: slice
    full: list[list[int]]  # per query block, listed order, inside the sequence
    partial: list[list[int]]
    tile_of: dict[tuple[int, int], int]  # (i, j) -> tile id
    tiles: Tensor


def get_plan(bm: BlockMask, B: int, H: int, S: int, T: int, strategy: str) -> Plan | None:
    """The plan of `strategy` for inputs (B, H, S, ·) with T keys; None if "calls" would
    need too many calls or the tiles vary within a group. Cached on the BlockMask."""
    if strategy not in ("calls", "stream"):
        raise ValueError(f"unknown CPU plan {strategy!r}: use 'calls' or 'stream'")
    layout = bm.cached(("layout", B, H, S, T), lambda: _layouts(bm, B, H, S, T))
    qb, kb = bm.BLOCK_SIZE
    n_q, n_kv = -(-S // qb), -(-T // kb)
    build = _calls_plan if strategy == "calls" else _stream_plan
    return bm.cached((strategy, B, H, S, T), lambda: build(layout, n_q, n_kv, qb, kb, S, T))


# --------------------------------------------------------------------------- layout


def _layouts(bm: BlockMask, B: int, H: int, S: int, T: int) -> list[_Layout]:
    qb, kb = bm.BLOCK_SIZE
    n_q, n_kv = -(-S // qb), -(-T // kb)
    lists = [bm.kv_num_blocks, bm.kv_indices]
    if bm.full_kv_num_blocks is not None:
        lists += [bm.full_kv_num_blocks, bm.full_kv_indices]
    # Batches/heads that list the same blocks are one group (fewer, larger steps).
    for dim in (0, 1):
        if lists[0].shape[dim] > 1 and all(
            torch.equal(x, x.narrow(dim, 0, 1).expand_as(x)) for x in lists
        ):
            lists = [x.narrow(dim, 0, 1) for x in lists]
    mB, mH = lists[0].shape[:2]
    num, idx = lists[0].tolist(), lists[1].tolist()
    has_full = len(lists) == 4
    if has_full:
        fnum, fidx = lists[2].tolist(), lists[3].tolist()
    out = []
    for ib in range(mB):
        for ih in range(mH):
            gb = slice(None) if mB == 1 else slice(ib, ib + 1)
            gh = slice(None) if mH == 1 else slice(ih, ih + 1)
            partial = [
                [j for j in idx[ib][ih][i][: num[ib][ih][i]] if j < n_kv] for i in range(n_q)
            ]
            full = [[] for _ in range(n_q)]
            if has_full:
                full = [[j for j in fidx[ib][ih][i][: fnum[ib][ih][i]] if j < n_kv]
                        for i in range(n_q)]  # fmt: skip
            b_idx, h_idx = torch.arange(B)[gb], torch.arange(H)[gh]
            tiles, tile_of = _tiles(bm.mask_mod, full, partial, b_idx, h_idx, qb, kb, S, T)
            out.append(_Layout(gb, gh, full, partial, tile_of, tiles))
    return out


def _tiles(mask_mod, full, partial, b_idx, h_idx, qb, kb, S, T):
    """mask_mod on every partial tile (and the bounds of full tiles past T), deduplicated.

    Returns:
        tiles (P, B'', H'', qb, kb) bool with ids ALL and NONE first, and (i, j) -> id.
    """
    Bp, Hp = len(b_idx), len(h_idx)
    blocks = [(i, j) for i, row in enumerate(partial) for j in row]
    edge = [(i, j) for i, row in enumerate(full) for j in row if (j + 1) * kb > T]
    evaluated = []
    per_chunk = max(1, _TILE_CHUNK // (Bp * Hp * qb * kb))
    for c in range(0, len(blocks), per_chunk):
        chunk = torch.tensor(blocks[c : c + per_chunk])
        q_pos = (chunk[:, :1] * qb + torch.arange(qb)).clamp(max=S - 1)  # (P, qb)
        kv_pos = chunk[:, 1:] * kb + torch.arange(kb)  # (P, kb)
        m = mask_values(
            mask_mod,
            b_idx[None, :, None, None, None],
            h_idx[None, None, :, None, None],
            q_pos[:, None, None, :, None],
            kv_pos.clamp(max=T - 1)[:, None, None, None, :],
        )
        while m.dim() < 5:
            m = m.unsqueeze(0)
        m = m.expand(len(chunk), *m.shape[1:3], qb, kb) & (kv_pos < T)[:, None, None, None]
        evaluated.append(m)
    for _, j in edge:  # a full block past T: only its keys inside the sequence
        evaluated.append((torch.arange(j * kb, (j + 1) * kb) < T).expand(1, 1, 1, qb, kb))
    bdim = max([m.shape[1] for m in evaluated], default=1)
    hdim = max([m.shape[2] for m in evaluated], default=1)
    if evaluated:
        allt = torch.cat([m.expand(m.shape[0], bdim, hdim, qb, kb) for m in evaluated])
        if bdim > 1 and bool((allt == allt[:, :1]).all()):
            allt, bdim = allt[:, :1], 1
        if hdim > 1 and bool((allt == allt[:, :, :1]).all()):
            allt, hdim = allt[:, :, :1], 1
    else:
        allt = torch.zeros(0, 1, 1, qb, kb, dtype=torch.bool)
    base = torch.stack([torch.ones(bdim, hdim, qb, kb, dtype=torch.bool),
                        torch.zeros(bdim, hdim, qb, kb, dtype=torch.bool)])  # fmt: skip
    distinct: dict[bytes, int] = {}
    for t, tid in ((base[0], ALL), (base[1], NONE)):
        distinct[np.packbits(t.numpy()).tobytes()] = tid
    ids, keep = [], [base]
    packed = np.packbits(allt.reshape(len(allt), bdim * hdim * qb * kb).numpy(), axis=1)
    for p in range(len(allt)):
        key = packed[p].tobytes()
        if key not in distinct:
            distinct[key] = len(distinct)
            keep.append(allt[p : p + 1])
        ids.append(distinct[key])
    tiles = torch.cat(keep)
    tile_of = dict(zip(blocks + edge, ids))
    return tiles, tile_of


# --------------------------------------------------------------------------- "calls"


def _calls_plan(layouts, n_q, n_kv, qb, kb, S, T) -> Plan | None:
    if any(lay.tiles.shape[1] > 1 or lay.tiles.shape[2] > 1 for lay in layouts):
        return None  # tiles differ over a group's batches/heads: one mask per call cannot
    groups, n_buckets = [], 1
    for lay in layouts:
        calls = _group_calls(lay, n_q, n_kv, qb, kb, S, T)
        groups.append(Group(lay.b, lay.h, lay.tiles, calls=calls))
        counts = {len(f) + len(p) for f, p in zip(lay.full, lay.partial)}
        n_buckets = max(n_buckets, len(counts))
    plan = Plan("calls", groups, n_q, n_kv, qb, kb)
    limit = max(_MAX_CALLS, 2 * n_buckets) * len(groups)
    return plan if plan.n_calls <= limit else None


def _group_calls(lay: _Layout, n_q, n_kv, qb, kb, S, T) -> list[Call]:
    partial = {(i, j) for i, row in enumerate(lay.partial) for j in row}
    full = {(i, j) for i, row in enumerate(lay.full) for j in row}
    tile_of = lay.tile_of
    lt: dict[int, bool] = {}
    if S == T and qb == kb:
        tril = torch.ones(qb, qb, dtype=torch.bool).tril()
        for i in range(n_q):
            if (i, i) in partial:
                rows = min(qb, S - i * qb)  # rows past S are padding: not compared
                lt[i] = bool(torch.equal(lay.tiles[tile_of[(i, i)], 0, 0, :rows], tril[:rows]))
    band_calls: list[Call] = []
    band = _band(partial | full, n_q, n_kv)
    if band is not None:
        d0, d1 = band
        a, b = max(0, -d0), min(n_q, n_kv - d1 + 1)  # rows whose windows are inside
        if b - a >= 2:
            ids = [[tile_of.get((i, j), ALL) for j in range(i + d0, i + d1)] for i in range(a, b)]
            band_calls = [_with_tiles(Call(a, a + d0, b - a, 1, d1 - d0, band=True), ids, lay)]
            inner = {(i, j) for i in range(a, b) for j in range(i + d0, i + d1)}
            full, partial = full - inner, partial - inner
            lt = {i: x for i, x in lt.items() if not a <= i < b}
    best = None
    for max_size in (n_q, 1):  # squares as large as they go, or only diagonal tiles
        squares = _squares(lt, full, n_q, max_size)
        used = set()
        for a, m in squares:
            used |= {(i, j) for i in range(a, a + m) for j in range(a, i + 1)}
        calls: list = list(band_calls)
        for a, m in squares:  # equal squares back to back: one batched call
            last = calls[-1] if calls else None
            if last and last.causal and last.mq == m and last.q0 + last.cnt * m == a:
                last.cnt += 1
            else:
                calls.append(Call(a, a, 1, m, m, causal=True))
        for kind, blocks in (("full", full - used), ("partial", partial - used)):
            diag = [Call(i, j, c, 1, 1) for i, j, c in _diagonal_runs(blocks)]
            rect = [Call(i0, j0, 1, i1 - i0, j1 - j0) for i0, i1, j0, j1 in _rectangles(blocks)]
            chosen = diag if len(diag) <= len(rect) else rect
            if kind == "partial":
                chosen = [_with_tiles(c, _piece_ids(c, tile_of), lay) for c in chosen]
            calls += chosen
        if best is None or len(calls) < len(best):
            best = calls
    return best


def _piece_ids(c: Call, tile_of: dict) -> list[list[list[int]]]:
    return [
        [[tile_of[(i, j)] for j in range(c.k0 + p * c.mk, c.k0 + (p + 1) * c.mk)]
         for i in range(c.q0 + p * c.mq, c.q0 + (p + 1) * c.mq)]
        for p in range(c.cnt)
    ]  # fmt: skip


def _with_tiles(call: Call, ids, lay: _Layout) -> Call:
    """Sets the call's tile ids (one set if all pieces agree) and its dead rows."""
    ids = torch.tensor(ids, dtype=torch.long)
    if ids.dim() == 2:  # band: one row of tiles per piece
        ids = ids[:, None, :]
    if call.cnt > 1 and bool((ids == ids[:1]).all()):
        ids = ids[:1]
    if bool((ids == ALL).all()):
        return call
    call.tile_ids = ids
    allowed = lay.tiles[ids.flatten(), 0, 0].view(*ids.shape, *lay.tiles.shape[-2:])
    dead = ~allowed.any(-1).any(2)  # (n, mq, qb): a row with no allowed key in any tile
    dead = dead.flatten(1)
    call.dead = dead if bool(dead.any()) else None
    return call


def _runs(cols: list[int]) -> list[tuple[int, int]]:
    """Sorted ints -> maximal runs [lo, hi)."""
    out: list[tuple[int, int]] = []
    for c in cols:
        if out and out[-1][1] == c:
            out[-1] = (out[-1][0], c + 1)
        else:
            out.append((c, c + 1))
    return out


def _diagonal_runs(blocks: set[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Blocks -> runs (i0, j0, cnt) of (i0 + p, j0 + p), p < cnt."""
    out = []
    for i, j in sorted(blocks, key=lambda ij: (ij[1] - ij[0], ij[0])):
        if out and out[-1][0] + out[-1][2] == i and out[-1][1] + out[-1][2] == j:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + 1)
        else:
            out.append((i, j, 1))
    return out


def _rectangles(blocks: set[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Blocks -> rectangles (i0, i1, j0, j1): consecutive rows with the same column run."""
    by_row: dict[int, list[int]] = {}
    for i, j in sorted(blocks):
        by_row.setdefault(i, []).append(j)
    done: list[tuple[int, int, int, int]] = []
    open_: dict[tuple[int, int], tuple[int, int]] = {}  # column run -> (first, last row)
    for i in sorted(by_row):
        runs = _runs(by_row[i])
        for run, (i0, last) in list(open_.items()):
            if run not in runs or last != i - 1:
                done.append((i0, last + 1, *run))
                del open_[run]
        for run in runs:
            i0, _ = open_.get(run, (i, i))
            open_[run] = (i0, i)
    done += [(i0, last + 1, *run) for run, (i0, last) in open_.items()]
    return done


def _squares(lt: dict[int, bool], full: set, n: int, max_size: int) -> list[tuple[int, int]]:
    """Causal squares (a, m): diagonal tiles causal, everything below them full."""
    out, i = [], 0
    while i < n:
        if not lt.get(i, False):
            i += 1
            continue
        a, m = i, 1
        while (
            m < max_size
            and lt.get(a + m, False)
            and all((a + m, j) in full for j in range(a, a + m))
        ):
            m += 1
        out.append((a, m))
        i = a + m
    return out


def _band(blocks: set, n_q: int, n_kv: int) -> tuple[int, int] | None:
    """(d0, d1) if every query block i lists exactly key blocks [i + d0, i + d1) (clipped to
    the sequence): a band, one call over overlapping key windows (sliding windows)."""
    rows: dict[int, list[int]] = {}
    for i, j in blocks:
        rows.setdefault(i, []).append(j)
    if len(rows) != n_q:
        return None
    d0 = min(min(js) - i for i, js in rows.items())
    d1 = max(max(js) + 1 - i for i, js in rows.items())
    if d1 - d0 > _MAX_BAND or d1 - d0 >= n_kv:
        return None
    for i, js in rows.items():
        if sorted(js) != list(range(max(0, i + d0), min(n_kv, i + d1))):
            return None
    return d0, d1


# --------------------------------------------------------------------------- "stream"


def _stream_plan(layouts, n_q, n_kv, qb, kb, S, T) -> Plan:
    groups = []
    for lay in layouts:
        rows = [(i, f + p) for i, (f, p) in enumerate(zip(lay.full, lay.partial)) if f or p]
        rows.sort(key=lambda r: len(r[1]))
        buckets = []
        for lo, hi in _split([len(blocks) for _, blocks in rows]):
            members = rows[lo:hi]
            n = len(members[-1][1])
            blocks = torch.zeros(len(members), n, dtype=torch.long)
            ids = torch.full((len(members), n), NONE, dtype=torch.long)
            for a, (i, row) in enumerate(members):
                blocks[a, : len(row)] = torch.tensor(row)
                ids[a, : len(row)] = torch.tensor([lay.tile_of.get((i, j), ALL) for j in row])
            rows_t = torch.tensor([i for i, _ in members])
            masked = (ids != ALL).any(0).tolist()
            budget = max(n_q * qb * kb, _MIN_STEP)  # scores per step and batch/head
            chunk = max(1, min(n, budget // (len(members) * qb * kb)))
            buckets.append(Bucket(rows_t, blocks, ids, masked, chunk))
        groups.append(Group(lay.b, lay.h, lay.tiles, buckets=buckets))
    return Plan("stream", groups, n_q, n_kv, qb, kb)


def _split(counts: list[int]) -> list[tuple[int, int]]:
    """Sorted block counts -> at most _MAX_BUCKETS runs [lo, hi) minimising the work,
    sum over buckets of (rows + overhead) x (its largest count)."""
    m = len(counts)
    if m == 0:
        return []
    inf = float("inf")
    # best[k][e]: cost of splitting counts[:e] into k buckets.
    best = [[inf] * (m + 1) for _ in range(_MAX_BUCKETS + 1)]
    cut = [[0] * (m + 1) for _ in range(_MAX_BUCKETS + 1)]
    best[0][0] = 0.0
    for k in range(1, _MAX_BUCKETS + 1):
        for e in range(1, m + 1):
            for s in range(k - 1, e):
                cost = best[k - 1][s] + (e - s + _STEP_OVERHEAD) * counts[e - 1]
                if cost < best[k][e]:
                    best[k][e], cut[k][e] = cost, s
    k = min(range(1, _MAX_BUCKETS + 1), key=lambda k: best[k][m])
    out, e = [], m
    while k > 0:
        s = cut[k][e]
        out.append((s, e))
        e, k = s, k - 1
    return out[::-1]
