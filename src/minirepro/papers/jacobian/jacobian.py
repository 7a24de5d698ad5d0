"""The training Jacobian d(theta_final)/d(theta_init) by forward mode, checkpointed per chunk.

`training_jacobian(train_fn, theta0)` works for any pure function `train_fn: (P,) -> (Q,)`
(a whole training run, a few steps, or anything else): it pushes chunks of basis tangent
vectors through `train_fn` with `torch.func.jvp` under `torch.func.vmap`, so one chunk costs
one batched "training run" whose batch dimension is the tangent. Each finished chunk is saved
to a checkpoint folder, and a call with the same folder resumes after the last saved chunk.

`svd64` returns the float64 SVD used by every experiment.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import Executor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.func import jvp, vmap

from minirepro.core.threads import process_pool

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "SVD",
    "chunk_size_for",
    "process_pool",
    "push_tangents",
    "svd64",
    "training_jacobian",
]

DEFAULT_MEMORY_BUDGET = 1 << 30  # 1 GiB of tangent state per chunk
# Measured on 2 CPU cores (width-64 MLP, float32): time per tangent falls until ~1500
# tangents per chunk and rises 4x past ~2000 (working set out of cache), so cap the chunk.
MAX_CHUNK = 1536


def chunk_size_for(
    n_in: int, bytes_per_tangent: int, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> int:
    """Tangents per chunk: as many as `memory_budget` holds, at least 1, at most `MAX_CHUNK`.

    Args:
        n_in: Number of input parameters (the Jacobian's columns).
        bytes_per_tangent: Memory one tangent needs while it is pushed through `train_fn`.
        memory_budget: Bytes available for one chunk.
    """
    return max(1, min(n_in, MAX_CHUNK, memory_budget // max(1, bytes_per_tangent)))


def _fingerprint(theta0: torch.Tensor, n_out: int, chunk: int, tag: str) -> str:
    h = hashlib.sha256()
    h.update(theta0.detach().cpu().contiguous().numpy().tobytes())
    h.update(f"{theta0.dtype}|{theta0.numel()}|{n_out}|{chunk}|{tag}".encode())
    return h.hexdigest()[:16]


def _save_atomic(tensor: torch.Tensor, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(tensor, tmp)
    os.replace(tmp, path)  # a chunk file is either complete or absent


Pushforward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def push_tangents(
    train_fn: Callable[[torch.Tensor], torch.Tensor],
    theta0: torch.Tensor,
    start: int,
    stop: int,
    pushforward: Pushforward | None = None,
) -> torch.Tensor:
    """Columns `start:stop` of the Jacobian, as rows: (stop - start, Q).

    Pushes the basis tangents e_start, ..., e_{stop-1} through `train_fn`: with one `vmap`
    of `jvp`, or with `pushforward(theta0, tangents)` when given. A module-level function
    so that worker processes can run it.
    """
    n_in = theta0.numel()
    eye = torch.zeros(stop - start, n_in, dtype=theta0.dtype)  # (C, P) basis tangents
    eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
    with torch.no_grad():
        if pushforward is not None:
            out = pushforward(theta0, eye)
        else:
            out = vmap(lambda t: jvp(train_fn, (theta0,), (t,))[1])(eye)
    return out.reshape(stop - start, -1)  # (C, Q)


def training_jacobian(
    train_fn: Callable[[torch.Tensor], torch.Tensor],
    theta0: torch.Tensor,
    *,
    chunk_size: int | None = None,
    bytes_per_tangent: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    tag: str = "",
    on_chunk: Callable[[int, int], None] | None = None,
    executor: Executor | None = None,
    pushforward: Pushforward | None = None,
) -> torch.Tensor:
    """The Jacobian of `train_fn` at `theta0` by forward mode over chunks of tangents.

    Args:
        train_fn: Pure function (P,) -> (Q,), e.g. a whole training run; it must work under
            `torch.func.jvp` and `vmap`.
        theta0: (P,) point of differentiation; its dtype is the dtype of the computation.
        chunk_size: Tangents per `vmap` call; default from `bytes_per_tangent` and
            `memory_budget` (see `chunk_size_for`), split further so that every worker of
            `executor` gets at least two chunks.
        bytes_per_tangent: Memory per tangent; default `16 * (P + Q) * itemsize`, a rough
            guess for an optimizer state plus a few activations. Pass a better one when known.
        memory_budget: Bytes one chunk may use (per worker).
        checkpoint_dir: Folder for finished chunks (`chunk_00000.pt`, ...) and `meta.json`.
            A call with a folder holding chunks of the same computation resumes from them.
        tag: Text identifying `train_fn` and its data in the checkpoint fingerprint (the
            function itself cannot be hashed); different runs sharing a folder must differ.
        on_chunk: Called as `on_chunk(i, n_chunks)` after chunk `i` is done (and saved),
            in completion order.
        executor: Optional `concurrent.futures` executor (e.g. `process_pool(2)`) that
            computes chunks in parallel; `train_fn` must then pickle.
        pushforward: Optional `pushforward(theta0, tangents (C, P)) -> (C, Q)` computing
            the same Jacobian-vector products faster for a known `train_fn` (e.g.
            `fast.MLPPushforward`); default `vmap(jvp(train_fn))`.

    Returns:
        (Q, P) Jacobian `J[a, b] = d train_fn(theta0)[a] / d theta0[b]`, dtype of theta0.

    Raises:
        ValueError: `checkpoint_dir` holds chunks of a different computation.
    """
    theta0 = theta0.detach()
    n_in = theta0.numel()
    # Q from one plain call (cheap next to the Jacobian, and needed for the memory guess).
    with torch.no_grad():
        n_out = train_fn(theta0).numel()
    if chunk_size is None:
        itemsize = theta0.element_size()
        per_tangent = bytes_per_tangent or 16 * (n_in + n_out) * itemsize
        chunk_size = chunk_size_for(n_in, per_tangent, memory_budget)
        workers = getattr(executor, "_max_workers", 1) if executor is not None else 1
        chunk_size = min(chunk_size, -(-n_in // (2 * workers)))  # balance the workers
    starts = list(range(0, n_in, chunk_size))
    bounds = [(a, min(a + chunk_size, n_in)) for a in starts]

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None:
        _check_meta(folder, theta0, n_in, n_out, chunk_size, len(starts), tag)
    paths = [folder / f"chunk_{i:05d}.pt" if folder else None for i in range(len(starts))]

    blocks: list[torch.Tensor | None] = [None] * len(starts)

    def finish(i: int, block: torch.Tensor, saved: bool) -> None:
        if paths[i] is not None and not saved:
            _save_atomic(block, paths[i])
        blocks[i] = block
        if on_chunk is not None:
            on_chunk(i, len(starts))

    todo = []
    for i, path in enumerate(paths):
        if path is not None and path.exists():
            finish(i, torch.load(path), saved=True)
        else:
            todo.append(i)
    if executor is None:
        for i in todo:
            finish(i, push_tangents(train_fn, theta0, *bounds[i], pushforward), saved=False)
    else:
        futures = {
            executor.submit(push_tangents, train_fn, theta0, *bounds[i], pushforward): i
            for i in todo
        }
        try:
            for fut in as_completed(futures):
                finish(futures[fut], fut.result(), saved=False)
        finally:
            for fut in futures:
                fut.cancel()
    return torch.cat(blocks).T.contiguous()  # (Q, P); row b of J.T is column J[:, b]


def _check_meta(
    folder: Path, theta0: torch.Tensor, n_in: int, n_out: int, chunk: int, n_chunks: int, tag: str
) -> None:
    """Writes meta.json in a new folder, or checks that an existing one matches."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "fingerprint": _fingerprint(theta0, n_out, chunk, tag),
        "n_in": n_in,
        "n_out": n_out,
        "chunk_size": chunk,
        "n_chunks": n_chunks,
        "dtype": str(theta0.dtype),
        "tag": tag,
    }
    meta_path = folder / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old.get("fingerprint") != meta["fingerprint"]:
            raise ValueError(
                f"{folder} holds chunks of another computation (meta {old}); "
                "use a fresh folder or delete it"
            )
    else:
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")


@dataclass(frozen=True)
class SVD:
    """`J = U @ diag(S) @ Vh` in float64, singular values descending.

    Attributes:
        U: (Q, K) left singular vectors (columns).
        S: (K,) singular values.
        Vh: (K, P) right singular vectors (rows).
    """

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor


def svd64(jac: torch.Tensor) -> SVD:
    """Thin SVD of `jac` computed in float64."""
    u, s, vh = torch.linalg.svd(jac.to(torch.float64), full_matrices=False)
    return SVD(u, s, vh)
