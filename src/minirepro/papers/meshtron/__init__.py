"""Meshtron: high-fidelity, artist-like 3D mesh generation at scale.

arXiv 2412.09548 (NVIDIA, 2024). No official code.

Claim: an autoregressive mesh generator conditioned on point clouds reaches 64K faces at
1024-level quantisation thanks to an Hourglass Transformer whose levels follow the mesh
sequence (coordinate -> vertex (/3) -> face (/9)), truncated-sequence training (> 50% less
training memory), sliding-window attention at inference (2.5x throughput) and robust
sampling that enforces the mesh ordering.

Implemented here:
- `MeshTokenizer` (tokenizer.py): normalise, quantise, merge vertices, drop degenerate and
  duplicate faces, sort (z, y, x) and faces lexicographically, 9 tokens per face, BOS/EOS,
  decode back to trimesh; `load_mesh` / `save_mesh` for .obj, .glb, .ply;
  `sequence_errors` says why a sequence is not a valid, order-respecting mesh.
- `HourglassLM` (hourglass.py) on the core decoder's `Block`s: shorten by 3 then 3 with
  causal shifts, linear upsampling and residuals, groups aligned to vertices and faces;
  ``layers=(n,)`` is the flat transformer; `step` decodes with per-level caches.
- Sliding-window attention from `minirepro.papers.flexattn` (mask "sliding_window_<W>")
  and a `RollingKVCache` (window.py).
- Point-cloud conditioning (Perceiver encoder + cross-attention) and face-count control
  (conditioning.py); robust sampling masks (sampling.py `order_mask`, `generate`).
- A dataset of trimesh primitives under random transforms (data.py) with face-aligned
  truncated windows; evaluation (Chamfer, nearest-primitive baseline, previews).

Deviations: CPU scale (d_model 64, 128 quantisation levels in the quick preset, meshes of
at most 300 faces); see NOTES.md.

Run: `minirepro run meshtron`; benchmark: `python benchmarks/meshtron.py`.
"""

from minirepro.papers.meshtron.conditioning import ConditionEncoder, CrossAttention, sample_points
from minirepro.papers.meshtron.data import (
    PRIMITIVES,
    MeshDataset,
    MeshExample,
    dataset_from_meshes,
    face_windows,
    full_batch,
    make_dataset,
    make_primitive,
    random_transform,
)
from minirepro.papers.meshtron.evaluate import chamfer, nearest_primitive_chamfer, valid_rate
from minirepro.papers.meshtron.hourglass import DecodeState, HourglassLM, MeshtronConfig
from minirepro.papers.meshtron.repro import CLAIMS, PRESETS, Config, run
from minirepro.papers.meshtron.sampling import Generation, generate, order_mask
from minirepro.papers.meshtron.tokenizer import (
    MeshTokenizer,
    canonicalize,
    dequantize,
    load_mesh,
    normalize_vertices,
    quantize,
    save_mesh,
    sequence_errors,
)
from minirepro.papers.meshtron.window import RollingKVCache, WindowAttention
from minirepro.registry import Paper

PAPER = Paper(
    id="meshtron",
    title="Meshtron: high-fidelity, artist-like 3D mesh generation at scale",
    arxiv="2412.09548",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
)

__all__ = [
    "CLAIMS",
    "PAPER",
    "PRESETS",
    "PRIMITIVES",
    "ConditionEncoder",
    "Config",
    "CrossAttention",
    "DecodeState",
    "Generation",
    "HourglassLM",
    "MeshDataset",
    "MeshExample",
    "MeshTokenizer",
    "MeshtronConfig",
    "RollingKVCache",
    "WindowAttention",
    "canonicalize",
    "chamfer",
    "dataset_from_meshes",
    "dequantize",
    "face_windows",
    "full_batch",
    "generate",
    "load_mesh",
    "make_dataset",
    "make_primitive",
    "nearest_primitive_chamfer",
    "normalize_vertices",
    "order_mask",
    "quantize",
    "random_transform",
    "run",
    "sample_points",
    "save_mesh",
    "sequence_errors",
    "valid_rate",
]
