"""Paged attention: one physical KV cache shared by all sequences, indexed by a page table.

Each sequence's keys live in pages of `page_size` positions scattered over the cache;
`page_table[b, logical_page] = physical_page` (-1: none). `reserve` gives a sequence enough
pages for a length, `erase` returns them, `assign` writes new keys and values through the
table. `convert_logical_block_mask` rewrites a BlockMask built for the logical (contiguous)
layout into one over the physical cache (page_size == the key block size), with a mask_mod
that maps physical positions back to logical ones — so FlexAttention runs on the cache
directly, no gather into contiguous memory. The attention-gym design, with the paper's
claim that it costs little. The physical lists keep the logical order of key blocks, so
the streaming CPU strategy visits them in the same order as for the contiguous layout.
A listed logical block with no reserved page is dropped (attention-gym clamps it to page
0, where a full block would read another sequence's keys).
"""

from __future__ import annotations

import torch
from torch import Tensor

from minirepro.papers.flexattn.block_mask import BlockMask
from minirepro.papers.flexattn.masks import MaskMod
from minirepro.papers.flexattn.mods import is_broadcastable, mark_broadcastable

__all__ = ["PagedAttention"]


class PagedAttention:
    """Page table over a cache of `n_pages` pages of `page_size` positions.

    Args:
        n_pages: Physical pages in the cache.
        page_size: Positions per page; must equal the BlockMask's key block size.
        max_batch_size: Sequences tracked at once.
    """

    def __init__(self, n_pages: int, page_size: int, max_batch_size: int) -> None:
        self.n_pages, self.page_size = n_pages, page_size
        self.page_table = torch.full((max_batch_size, n_pages), -1, dtype=torch.long)
        self.physical_to_logical = torch.full((max_batch_size, n_pages), -1, dtype=torch.long)
        self.capacity = torch.zeros(max_batch_size, dtype=torch.long)  # positions reserved
        self.empty_pages = list(range(n_pages - 1, -1, -1))  # a stack, lowest page on top

    def reserve(self, batch_idx: int, seq_len: int) -> None:
        """Gives sequence `batch_idx` pages until it can hold `seq_len` positions."""
        if seq_len <= self.capacity[batch_idx]:
            return
        have = int(self.capacity[batch_idx]) // self.page_size
        need = -(-seq_len // self.page_size) - have
        if need > len(self.empty_pages):
            raise RuntimeError(
                f"cannot reserve {need} pages for sequence {batch_idx}: "
                f"{len(self.empty_pages)} free of {self.n_pages}"
            )
        for logical in range(have, have + need):
            physical = self.empty_pages.pop()
            self.page_table[batch_idx, logical] = physical
            self.physical_to_logical[batch_idx, physical] = logical
        self.capacity[batch_idx] += need * self.page_size

    def erase(self, batch_idx: int) -> None:
        """Frees every page of sequence `batch_idx`."""
        pages = self.page_table[batch_idx]
        for physical in pages[pages >= 0].tolist():
            self.empty_pages.append(physical)
            self.physical_to_logical[batch_idx, physical] = -1
        self.page_table[batch_idx] = -1
        self.capacity[batch_idx] = 0

    def physical_positions(self, batch_idx: Tensor, input_pos: Tensor) -> Tensor:
        """Cache positions of logical positions `input_pos` (B, S) of sequences `batch_idx` (B,)."""
        logical_page = input_pos // self.page_size
        physical_page = torch.gather(self.page_table[batch_idx], 1, logical_page)
        if (physical_page < 0).any():
            raise RuntimeError("a position was assigned without a reserved page; call reserve")
        return physical_page * self.page_size + input_pos % self.page_size

    def assign(
        self,
        batch_idx: Tensor,
        input_pos: Tensor,
        k_val: Tensor,
        v_val: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
    ) -> None:
        """Writes k_val, v_val (B, H, S, D) at logical positions input_pos (B, S).

        k_cache, v_cache: (1, H, n_pages * page_size, D), written in place.
        """
        pos = self.physical_positions(batch_idx, input_pos)  # (B, S)
        for b in range(pos.shape[0]):
            k_cache[0, :, pos[b]] = k_val[b]
            v_cache[0, :, pos[b]] = v_val[b]

    def get_mask_mod(
        self, mask_mod: MaskMod, kv_len: int | None = None, batch_idx: Tensor | None = None
    ) -> MaskMod:
        """mask_mod over physical key positions: maps them to logical ones (False if none).

        Batch row b of the mask is sequence `batch_idx[b]` (b itself by default).
        """
        page_size, to_logical = self.page_size, self.physical_to_logical
        if batch_idx is not None:
            to_logical = to_logical[batch_idx]

        def paged_mask(b: Tensor, h: Tensor, q_idx: Tensor, physical_kv_idx: Tensor) -> Tensor:
            logical_page = to_logical[b, physical_kv_idx // page_size]
            logical_kv = logical_page * page_size + physical_kv_idx % page_size
            ok = logical_page >= 0
            if kv_len is not None:
                ok = ok & (logical_kv < kv_len)
            return ok & mask_mod(b, h, q_idx, logical_kv.clamp(min=0))

        paged_mask.__name__ = f"paged_{getattr(mask_mod, '__name__', 'mask')}"
        return mark_broadcastable(paged_mask) if is_broadcastable(mask_mod) else paged_mask

    def convert_logical_block_mask(
        self, block_mask: BlockMask, batch_idx: Tensor | None = None
    ) -> BlockMask:
        """The BlockMask over the physical cache of a BlockMask over logical positions.

        Args:
            block_mask: Built for (B or 1, H or 1, Q_LEN, KV_LEN) in logical positions, with
                key block size == page_size.
            batch_idx: Sequence of each batch row; arange(B) by default.
        """
        if block_mask.BLOCK_SIZE[1] != self.page_size:
            raise ValueError(
                f"key block size {block_mask.BLOCK_SIZE[1]} must equal page_size {self.page_size}"
            )
        B = self.page_table.shape[0] if batch_idx is None else len(batch_idx)
        if batch_idx is None:
            batch_idx = torch.arange(B)
        table = self.page_table[batch_idx]  # (B, n_pages)

        def to_physical(num: Tensor | None, idx: Tensor | None):
            """Logical block lists -> physical ones, blocks without a reserved page dropped.

            A listed logical block whose page is not reserved holds none of this
            sequence's keys: reading any page in its place (a full block skips mask_mod)
            would show it another sequence's keys, so it is left out of the lists.
            """
            if num is None:
                return None, None
            H, rows, cols = idx.shape[1:]
            num, logical = num.expand(B, H, rows), idx.expand(B, H, rows, cols).long()
            physical = torch.gather(table, 1, logical.reshape(B, -1)).view(B, H, rows, cols)
            listed = torch.arange(cols) < num[..., None]
            keep = listed & (physical >= 0)
            order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)  # kept first
            physical = torch.gather(physical.clamp(min=0), -1, order)
            out = torch.zeros(B, H, rows, self.n_pages, dtype=torch.int32)
            out[..., :cols] = physical.to(torch.int32)
            return keep.sum(-1, dtype=torch.int32), out

        num, idx = to_physical(block_mask.kv_num_blocks, block_mask.kv_indices)
        fnum, fidx = to_physical(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
        return BlockMask.from_kv_blocks(
            num,
            idx,
            fnum,
            fidx,
            BLOCK_SIZE=block_mask.BLOCK_SIZE,
            mask_mod=self.get_mask_mod(block_mask.mask_mod, block_mask.seq_lengths[1], batch_idx),
            seq_lengths=(block_mask.seq_lengths[0], self.n_pages * self.page_size),
        )
