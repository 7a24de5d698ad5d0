"""A dataset of trimesh primitives under random transforms, and its training batches.

Eight primitive kinds (box, cylinder, cone, icosphere, UV sphere, capsule, torus, annulus)
at random resolutions, each rotated by a uniformly random rotation (angles in radians; the
community Meshtron passed degrees where radians were expected) and scaled anisotropically,
kept when the tokenised mesh has 20-300 faces. Every mesh carries a point cloud sampled
from its normalised surface (the condition) and its face count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from torch import Tensor

from minirepro.papers.meshtron.conditioning import sample_points
from minirepro.papers.meshtron.tokenizer import MeshTokenizer, dequantize, load_mesh

__all__ = [
    "PRIMITIVES",
    "MeshDataset",
    "MeshExample",
    "dataset_from_meshes",
    "face_windows",
    "full_batch",
    "make_dataset",
    "make_primitive",
    "mesh_example",
    "random_transform",
]

PRIMITIVES = ("box", "cylinder", "cone", "icosphere", "uv_sphere", "capsule", "torus", "annulus")


def make_primitive(kind: str, rng: np.random.Generator) -> trimesh.Trimesh:
    """A primitive of `kind` at a random resolution (about 12-400 faces)."""
    c = trimesh.creation
    if kind == "box":
        mesh = c.box()
        for _ in range(int(rng.integers(1, 3))):
            mesh = mesh.subdivide()
        return mesh
    if kind == "cylinder":
        return c.cylinder(radius=0.5, height=1.0, sections=int(rng.integers(5, 40)))
    if kind == "cone":
        return c.cone(radius=0.5, height=1.0, sections=int(rng.integers(10, 80)))
    if kind == "icosphere":
        return c.icosphere(subdivisions=1)
    if kind == "uv_sphere":
        return c.uv_sphere(count=[int(rng.integers(4, 12)), int(rng.integers(4, 12))])
    if kind == "capsule":
        return c.capsule(height=1.0, radius=0.4, count=[int(rng.integers(4, 10))] * 2)
    if kind == "torus":
        return c.torus(1.0, 0.35, major_sections=int(rng.integers(5, 16)),
                       minor_sections=int(rng.integers(3, 9)))  # fmt: skip
    if kind == "annulus":
        return c.annulus(0.4, 1.0, 0.5, sections=int(rng.integers(5, 30)))
    raise ValueError(f"unknown primitive {kind!r}; known: {', '.join(PRIMITIVES)}")


def random_transform(mesh: trimesh.Trimesh, rng: np.random.Generator) -> trimesh.Trimesh:
    """A uniformly random rotation (radians) and per-axis scales in [0.5, 1.5]."""
    m = mesh.copy()
    rot = trimesh.transformations.random_rotation_matrix(rng.random(3))
    scale = np.diag(np.r_[rng.uniform(0.5, 1.5, 3), 1.0])
    m.apply_transform(rot @ scale)
    return m


@dataclass
class MeshExample:
    """One training mesh: tokens (2 + 9F,), points (N, 3) float32, faces F, its kind."""

    tokens: np.ndarray
    points: np.ndarray
    n_faces: int
    kind: str


@dataclass
class MeshDataset:
    """Examples and the tokenizer that made them."""

    examples: list[MeshExample]
    tok: MeshTokenizer

    def __len__(self) -> int:
        return len(self.examples)

    def mesh(self, i: int) -> trimesh.Trimesh:
        return self.tok.decode(self.examples[i].tokens)


def make_dataset(
    n_meshes: int,
    seed: int,
    tok: MeshTokenizer,
    *,
    faces: tuple[int, int] = (20, 300),
    n_points: int = 256,
    kinds: Sequence[str] = PRIMITIVES,
) -> MeshDataset:
    """`n_meshes` random primitives with `faces[0] <= F <= faces[1]` after tokenisation."""
    lo, hi = faces
    if not 1 <= lo <= hi:
        raise ValueError(f"faces must be (min, max) with 1 <= min <= max, got {faces}")
    rng = np.random.default_rng(seed)
    out: list[MeshExample] = []
    attempts = 0
    while len(out) < n_meshes:
        attempts += 1
        if attempts > 50 * n_meshes + 100:
            raise ValueError(f"could not draw {n_meshes} meshes with {lo}-{hi} faces from {kinds}")
        kind = str(rng.choice(list(kinds)))
        mesh = random_transform(make_primitive(kind, rng), rng)
        try:
            example = mesh_example(mesh, tok, n_points, int(rng.integers(2**31)), kind)
        except ValueError:  # everything collapsed at this resolution
            continue
        if lo <= example.n_faces <= hi:
            out.append(example)
    return MeshDataset(out, tok)


def mesh_example(
    mesh: trimesh.Trimesh, tok: MeshTokenizer, n_points: int, seed: int, kind: str = "mesh"
) -> MeshExample:
    """Tokens, a point cloud sampled from the canonical (quantised) surface, face count.

    Raises:
        ValueError: the mesh cannot be tokenised (see `MeshTokenizer.quantized`).
    """
    v, f = tok.quantized(mesh)
    canon = trimesh.Trimesh(dequantize(v, tok.n_levels), f, process=False)
    points = sample_points(canon, n_points, seed=seed)
    return MeshExample(tok.encode_quantized(v, f), points, len(f), kind)


def dataset_from_meshes(
    meshes: Sequence[trimesh.Trimesh | str | Path],
    tok: MeshTokenizer,
    *,
    n_points: int = 256,
    seed: int = 0,
) -> MeshDataset:
    """A dataset of a user's own meshes (trimesh objects or .obj/.glb/.ply paths).

    Raises:
        ValueError: a mesh cannot be read or tokenised; the message names it.
    """
    examples = []
    for i, m in enumerate(meshes):
        name = str(m) if isinstance(m, (str, Path)) else f"mesh {i}"
        mesh = load_mesh(m) if isinstance(m, (str, Path)) else m
        try:
            examples.append(mesh_example(mesh, tok, n_points, seed + i, kind=name))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
    if not examples:
        raise ValueError("no meshes given")
    return MeshDataset(examples, tok)


def _pad(rows: list[np.ndarray], value: int) -> Tensor:
    L = max(len(r) for r in rows)
    out = np.full((len(rows), L), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def _batch(ds: MeshDataset, idx: Sequence[int], seqs: list[np.ndarray]):
    x = _pad([s[:-1] for s in seqs], ds.tok.pad)
    y = _pad([s[1:] for s in seqs], -100)
    points = torch.from_numpy(np.stack([ds.examples[i].points for i in idx]))
    n_faces = torch.tensor([ds.examples[i].n_faces for i in idx])
    return x, y, points, n_faces


def full_batch(ds: MeshDataset, idx: Sequence[int]):
    """Whole sequences: x (B, L) inputs (PAD-padded), y (B, L) targets (-100 padded),
    points (B, N, 3), n_faces (B,)."""
    return _batch(ds, idx, [ds.examples[i].tokens for i in idx])


def face_windows(
    ds: MeshDataset, idx: Sequence[int], window_faces: int, generator: torch.Generator
):
    """Truncated training: a random window of `window_faces` whole faces per mesh.

    The window starts on the token just before a face (BOS for the first face; a position
    that is a multiple of 9, so the hourglass groups stay vertex/face aligned) and holds
    9 * window_faces + 1 inputs. Returns the same tuple as `full_batch`.
    """
    if window_faces < 1:
        raise ValueError(f"window_faces must be >= 1, got {window_faces}")
    seqs = []
    for i in idx:
        t = ds.examples[i].tokens
        n = ds.examples[i].n_faces
        f0 = int(torch.randint(0, max(n - window_faces, 0) + 1, (), generator=generator))
        seqs.append(t[9 * f0 : 9 * (f0 + window_faces) + 2])
    return _batch(ds, idx, seqs)
