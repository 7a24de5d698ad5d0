"""Paged KV cache: a pool of fixed-size blocks per layer, a free list, reference counts,
and automatic prefix caching over full blocks.

A sequence's keys and values live in the blocks its block table lists, in order: position p
sits in block `table[p // block_size]` at offset `p % block_size`. A full block is named by
a sha256 hash chain (the digest of the block before it, or the root digest of the model's
identity, and the block's own tokens), so two sequences that share a prefix share its
blocks, and nobody can craft a prompt whose name matches another prompt's blocks (Python's
`hash()` over token tuples could be made to collide: vLLM's CVE-2025-25183). A block nobody
references keeps its contents and its name while it waits, least recently used first, to be
handed out again: a later request with the same prefix takes it back instead of recomputing
it.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

BlockKey = bytes  # a sha256 digest


def root_key(identity: str = "") -> BlockKey:
    """The chain's root: the digest of what the KV belongs to (model, dtype, adapter), so
    blocks computed by another model never match."""
    return hashlib.sha256(b"minirepro-kv-root\0" + identity.encode()).digest()


def block_key(parent: BlockKey, tokens: Sequence[int]) -> BlockKey:
    """Name of a full block: sha256 over the parent block's name and the block's tokens
    (each as 8 little-endian bytes, after their count, so no two token lists share bytes)."""
    if len(parent) != 32:
        raise ValueError(f"parent must be a 32-byte digest, got {len(parent)} bytes")
    h = hashlib.sha256(parent)
    h.update(struct.pack(f"<Q{len(tokens)}q", len(tokens), *tokens))
    return h.digest()


def hash_chain(
    token_ids: Sequence[int],
    block_size: int,
    parent: BlockKey,
    start: int = 0,
    stop: int | None = None,
) -> list[BlockKey]:
    """Names of the full blocks `start .. stop-1` of token_ids (stop: all full blocks).

    Args:
        token_ids: the sequence's tokens.
        block_size: tokens per block.
        parent: the name of block `start - 1`, or `root_key(identity)` when start is 0.
        start: first block to name.
        stop: one past the last block to name; at most the number of full blocks.
    """
    full = len(token_ids) // block_size
    stop = full if stop is None else min(stop, full)
    keys = []
    for b in range(start, stop):
        parent = block_key(parent, token_ids[b * block_size : (b + 1) * block_size])
        keys.append(parent)
    return keys


class PagedKVCache:
    """Key and value blocks of every layer: n_layer tensors (num_blocks, block_size, H_kv, D).

    `k_flat[layer]` / `v_flat[layer]` view the same memory as (num_blocks * block_size, H_kv, D),
    indexed by slot = block * block_size + offset.
    """

    def __init__(
        self,
        n_layer: int,
        num_blocks: int,
        block_size: int,
        n_kv_head: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (num_blocks, block_size, n_kv_head, head_dim)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        flat = (num_blocks * block_size, n_kv_head, head_dim)
        self.k_flat = [t.view(flat) for t in self.k]
        self.v_flat = [t.view(flat) for t in self.v]

    def bytes_per_token(self) -> int:
        t = self.k[0]
        return 2 * len(self.k) * t.shape[2] * t.shape[3] * t.element_size()

    def read(self, slots: Tensor) -> tuple[Tensor, Tensor]:
        """K and V of the given slots in every layer: (n_layer, len(slots), H_kv, D) each."""
        k = torch.stack([t.index_select(0, slots) for t in self.k_flat])
        v = torch.stack([t.index_select(0, slots) for t in self.v_flat])
        return k, v

    def write(self, slots: Tensor, k: Tensor, v: Tensor) -> None:
        """Store k, v (n_layer, len(slots), H_kv, D) at the given slots of every layer."""
        for layer in range(len(self.k)):
            self.k_flat[layer].index_copy_(0, slots, k[layer].to(self.k_flat[layer].dtype))
            self.v_flat[layer].index_copy_(0, slots, v[layer].to(self.v_flat[layer].dtype))


class BlockManager:
    """Free list, reference counts and the prefix cache of a pool of `num_blocks` blocks.

    `identity` names what the KV belongs to (see `root_key`).

    A block is in exactly one of three states: free (in `free`), in use (refcount > 0), or
    cached (refcount 0, still named by a key, in the LRU `evictable`). `allocate` takes free
    blocks first, then evicts the least recently used cached ones.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        identity: str = "",
    ):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"num_blocks and block_size must be >= 1, got {num_blocks}, {block_size}"
            )
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.root = root_key(identity)  # parent of every sequence's first block
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() hands out 0 first
        self.refcount = [0] * num_blocks
        self.key_of: list[BlockKey | None] = [None] * num_blocks
        self.cached: dict[BlockKey, int] = {}  # key -> block holding those tokens
        self.evictable: OrderedDict[int, None] = OrderedDict()  # LRU first
        self.num_evictions = 0

    # -- counts
    def num_available(self) -> int:
        """Blocks `allocate` can hand out now (free + evictable)."""
        return len(self.free) + len(self.evictable)

    def num_used(self) -> int:
        return self.num_blocks - self.num_available()

    # -- allocation
    def allocate(self, n: int) -> list[int]:
        """n blocks with refcount 1; raises MemoryError if fewer are available."""
        if n > self.num_available():
            raise MemoryError(f"asked for {n} KV blocks, {self.num_available()} available")
        out = []
        for _ in range(n):
            if self.free:
                block = self.free.pop()
            else:
                block, _ = self.evictable.popitem(last=False)  # least recently used
                del self.cached[self.key_of[block]]
                self.key_of[block] = None
                self.num_evictions += 1
            self.refcount[block] = 1
            out.append(block)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block; the last blocks of a sequence go first, so a
        shared prefix (its first blocks) stays cached the longest."""
        for block in reversed(blocks):
            if self.refcount[block] <= 0:
                raise RuntimeError(f"block {block} released more often than taken")
            self.refcount[block] -= 1
            if self.refcount[block] == 0:
                if self.key_of[block] is not None:
                    self.evictable[block] = None  # most recently used end
                else:
                    self.free.append(block)

    # -- prefix cache
    def match(self, keys: Sequence[BlockKey]) -> list[int]:
        """Blocks holding the longest cached run of `keys` (a hash chain), each taken once."""
        if not self.enable_prefix_caching:
            return []
        out = []
        for key in keys:
            block = self.cached.get(key)
            if block is None:
                break
            if self.refcount[block] == 0:
                del self.evictable[block]
            self.refcount[block] += 1
            out.append(block)
        return out

    def register(self, block: int, key: BlockKey) -> None:
        """Name a full block by its key so later sequences can share it.

        If another block already holds the same tokens, this one stays unnamed (it is freed
        normally when released)."""
        if not self.enable_prefix_caching or key in self.cached:
            return
        if self.key_of[block] is not None:
            raise RuntimeError(f"block {block} is already named")
        self.cached[key] = block
        self.key_of[block] = key

    def reset_prefix_cache(self) -> None:
        """Forget every cached block (in-use blocks keep their data, lose their names)."""
        for block in list(self.evictable):
            self.free.append(block)
        self.evictable.clear()
        for block in self.cached.values():
            self.key_of[block] = None
        self.cached.clear()

    def check(self) -> None:
        """Assert the invariants (tests call this)."""
        free, evict = set(self.free), set(self.evictable)
        assert len(free) == len(self.free), "block listed twice in the free list"
        assert not free & evict, "block both free and cached"
        for b in range(self.num_blocks):
            if b in free:
                assert self.refcount[b] == 0 and self.key_of[b] is None
            elif b in evict:
                assert self.refcount[b] == 0 and self.key_of[b] is not None
            else:
                assert self.refcount[b] > 0, f"block {b} leaked"
        for key, b in self.cached.items():
            assert self.key_of[b] == key
