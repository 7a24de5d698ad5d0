"""BlockMask: a mask summarised once per (query block, key block) tile.

Same format and semantics as `torch.nn.attention.flex_attention.BlockMask`. Per
[B, H, q-block] row it lists the *partial* key blocks (`kv_num_blocks`, `kv_indices`:
mask_mod is applied inside them) and the *full* key blocks (`full_kv_num_blocks`,
`full_kv_indices`: mask_mod is skipped); blocks listed in neither are never computed. The
transposed lists (`q_num_blocks`, `q_indices`, ...) serve the backward pass, which reduces
over queries for each key block. Index lists are in ascending block order, followed by the
unused blocks (the reference's stable argsort), so the tensors equal the reference's.

`create_block_mask` evaluates mask_mod one chunk of query blocks at a time: memory
B·H·chunk·KV booleans instead of B·H·Q·KV (268 MB at 16k).
"""

from __future__ import annotations

import functools
import itertools
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from minirepro.papers.flexattn.masks import MaskMod, noop_mask
from minirepro.papers.flexattn.mods import (
    is_broadcastable,
    mark_broadcastable,
    mask_values,
    score_values,
)

__all__ = ["BlockMask", "create_block_mask", "create_mask", "evaluate_mask"]

DEFAULT_BLOCK_SIZE = 128
# Booleans evaluated per (batch, head) and chunk of create_block_mask: 1M = 1 MB.
_CHUNK_ELEMENTS = 1 << 20


