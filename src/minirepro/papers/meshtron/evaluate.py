"""Scoring generated meshes: validity, Chamfer distance, the nearest-primitive baseline,
window loss, and matplotlib previews."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy.spatial import cKDTree

from minirepro.papers.meshtron.conditioning import sample_points
from minirepro.papers.meshtron.data import PRIMITIVES, MeshDataset, face_windows, make_primitive
from minirepro.papers.meshtron.hourglass import HourglassLM
from minirepro.papers.meshtron.tokenizer import MeshTokenizer, normalize_vertices, sequence_errors

__all__ = [
    "chamfer",
    "nearest_primitive_chamfer",
    "plot_meshes",
    "valid_rate",
    "window_loss",
]


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance: mean nearest-neighbour distance a->b plus b->a.

    Args:
        a: (N, 3) points.
        b: (M, 3) points.
    """
    da, _ = cKDTree(b).query(a)
    db, _ = cKDTree(a).query(b)
    return float(da.mean() + db.mean())


def mesh_chamfer(mesh: trimesh.Trimesh, points: np.ndarray, n: int = 1024, seed: int = 0) -> float:
    """Chamfer distance between `n` points sampled on `mesh` and a point cloud."""
    return chamfer(sample_points(mesh, n, seed), points)


def canonical_primitives() -> list[trimesh.Trimesh]:
    """One untransformed primitive of each kind, normalised into [-0.5, 0.5]."""
    rng = np.random.default_rng(0)
    out = []
    for kind in PRIMITIVES:
        m = make_primitive(kind, rng)
        out.append(trimesh.Trimesh(normalize_vertices(m.vertices), m.faces, process=False))
    return out


def nearest_primitive_chamfer(points: np.ndarray, primitives: Sequence[trimesh.Trimesh]) -> float:
    """The baseline: Chamfer distance of the closest untransformed primitive to the cloud."""
    return min(mesh_chamfer(p, points) for p in primitives)


def valid_rate(seqs: Sequence[np.ndarray], tok: MeshTokenizer) -> float:
    """Fraction of sequences that are valid, order-respecting meshes (`sequence_errors`)."""
    return float(np.mean([not sequence_errors(s, tok) for s in seqs])) if seqs else float("nan")


@torch.no_grad()
def window_loss(
    model: HourglassLM, ds: MeshDataset, window_faces: int, seed: int, conditioned: bool = True
) -> float:
    """Mean next-token cross-entropy on one random face window per mesh of `ds`."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x, y, points, n_faces = face_windows(ds, range(len(ds)), window_faces, g)
    cond = (points, n_faces) if conditioned else (None, None)
    logits = model(x, *cond)
    return float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100))


def plot_meshes(meshes: Sequence[trimesh.Trimesh | None], clouds: Sequence[np.ndarray], titles):
    """A figure: each mesh (matplotlib 3D) above its conditioning point cloud."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    n = len(meshes)
    fig = plt.figure(figsize=(2.6 * n, 5.2))
    for i, (mesh, cloud, title) in enumerate(zip(meshes, clouds, titles)):
        ax = fig.add_subplot(2, n, i + 1, projection="3d")
        if mesh is not None:
            tris = mesh.vertices[mesh.faces]
            shade = np.abs(mesh.face_normals @ np.array([0.3, 0.5, 0.8])) * 0.7 + 0.3
            poly = Poly3DCollection(tris, linewidths=0.2, edgecolors="k")
            poly.set_facecolor(plt.cm.Blues(shade))
            ax.add_collection3d(poly)
        ax.set_title(title, fontsize=8)
        ax2 = fig.add_subplot(2, n, n + i + 1, projection="3d")
        ax2.scatter(*cloud.T, s=1, c=cloud[:, 2], cmap="viridis")
        for a in (ax, ax2):
            a.set_xlim(-0.5, 0.5), a.set_ylim(-0.5, 0.5), a.set_zlim(-0.5, 0.5)
            a.set_axis_off()
    fig.tight_layout()
    return fig
