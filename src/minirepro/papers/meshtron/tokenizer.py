"""Mesh <-> token sequence, the serialisation of MeshXL / MeshAnything V2 that Meshtron uses.

A triangle mesh becomes ``BOS, z0 y0 x0, z1 y1 x1, z2 y2 x2, ..., EOS``: 9 coordinate tokens
per face. The steps, each a function of its own so a user can call them apart:

1. `normalize_vertices`: centre the bounding box on 0 and scale its longest side to 1,
   so coordinates lie in [-0.5, 0.5].
2. `quantize`: ``floor((x + 0.5) * n_levels)`` clipped to [0, n_levels - 1];
   `dequantize` returns the bin centre ``(q + 0.5) / n_levels - 0.5``, so quantising a
   dequantised mesh is exact (the community Meshtron quantised with ``floor(x * bins)`` and
   dequantised dividing by ``bins - 1``, a drift this avoids).
3. `canonicalize`: merge equal vertices, drop degenerate faces (a repeated vertex or zero
   area) and duplicate faces, sort vertices by (z, y, x), sort each face's indices, sort
   faces lexicographically (not by centroid z, another community bug), drop unused vertices.

Sorting a face's indices loses its winding; `decode` can re-orient faces outwards with
trimesh (``fix_normals=True``). Round trips are exact on the canonical mesh:
``encode(decode(encode(m))) == encode(m)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

__all__ = [
    "MESH_SUFFIXES",
    "MeshTokenizer",
    "canonicalize",
    "dequantize",
    "load_mesh",
    "normalize_vertices",
    "quantize",
    "save_mesh",
    "sequence_errors",
]

MESH_SUFFIXES = (".obj", ".glb", ".ply")


def normalize_vertices(vertices: np.ndarray) -> np.ndarray:
    """Centre the bounding box on the origin and scale its longest side to 1.

    Args:
        vertices: (V, 3) floats.

    Returns:
        (V, 3) float64 in [-0.5, 0.5].
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ValueError(f"vertices must be a non-empty (V, 3) array, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("vertices hold NaN or infinite coordinates")
    lo, hi = v.min(0), v.max(0)
    extent = float((hi - lo).max())
    if extent == 0.0:
        raise ValueError("all vertices coincide: the mesh has no extent")
    return (v - (lo + hi) / 2) / extent


def quantize(vertices: np.ndarray, n_levels: int) -> np.ndarray:
    """(V, 3) floats in [-0.5, 0.5] -> (V, 3) int64 in [0, n_levels)."""
    q = np.floor((np.asarray(vertices, dtype=np.float64) + 0.5) * n_levels)
    return np.clip(q, 0, n_levels - 1).astype(np.int64)


def dequantize(q: np.ndarray, n_levels: int) -> np.ndarray:
    """(V, 3) ints -> (V, 3) bin centres in [-0.5, 0.5]."""
    return (np.asarray(q, dtype=np.float64) + 0.5) / n_levels - 0.5


def _face_area2(v: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Twice the area of each face, exact on integer vertices: |cross| squared > 0 test."""
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    cross = np.cross(b - a, c - a)
    return (cross.astype(np.float64) ** 2).sum(1)


def canonicalize(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The canonical form of an integer mesh (see the module docstring, step 3).

    Args:
        vertices: (V, 3) integer coordinates (x, y, z).
        faces: (F, 3) vertex indices.

    Returns:
        vertices (V', 3) int64 sorted by (z, y, x), faces (F', 3) int64 with ascending
        indices, sorted lexicographically; every vertex used by a face.
    """
    v = np.asarray(vertices)
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must be (F, 3) triangles, got shape {f.shape}")
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"face indices must lie in [0, {len(v)})")
    v = v.astype(np.int64)
    # merge equal vertices and sort them by (z, y, x): unique over (z, y, x) rows
    zyx, inverse = np.unique(v[:, ::-1], axis=0, return_inverse=True)
    f = inverse.reshape(-1)[f.astype(np.int64)]
    v = zyx[:, ::-1]
    f = np.sort(f, axis=1)
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2])
    f = f[keep]
    f = f[_face_area2(v, f) > 0]  # collinear vertices: zero area
    f = np.unique(f, axis=0)  # drops duplicates, sorts lexicographically
    used = np.unique(f)
    remap = np.full(len(v), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return v[used], remap[f]


def _non_manifold_edges(faces: np.ndarray) -> int:
    faces = np.unique(np.sort(faces, 1), axis=0)  # a face listed twice is a duplicate, dropped
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    edges = edges[edges[:, 0] != edges[:, 1]]  # degenerate faces are dropped, not counted
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int((counts > 2).sum())


@dataclass(frozen=True)
class MeshTokenizer:
    """Meshes to token ids and back.

    Attributes:
        n_levels: Quantisation levels per axis ("1024-level coordinate quantisation").
        max_faces: Longest mesh accepted (None: any).

    Tokens 0..n_levels-1 are coordinates; then BOS, EOS and PAD.

    Example:
        >>> tok = MeshTokenizer(n_levels=128)
        >>> ids = tok.encode(trimesh.creation.box())  # (1 + 9 * 12 + 1,)
        >>> mesh = tok.decode(ids)
    """

    n_levels: int = 1024
    max_faces: int | None = None

    def __post_init__(self) -> None:
        if not 2 <= self.n_levels <= 65536:
            raise ValueError(f"n_levels must be in [2, 65536], got {self.n_levels}")

    @property
    def bos(self) -> int:
        return self.n_levels

    @property
    def eos(self) -> int:
        return self.n_levels + 1

    @property
    def pad(self) -> int:
        return self.n_levels + 2

    @property
    def vocab_size(self) -> int:
        return self.n_levels + 3

    def quantized(
        self, mesh: trimesh.Trimesh | tuple[np.ndarray, np.ndarray], *, check_manifold: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normalise, quantise and canonicalise a mesh: integer (V, 3) vertices, (F, 3) faces.

        Raises:
            ValueError: empty mesh, non-manifold edges (more than two faces on an edge, when
                `check_manifold`), no face left after cleaning, or more than `max_faces`.
        """
        vertices, faces = (mesh.vertices, mesh.faces) if isinstance(mesh, trimesh.Trimesh) else mesh
        vertices, faces = np.asarray(vertices), np.asarray(faces)
        if len(faces) == 0 or len(vertices) == 0:
            raise ValueError("the mesh is empty: it has no faces or no vertices")
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must be (F, 3) triangles, got shape {faces.shape}")
        normalized = normalize_vertices(vertices)
        if check_manifold:
            _, inv = np.unique(np.asarray(vertices), axis=0, return_inverse=True)
            n_bad = _non_manifold_edges(inv.reshape(-1)[faces])
            if n_bad:
                raise ValueError(
                    f"the mesh is non-manifold: {n_bad} edges are shared by more than two "
                    "faces (pass check_manifold=False to tokenise it anyway)"
                )
        q = quantize(normalized, self.n_levels)
        v, f = canonicalize(q, faces)
        if len(f) == 0:
            raise ValueError(
                f"no face survives quantisation to {self.n_levels} levels (all degenerate)"
            )
        if self.max_faces is not None and len(f) > self.max_faces:
            raise ValueError(f"the mesh has {len(f)} faces, more than max_faces={self.max_faces}")
        return v, f

    def encode_quantized(self, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Tokens of an integer mesh (canonicalised first, not renormalised): (2 + 9F,)."""
        vertices = np.asarray(vertices)
        if len(vertices) and (vertices.min() < 0 or vertices.max() >= self.n_levels):
            raise ValueError(f"integer coordinates must lie in [0, {self.n_levels})")
        v, f = canonicalize(vertices, faces)
        coords = v[f][:, :, ::-1].reshape(-1)  # (F * 9,) z y x per vertex
        return np.concatenate([[self.bos], coords, [self.eos]]).astype(np.int64)

    def encode(
        self, mesh: trimesh.Trimesh | tuple[np.ndarray, np.ndarray], *, check_manifold: bool = True
    ) -> np.ndarray:
        """Token ids (2 + 9F,) of a mesh (a trimesh or (vertices, faces) arrays)."""
        return self.encode_quantized(*self.quantized(mesh, check_manifold=check_manifold))

    def faces_of(self, tokens: np.ndarray | list[int]) -> np.ndarray:
        """The (F, 3, 3) integer (x, y, z) triangles of a token sequence.

        BOS at the start and EOS (and what follows) at the end are optional; an incomplete
        last face is dropped.
        """
        t = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(t) and t[0] == self.bos:
            t = t[1:]
        end = np.flatnonzero(t >= self.n_levels)
        t = t[: end[0]] if len(end) else t
        t = t[: len(t) // 9 * 9]
        return t.reshape(-1, 3, 3)[:, :, ::-1]

    def decode_quantized(self, tokens) -> tuple[np.ndarray, np.ndarray]:
        """Integer vertices (V, 3) and faces (F, 3) of a token sequence (equal vertices merged)."""
        tri = self.faces_of(tokens)
        if len(tri) == 0:
            return np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64)
        v, inverse = np.unique(tri.reshape(-1, 3), axis=0, return_inverse=True)
        return v, inverse.reshape(-1, 3)

    def decode(self, tokens, *, fix_normals: bool = False) -> trimesh.Trimesh:
        """A trimesh of a token sequence, vertices at bin centres in [-0.5, 0.5].

        Raises:
            ValueError: the sequence holds no complete face.
        """
        v, f = self.decode_quantized(tokens)
        if len(f) == 0:
            raise ValueError("the token sequence holds no complete face")
        mesh = trimesh.Trimesh(dequantize(v, self.n_levels), f, process=False)
        if fix_normals:
            mesh.fix_normals()
        return mesh


def _lex_less(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise strict lexicographic a < b of (N, K) integer arrays: (N,) bools."""
    diff = np.sign(b - a)  # first non-zero entry decides
    first = np.argmax(diff != 0, axis=1)
    return diff[np.arange(len(a)), first] > 0


def sequence_errors(tokens, tok: MeshTokenizer) -> list[str]:
    """Why a generated sequence is not a valid, order-respecting mesh ([] when it is).

    Valid: BOS, then complete faces of coordinates, then EOS; each face's vertices strictly
    ascending in (z, y, x); faces strictly ascending; no zero-area face. Such a sequence is
    its own canonical form: ``tok.encode_quantized(*tok.decode_quantized(t)) == t``.
    """
    t = np.asarray(tokens, dtype=np.int64).reshape(-1)
    errors = []
    if len(t) < 2 or t[0] != tok.bos:
        return ["does not start with BOS"]
    eos = np.flatnonzero(t == tok.eos)
    if not len(eos):
        return ["no EOS"]
    body = t[1 : eos[0]]
    if (body >= tok.n_levels).any():
        errors.append("special token inside the mesh")
        return errors
    if len(body) % 9:
        errors.append("EOS inside a face")
        body = body[: len(body) // 9 * 9]
    if len(body) == 0:
        return errors + ["no face"]
    faces = body.reshape(-1, 9)
    vert = faces.reshape(-1, 3, 3)  # (F, 3 vertices, zyx)
    code = (vert[..., 0] * tok.n_levels + vert[..., 1]) * tok.n_levels + vert[..., 2]  # (F, 3)
    if not ((code[:, 0] < code[:, 1]) & (code[:, 1] < code[:, 2])).all():
        errors.append("vertices of a face not strictly ascending")
    if len(faces) > 1 and not _lex_less(code[:-1], code[1:]).all():
        errors.append("faces not strictly ascending")
    if (_face_area2(vert.reshape(-1, 3), np.arange(3 * len(faces)).reshape(-1, 3)) == 0).any():
        errors.append("zero-area face")
    return errors


# ----------------------------------------------------------------------------------- files


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """Reads a triangle mesh from .obj, .glb or .ply (scenes are concatenated).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unsupported suffix, or a file that holds no triangle mesh.
    """
    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise ValueError(f"{path}: unsupported mesh file type {path.suffix!r}; use {MESH_SUFFIXES}")
    if not path.is_file():
        raise FileNotFoundError(f"no mesh file at {path}")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types on malformed files
        raise ValueError(f"{path}: not a readable {path.suffix} mesh ({exc})") from exc
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"{path}: the file holds no triangle faces")
    return mesh


def save_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Writes a mesh as .obj, .glb or .ply (chosen by the suffix); returns the path."""
    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise ValueError(f"{path}: unsupported mesh file type {path.suffix!r}; use {MESH_SUFFIXES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)
    return path