def evaluate_mask(mask_mod: MaskMod, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    """mask_mod on the grid b x h x q_idx x kv_idx (1-D index tensors), torch's semantics.

    Returns:
        A bool tensor broadcastable to (len(b), len(h), len(q_idx), len(kv_idx)); size-1
        dims stay size 1 where a broadcastable mask_mod does not depend on them (no copy).
    """
    out = mask_values(
        mask_mod, b[:, None, None, None], h[None, :, None, None], q_idx[:, None], kv_idx
    )
    while out.dim() < 4:
        out = out.unsqueeze(0)
    return out.to(torch.bool)


def create_mask(
    mod_fn: Any,
    B: int | None,
    H: int | None,
    Q_LEN: int,
    KV_LEN: int,
    device: str | torch.device = "cpu",
) -> Tensor:
    """The dense (B, H, Q_LEN, KV_LEN) bool mask of a mask_mod, or of a score_mod (True
    where it does not give -inf). B or H = None means 1.
    """
    B, H = B or 1, H or 1
    b, h = torch.arange(B, device=device), torch.arange(H, device=device)
    q, kv = torch.arange(Q_LEN, device=device), torch.arange(KV_LEN, device=device)
    if _is_score_mod(mod_fn):
        zeros = torch.zeros(B, H, Q_LEN, KV_LEN, device=device)
        out = score_values(
            mod_fn, zeros, b[:, None, None, None], h[None, :, None, None], q[:, None], kv
        )
        return ~torch.isneginf(out.expand(B, H, Q_LEN, KV_LEN))
    return evaluate_mask(mod_fn, b, h, q, kv).expand(B, H, Q_LEN, KV_LEN).contiguous()


def _is_score_mod(fn: Any) -> bool:
    import inspect

    try:
        n = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return n == 5


def _dense_to_ordered(dense: Tensor) -> tuple[Tensor, Tensor]:
    """(…, rows, cols) 0/1 -> per row: count, column indices (listed first, ascending)."""
    dense = dense.to(torch.int32)
    num = dense.sum(dim=-1)
    indices = torch.argsort(dense, dim=-1, descending=True, stable=True)
    return num.to(torch.int32).contiguous(), indices.to(torch.int32).contiguous()


def _ordered_to_dense(num: Tensor, indices: Tensor, num_cols: int) -> Tensor:
    """Inverse of `_dense_to_ordered`: (…, rows) counts and (…, rows, n) indices -> 0/1."""
    listed = torch.arange(indices.shape[-1], device=indices.device) < num[..., None]
    dense = torch.zeros(*indices.shape[:-1], num_cols + 1, dtype=torch.int32, device=num.device)
    # Unlisted entries are written to one extra column, then dropped.
    dense.scatter_(-1, torch.where(listed, indices, num_cols).long(), 1)
    return dense[..., :num_cols].contiguous()


def _transpose_ordered(num: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    dense = _ordered_to_dense(num, indices, indices.shape[-1])
    return _dense_to_ordered(dense.transpose(-2, -1))


class BlockMask:
    """Block-sparse mask: partial and full key blocks per query block, and the transpose.

    Attributes:
        seq_lengths: (Q_LEN, KV_LEN).
        kv_num_blocks: (B, H, n_q_blocks) int32, partial blocks per query block.
        kv_indices: (B, H, n_q_blocks, n_kv_blocks) int32.
        full_kv_num_blocks, full_kv_indices: the same for full blocks (or None).
        q_num_blocks, q_indices, full_q_num_blocks, full_q_indices: the transposes,
            (B, H, n_kv_blocks) and (B, H, n_kv_blocks, n_q_blocks).
        BLOCK_SIZE: (Q_BLOCK_SIZE, KV_BLOCK_SIZE).
        mask_mod: Applied inside partial blocks.
    """

    def __init__(
        self,
        seq_lengths: tuple[int, int],
        kv_num_blocks: Tensor,
        kv_indices: Tensor,
        full_kv_num_blocks: Tensor | None,
        full_kv_indices: Tensor | None,
        q_num_blocks: Tensor | None,
        q_indices: Tensor | None,
        full_q_num_blocks: Tensor | None,
        full_q_indices: Tensor | None,
        BLOCK_SIZE: tuple[int, int] = (DEFAULT_BLOCK_SIZE, DEFAULT_BLOCK_SIZE),
        mask_mod: MaskMod = noop_mask,
    ) -> None:
        if kv_indices.dim() < 2:
            raise RuntimeError("BlockMask must have at least 2 dimensions")
        if (full_kv_num_blocks is None) != (full_kv_indices is None):
            raise AssertionError(
                "full_kv_num_blocks and full_kv_indices must be both provided or omitted"
            )
        self.seq_lengths = tuple(seq_lengths)
        self.kv_num_blocks = kv_num_blocks
        self.kv_indices = kv_indices
        self.full_kv_num_blocks = full_kv_num_blocks
        self.full_kv_indices = full_kv_indices
        self.q_num_blocks = q_num_blocks
        self.q_indices = q_indices
        self.full_q_num_blocks = full_q_num_blocks
        self.full_q_indices = full_q_indices
        self.BLOCK_SIZE = tuple(BLOCK_SIZE)
        self.mask_mod = mask_mod
        self._cache: dict[Any, Any] = {}  # written only by `cached`

    def cached(self, key: Any, build: Any) -> Any:
        """`build()` once per key for this mask: the kernels' execution plans live here.

        A BlockMask is built once and reused for many calls (every layer, every step), so
        what the kernels derive from it is kept with it; the mask is immutable after
        construction, which makes that safe.
        """
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def __getitem__(self, index: Any) -> BlockMask:
        """The BlockMask of some batches / heads / query blocks, as torch's indexing.

        An int keeps its dim (size 1), as torch's does. Where only batch and head are
        indexed, the new mask_mod maps the new (b, h) back to the original ones, so the
        result still works with `flex_attention`; after indexing query blocks, calling
        its mask_mod raises (torch's behaviour).
        """
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > 3:
            raise IndexError(
                f"a BlockMask takes at most 3 indices (batch, head, q block), got {len(index)}"
            )
        padded = (*index, slice(None), slice(None), slice(None))[:3]
        sizes = self.kv_num_blocks.shape[:3]
        index = tuple(
            slice(i % n, i % n + 1) if isinstance(i, int) else i for i, n in zip(padded, sizes)
        )
        for i, n in zip(padded, sizes):
            if isinstance(i, int) and not -n <= i < n:
                raise IndexError(f"index {i} is out of range for a BlockMask dim of size {n}")

        def pick(x):
            return None if x is None else x[index]

        mask_mod = _sliced_mask_mod_error
        if isinstance(index[2], slice) and index[2] == slice(None):
            b_of = torch.arange(sizes[0])[index[0]]
            h_of = torch.arange(sizes[1])[index[1]]
            mask_mod = _remap_batch_head(self.mask_mod, b_of, h_of, self.kv_num_blocks.shape[:2])
        return BlockMask.from_kv_blocks(
            pick(self.kv_num_blocks),
            pick(self.kv_indices),
            pick(self.full_kv_num_blocks),
            pick(self.full_kv_indices),
            BLOCK_SIZE=self.BLOCK_SIZE,
            mask_mod=mask_mod,
            seq_lengths=self.seq_lengths,
            compute_q_blocks=self.q_indices is not None,
        )

    @classmethod
    def from_kv_blocks(
        cls,
        kv_num_blocks: Tensor,
        kv_indices: Tensor,
        full_kv_num_blocks: Tensor | None = None,
        full_kv_indices: Tensor | None = None,
        BLOCK_SIZE: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
        mask_mod: MaskMod | None = None,
        seq_lengths: tuple[int, int] | None = None,
        compute_q_blocks: bool = True,
    ) -> BlockMask:
        """Builds a BlockMask from its kv-side lists, deriving the q-side transposes."""
        if (full_kv_num_blocks is None) != (full_kv_indices is None):
            raise AssertionError(
                "full_kv_num_blocks and full_kv_indices must be both provided or omitted"
            )
        q_num = q_idx = full_q_num = full_q_idx = None
        if compute_q_blocks:
            q_num, q_idx = _transpose_ordered(kv_num_blocks, kv_indices)
            if full_kv_num_blocks is not None:
                full_q_num, full_q_idx = _transpose_ordered(full_kv_num_blocks, full_kv_indices)
        if isinstance(BLOCK_SIZE, int):
            BLOCK_SIZE = (BLOCK_SIZE, BLOCK_SIZE)
        if seq_lengths is None:
            seq_lengths = (
                kv_indices.shape[-2] * BLOCK_SIZE[0],
                kv_indices.shape[-1] * BLOCK_SIZE[1],
            )
        return cls(
            seq_lengths,
            kv_num_blocks,
            kv_indices,
            full_kv_num_blocks,
            full_kv_indices,
            q_num,
            q_idx,
            full_q_num,
            full_q_idx,
            BLOCK_SIZE=BLOCK_SIZE,
            mask_mod=mask_mod if mask_mod is not None else noop_mask,
        )

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.seq_lengths[0],
            self.seq_lengths[1],
            self.kv_num_blocks,
            self.kv_indices,
            self.full_kv_num_blocks,
            self.full_kv_indices,
            self.q_num_blocks,
            self.q_indices,
            self.full_q_num_blocks,
            self.full_q_indices,
            *self.BLOCK_SIZE,
            self.mask_mod,
        )

    @property
    def shape(self) -> tuple[int, ...]:
        *batch_dims, _, _ = self.kv_indices.shape
        return tuple(batch_dims) + tuple(self.seq_lengths)

    def numel(self) -> int:
        return functools.reduce(operator.mul, self.shape, 1)

    def sparsity(self) -> float:
        """Percentage of the (B, H, Q, KV) area in blocks that are not computed."""
        computed = self.kv_num_blocks.sum()
        if self.full_kv_num_blocks is not None:
            computed = computed + self.full_kv_num_blocks.sum()
        area = computed.item() * self.BLOCK_SIZE[0] * self.BLOCK_SIZE[1]
        return 100 * (1 - area / self.numel())

    def to_dense(self) -> Tensor:
        """(B, H, n_q_blocks, n_kv_blocks) int32: 1 where a block is computed."""
        n_cols = self.kv_indices.shape[-1]
        dense = _ordered_to_dense(self.kv_num_blocks, self.kv_indices, n_cols)
        if self.full_kv_num_blocks is not None:
            full = _ordered_to_dense(self.full_kv_num_blocks, self.full_kv_indices, n_cols)
            dense = dense | full
        return dense

    def to_string(self, grid_size: int | tuple[int, int] = (20, 20), limit: int = 4) -> str:
        """A picture of the block mask: █ computed, ░ partly, blank skipped."""
        dense = self.to_dense()
        *batch_dims, n_rows, n_cols = dense.shape
        if isinstance(grid_size, int):
            max_rows = max_cols = grid_size
        elif grid_size == -1:
            max_rows, max_cols = n_rows, n_cols
        else:
            max_rows, max_cols = grid_size
        row_step = max(1, -(-n_rows // max_rows))
        col_step = max(1, -(-n_cols // max_cols))
        pictures = []
        for i, idx in enumerate(itertools.product(*[range(d) for d in batch_dims])):
            if i == limit:
                pictures.append("...")
                pictures.append("To print out more, set BlockMask.to_string(limit=N)")
                pictures.append(
                    "You can also index (BlockMask[batch, head]) to choose a specific batch or head"
                )
                break
            grid = dense[idx]
            lines = [f"{idx}"]
            for r in range(0, n_rows, row_step):
                line = ""
                for c in range(0, n_cols, col_step):
                    frac = grid[r : r + row_step, c : c + col_step].float().mean().item()
                    line += ("█" if frac == 1 else " " if frac == 0 else "░") * 2
                lines.append(line)
            pictures.append("\n".join(lines) + "\n")
        return "\n".join(pictures)

    def __str__(self) -> str:
        return (
            f"BlockMask(shape={self.shape}, sparsity={self.sparsity():.2f}%, \n"
            f"{self.to_string().strip()}\n)"
        )

    def __repr__(self) -> str:
        def shape(x):
            return None if x is None else tuple(x.shape)

        name = getattr(self.mask_mod, "__name__", self.mask_mod)
        return (
            f"BlockMask(kv_num_blocks={shape(self.kv_num_blocks)}, "
            f"kv_indices={shape(self.kv_indices)}, "
            f"full_kv_num_blocks={shape(self.full_kv_num_blocks)}, "
            f"q_indices={shape(self.q_indices)}, BLOCK_SIZE={self.BLOCK_SIZE}, "
            f"shape={self.shape}, sparsity={self.sparsity():.2f}%, mask_mod={name})"
        )

    def to(self, device: str | torch.device) -> BlockMask:
        def move(x):
            return None if x is None else x.to(device)

        return BlockMask(
            self.seq_lengths,
            *(move(getattr(self, a)) for a in _TENSOR_ATTRS),
            BLOCK_SIZE=self.BLOCK_SIZE,
            mask_mod=self.mask_mod,
        )


def _sliced_mask_mod_error(b, h, q_idx, kv_idx):
    raise RuntimeError(
        "this BlockMask was indexed along its query blocks: its mask_mod no longer matches "
        "the positions; build a new BlockMask with create_block_mask"
    )


def _remap_batch_head(mask_mod: MaskMod, b_of: Tensor, h_of: Tensor, sizes) -> MaskMod:
    """mask_mod of an indexed BlockMask: new batch/head b, h -> the original b_of[b], h_of[h].

    A size-1 dim of the original mask broadcast over every batch/head: its mod is called
    with the caller's index unchanged there.
    """
    if sizes[0] == 1 and sizes[1] == 1:
        return mask_mod

    def indexed(b, h, q_idx, kv_idx):
        b = b if sizes[0] == 1 else b_of.to(b.device)[b]
        h = h if sizes[1] == 1 else h_of.to(h.device)[h]
        return mask_mod(b, h, q_idx, kv_idx)

    indexed.__name__ = getattr(mask_mod, "__name__", "mask") + "_indexed"
    return mark_broadcastable(indexed) if is_broadcastable(mask_mod) else indexed


_TENSOR_ATTRS = (
    "kv_num_blocks",
    "kv_indices",
    "full_kv_num_blocks",
    "full_kv_indices",
    "q_num_blocks",
    "q_indices",
    "full_q_num_blocks",
    "full_q_indices",
)


def create_block_mask(
    mask_mod: MaskMod,
    B: int | None,
    H: int | None,
    Q_LEN: int,
    KV_LEN: int,
    device: str | torch.device = "cpu",
    BLOCK_SIZE: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    _compile: bool = False,
    separate_full_blocks: bool = True,
) -> BlockMask:
    """Summarises `mask_mod` per (BLOCK_SIZE x BLOCK_SIZE) tile.

    A tile is *full* when mask_mod is True on all of it, *partial* when on some of it;
    positions past Q_LEN / KV_LEN count as masked (as in the reference), so edge tiles of
    lengths that are not multiples of the block size are partial.

    Args:
        mask_mod: `mask_mod(b, h, q_idx, kv_idx) -> bool`.
        B, H: Batch size and number of query heads; None broadcasts (size 1).
        Q_LEN, KV_LEN: Sequence lengths.
        device: Where the mask lives.
        BLOCK_SIZE: int or (Q_BLOCK_SIZE, KV_BLOCK_SIZE).
        _compile: Accepted for compatibility; ignored.
        separate_full_blocks: If False, every non-empty block is listed as partial.

    Returns:
        The BlockMask.
    """
    B, H = B or 1, H or 1
    qb, kb = (BLOCK_SIZE, BLOCK_SIZE) if isinstance(BLOCK_SIZE, int) else BLOCK_SIZE
    n_q, n_kv = -(-Q_LEN // qb), -(-KV_LEN // kb)
    # int32 positions, as the reference's generated kernels use: half the memory traffic.
    b = torch.arange(B, device=device, dtype=torch.int32)
    h = torch.arange(H, device=device, dtype=torch.int32)
    kv = torch.arange(KV_LEN, device=device, dtype=torch.int32)
    counts = torch.empty(B, H, n_q, n_kv, dtype=torch.int32, device=device)
    # Chunks of ~1M booleans stay in cache (4x faster than 32M-element chunks).
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // (qb * n_kv * kb))
    for start in range(0, n_q, rows_per_chunk):
        stop = min(n_q, start + rows_per_chunk)
        q = torch.arange(start * qb, min(stop * qb, Q_LEN), device=device, dtype=torch.int32)
        m = evaluate_mask(mask_mod, b, h, q, kv)
        Bm, Hm = m.shape[:2]  # 1 where mask_mod ignores b / h: counted once, broadcast
        m = m.expand(Bm, Hm, len(q), KV_LEN)
        m = F.pad(m.view(torch.uint8), (0, n_kv * kb - KV_LEN, 0, (stop - start) * qb - len(q)))
        m = m.reshape(Bm, Hm, stop - start, qb, n_kv, kb)  # (B, H, q blocks, qb, kv blocks, kb)
        per_row = m.sum(dim=5, dtype=torch.int16 if kb < 1 << 15 else torch.int32)
        counts[:, :, start:stop] = per_row.sum(dim=3, dtype=torch.int32)
    if separate_full_blocks:
        full = counts == qb * kb
        partial = (counts > 0) & ~full
        full_num, full_idx = _dense_to_ordered(full)
    else:
        partial = counts > 0
        full_num = full_idx = None
    num, idx = _dense_to_ordered(partial)
    return BlockMask.from_kv_blocks(
        num,
        idx,
        full_num,
        full_idx,
        BLOCK_SIZE=(qb, kb),
        mask_mod=mask_mod,
        seq_lengths=(Q_LEN, KV_LEN),
    )
