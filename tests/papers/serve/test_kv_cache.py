"""Block allocator and prefix cache: refcounts, free list, LRU eviction, hash chains."""

import hashlib
import struct

import pytest
import torch

from minirepro.papers.serve.kv_cache import (
    BlockManager,
    PagedKVCache,
    block_key,
    hash_chain,
    root_key,
)

ROOT = root_key()


def test_allocate_release_refcounts():
    bm = BlockManager(4, block_size=2)
    a = bm.allocate(3)
    assert len(set(a)) == 3 and bm.num_available() == 1 and bm.num_used() == 3
    assert all(bm.refcount[b] == 1 for b in a)
    with pytest.raises(MemoryError, match="asked for 2 KV blocks, 1 available"):
        bm.allocate(2)
    bm.release(a)
    assert bm.num_available() == 4
    bm.check()
    with pytest.raises(RuntimeError, match="released more often"):
        bm.release([a[0]])


def test_hash_chain_is_sha256_over_parent_and_tokens():
    keys = hash_chain([1, 2, 3, 4, 5], 2, ROOT)
    assert len(keys) == 2  # the partial last block has no name
    # written out here from hashlib, not from the module's helper
    first = hashlib.sha256(ROOT + struct.pack("<Q2q", 2, 1, 2)).digest()
    assert (
        keys[0] == first
        and keys[1] == hashlib.sha256(first + struct.pack("<Q2q", 2, 3, 4)).digest()
    )
    other = hash_chain([9, 9, 3, 4], 2, ROOT)
    assert other[1] != keys[1]  # same tokens, other prefix
    assert hash_chain([1, 2, 3, 4], 2, keys[0], start=1) == keys[1:]
    assert hash_chain([1, 2, 3, 4, 5, 6], 2, ROOT, stop=2) == keys
    # the root is the model's identity: another model's blocks never match
    assert hash_chain([1, 2], 2, root_key("model-b")) != hash_chain([1, 2], 2, root_key("model-a"))
    # token lists that Python's hash() maps alike stay apart (hash(-1) == hash(-2))
    assert hash((0, (-1,))) == hash((0, (-2,)))
    assert block_key(ROOT, [-1]) != block_key(ROOT, [-2])
    with pytest.raises(ValueError, match="32-byte digest"):
        block_key(b"short", [1])


def test_prefix_cache_share_release_reuse():
    bm = BlockManager(6, block_size=2)
    tokens = [5, 6, 7, 8, 9]
    keys = hash_chain(tokens, 2, ROOT)
    blocks = bm.allocate(3)
    for b, k in zip(blocks, keys):
        bm.register(b, k)
    # a second sequence with the same prefix shares both full blocks
    shared = bm.match(hash_chain([5, 6, 7, 8, 1, 1], 2, ROOT))
    assert shared == blocks[:2] and [bm.refcount[b] for b in blocks] == [2, 2, 1]
    bm.release(blocks)
    assert [bm.refcount[b] for b in blocks] == [1, 1, 0]
    assert blocks[2] in bm.free  # unnamed block: back to the free list
    bm.release(shared)
    assert list(bm.evictable) == [blocks[1], blocks[0]]  # tail released first
    assert bm.num_available() == 6
    bm.check()
    # named blocks come back from the evictable list with their contents
    again = bm.match(keys)
    assert again == blocks[:2] and not bm.evictable
    bm.release(again)
    # a different prefix does not match
    assert bm.match(hash_chain([5, 7, 7, 8], 2, ROOT)) == []
    bm.check()


def test_lru_eviction_order():
    bm = BlockManager(3, block_size=1)
    named = []
    for t in range(3):
        (b,) = bm.allocate(1)
        key = block_key(ROOT, (t,))
        bm.register(b, key)
        bm.release([b])
        named.append((b, key))
    assert bm.num_available() == 3 and not bm.free
    bm.release(bm.match([named[0][1]]))  # touch token 0: now most recently used
    (b,) = bm.allocate(1)
    assert b == named[1][0]  # least recently used is evicted first
    assert named[1][1] not in bm.cached and bm.num_evictions == 1
    assert bm.match([named[1][1]]) == []
    assert bm.match([named[0][1]]) == [named[0][0]]
    bm.check()


def test_register_duplicate_and_disabled():
    bm = BlockManager(4, block_size=2)
    key = block_key(ROOT, (1, 2))
    a, b = bm.allocate(2)
    bm.register(a, key)
    bm.register(b, key)  # same tokens already cached elsewhere: b stays unnamed
    assert bm.cached[key] == a and bm.key_of[b] is None
    bm.release([a, b])
    assert b in bm.free and a in bm.evictable
    off = BlockManager(4, block_size=2, enable_prefix_caching=False)
    (c,) = off.allocate(1)
    off.register(c, key)
    off.release([c])
    assert off.match([key]) == [] and off.num_available() == 4
    bm.reset_prefix_cache()
    assert not bm.cached and bm.num_available() == 4
    bm.check()


def test_bad_pool_sizes():
    with pytest.raises(ValueError, match="num_blocks and block_size"):
        BlockManager(0, 16)


def test_paged_cache_read_write_roundtrip():
    cache = PagedKVCache(n_layer=2, num_blocks=5, block_size=4, n_kv_head=3, head_dim=8)
    slots = torch.tensor([17, 2, 9, 0])
    k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3, 8)
    cache.write(slots, k, v)
    k2, v2 = cache.read(slots)
    torch.testing.assert_close(k2, k, rtol=0, atol=0)
    torch.testing.assert_close(v2, v, rtol=0, atol=0)
    # slot 9 is block 2, offset 1
    torch.testing.assert_close(cache.k[1][2, 1], k[1, 2], rtol=0, atol=0)
    assert cache.bytes_per_token() == 2 * 2 * 3 * 8 * 4
