"""KV offload: the keys and values of a finished conversation turn, kept on disk for the next.

When a request with a `conversation_id` finishes, the K/V of its prompt and output (every
layer) is written to `<dir>/<sha1(conversation_id)>.safetensors` with the token ids, their
checksum and a checksum of the tensor bytes in the file's metadata. The next request of the
same conversation gets back the K/V of the longest prefix its prompt shares with the saved
tokens instead of prefilling it. The folder is bounded by `max_bytes`; the least recently
used files go first. A file that is missing, truncated, corrupt, for another model, or
whose tokens do not match is dropped and the request recomputes: `load` returns None, never
wrong data.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

SUFFIX = ".safetensors"


def _digest(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tokens_digest(token_ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(token_ids).encode()).hexdigest()


@dataclass
class Entry:
    path: Path
    token_ids: list[int]
    nbytes: int


class OffloadStore:
    """An LRU-bounded folder of saved conversation turns.

    Args:
        directory: where the files go (created if missing; files already there are reused).
        max_bytes: total size of the files kept.
        fingerprint: what the KV belongs to (layers, heads, head_dim, dtype, model digest);
            files with another fingerprint are never loaded.
    """

    def __init__(self, directory: str | os.PathLike, max_bytes: int, fingerprint: str) -> None:
        if max_bytes <= 0:
            raise ValueError(f"offload_max_bytes must be positive, got {max_bytes}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.fingerprint = max_bytes, fingerprint
        self.lock = threading.Lock()
        self.index: OrderedDict[str, Entry] = OrderedDict()  # conversation -> entry, LRU first
        self.hits = self.misses = self.saves = self.evictions = 0
        self._scan()

    def _scan(self) -> None:
        from safetensors import safe_open

        found = []
        for path in self.dir.glob("*" + SUFFIX):
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                if meta.get("fingerprint") != self.fingerprint:
                    continue
                tokens = json.loads(meta["token_ids"])
                found.append((path.stat().st_mtime, meta["conversation_id"], path, tokens))
            except Exception:  # unreadable: not ours to trust; recompute if ever needed
                continue
        for _, conv, path, tokens in sorted(found, key=lambda f: f[0]):
            self.index[conv] = Entry(path, tokens, path.stat().st_size)

    def path_of(self, conversation_id: str) -> Path:
        return self.dir / (hashlib.sha1(conversation_id.encode()).hexdigest() + SUFFIX)

    def total_bytes(self) -> int:
        with self.lock:
            return sum(e.nbytes for e in self.index.values())

    def save(self, conversation_id: str, token_ids: list[int], k: Tensor, v: Tensor) -> bool:
        """Write one turn: k, v (n_layer, len(token_ids), H_kv, D). False if it cannot fit."""
        from safetensors.torch import save_file

        if k.shape[1] != len(token_ids) or k.shape != v.shape:
            raise ValueError(
                f"K/V shapes {tuple(k.shape)}, {tuple(v.shape)} for {len(token_ids)} tokens"
            )
        k, v = k.contiguous(), v.contiguous()
        meta = {
            "conversation_id": conversation_id,
            "fingerprint": self.fingerprint,
            "token_ids": json.dumps(token_ids),
            "tokens_sha256": _tokens_digest(token_ids),
            "kv_sha256": _digest(k, v),
        }
        nbytes_guess = (k.numel() + v.numel()) * k.element_size()
        if nbytes_guess > self.max_bytes:
            return False
        path = self.path_of(conversation_id)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
        save_file({"k": k, "v": v}, str(tmp), metadata=meta)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
        with self.lock:
            self.index.pop(conversation_id, None)
            self.index[conversation_id] = Entry(path, list(token_ids), path.stat().st_size)
            self.saves += 1
            self._evict()
        return True

    def _evict(self) -> None:
        while self.index and sum(e.nbytes for e in self.index.values()) > self.max_bytes:
            _, entry = self.index.popitem(last=False)
            entry.path.unlink(missing_ok=True)
            self.evictions += 1

    def lookup(self, conversation_id: str, prompt_ids: list[int], align: int = 1) -> int:
        """How many leading prompt tokens a saved turn covers: the longest common prefix of
        the saved tokens and the prompt, rounded down to a multiple of `align` (0: none).

        A second turn whose earlier reply was cut at a stop string or re-tokenised by the
        chat template still gets back everything before the first token that differs: the
        K/V of a position depends only on the tokens up to it.
        """
        with self.lock:
            entry = self.index.get(conversation_id)
        if entry is None:
            return 0
        n = 0
        for a, b in zip(entry.token_ids, prompt_ids):
            if a != b:
                break
            n += 1
        return n - n % align

    def load(
        self, conversation_id: str, prompt_ids: list[int], n: int
    ) -> tuple[Tensor, Tensor] | None:
        """K/V (n_layer, n, H_kv, D) of the first n tokens, or None (entry dropped) when the
        file is missing or fails any check."""
        from safetensors import safe_open

        with self.lock:
            entry = self.index.get(conversation_id)
            if entry is not None:
                self.index.move_to_end(conversation_id)
        if entry is None:
            return None
        try:
            with safe_open(str(entry.path), framework="pt") as f:
                meta = f.metadata() or {}
                k, v = f.get_tensor("k"), f.get_tensor("v")
            tokens = json.loads(meta["token_ids"])
            ok = (
                meta.get("fingerprint") == self.fingerprint
                and meta.get("conversation_id") == conversation_id
                and meta.get("tokens_sha256") == _tokens_digest(tokens)
                and len(tokens) == k.shape[1] >= n
                and tokens[:n] == list(prompt_ids[:n])
                and k.shape == v.shape
                and meta.get("kv_sha256") == _digest(k, v)
            )
        except Exception:  # missing, truncated, not safetensors, bad metadata
            ok = False
        if not ok:
            self.drop(conversation_id)
            return None
        return k[:, :n], v[:, :n]

    def drop(self, conversation_id: str) -> None:
        with self.lock:
            entry = self.index.pop(conversation_id, None)
        if entry is not None:
            entry.path.unlink(missing_ok=True)
