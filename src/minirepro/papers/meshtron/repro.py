"""Reproduction of Meshtron's claims on trimesh primitives under random transforms.

Per seed: a point-cloud- and face-count-conditioned hourglass model is trained on random
face-aligned windows (truncated training); a copy trained on whole sequences at the same
steps and about the same tokens per step gives the equal-quality reference. Then, on the
longest sequences of the dataset (300 faces, 2,702 tokens), hourglass vs a flat transformer
of equal depth (training tokens/s, peak memory in fresh subprocesses), truncated vs full
training memory, and sliding-window (rolling KV cache) vs full-attention generation; robust
vs plain sampling on held-out point clouds; Chamfer distance of the generated meshes to
their point clouds vs the closest untransformed primitive. Generated meshes are exported
(.obj, .glb) and previewed.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from minirepro.core.bench import paired_ratio
from minirepro.core.results import AtLeast, AtMost, Result, RunDir
from minirepro.core.threads import num_threads
from minirepro.core.train import TrainConfig, train
from minirepro.papers.meshtron.bench import (
    generation_timings,
    peak_train_memory,
    random_batch,
    train_timings,
)
from minirepro.papers.meshtron.data import face_windows, full_batch, make_dataset
from minirepro.papers.meshtron.evaluate import (
    canonical_primitives,
    mesh_chamfer,
    nearest_primitive_chamfer,
    plot_meshes,
    valid_rate,
    window_loss,
)
from minirepro.papers.meshtron.hourglass import HourglassLM, MeshtronConfig
from minirepro.papers.meshtron.sampling import generate
from minirepro.papers.meshtron.tokenizer import MeshTokenizer, save_mesh, sequence_errors

__all__ = ["CLAIMS", "PRESETS", "Config", "run"]

CLAIMS = [
    "Hourglass beats a flat transformer of equal depth in training tokens/s (>= 1.5x)",
    "Hourglass needs less peak training memory than the flat transformer",
    "Truncated training cuts peak training memory (>= 50% lower)",
    "... at equal window loss (truncated / full-sequence <= 1.05)",
    "Sliding-window generation is faster than full attention at the longest sequences (>= 2x)",
    "Sliding-window generation stays valid beyond the training window",
    "Robust sampling raises the valid, order-respecting rate (>= +20 points)",
    "Generated meshes fit the point cloud better than the nearest primitive (Chamfer ratio <= 1)",
]


@dataclass
class Config:
    """One reproduction run.

    Attributes:
        seeds: Data and model seeds.
        n_levels: Quantisation levels (the paper: 1024; fewer train faster here).
        n_train, n_test: Meshes to train on / to condition generation on.
        faces: (min, max) faces per mesh ("20-300 faces").
        n_points: Points per conditioning cloud.
        d_model, n_head: Width and heads.
        layers: Hourglass layers per level (token, vertex, face, vertex, token); the flat
            transformer has sum(layers) layers.
        window_faces: Truncated training window in faces; the sliding window at generation
            is 9 * window_faces tokens (the training context).
        steps, batch_size, lr: Training of the main (truncated) model.
        full_steps: Steps of the full-sequence reference (0: skip it); its batch is
            batch_size // 4 whole meshes, about the tokens of batch_size windows.
        face_bins: Face-count control bins (0: none).
        bench_batch: Batch of the throughput / memory comparisons (longest sequences).
        bench_repeats: Alternated timed rounds.
        gen_batch: Meshes generated per sampling mode.
        temperature: Sampling temperature.
        export: Meshes exported and previewed (first seed).
        memory: Measure peak training memory (four fresh subprocesses, a few seconds each).
        threads: torch threads for training (None: unchanged).
        decode_threads: torch threads for token-by-token decoding: single-token steps are
            too small to split, and on a shared machine a second thread costs 20x here.
    """

    seeds: tuple[int, ...] = (0,)
    n_levels: int = 128
    n_train: int = 600
    n_test: int = 8
    faces: tuple[int, int] = (20, 300)
    n_points: int = 256
    d_model: int = 64
    n_head: int = 4
    layers: tuple[int, ...] = (1, 1, 2, 1, 1)
    window_faces: int = 24
    steps: int = 600
    batch_size: int = 8
    lr: float = 3e-3
    full_steps: int = 150
    face_bins: int = 8
    bench_batch: int = 2
    bench_repeats: int = 2
    gen_batch: int = 8
    temperature: float = 1.0
    export: int = 4
    memory: bool = True
    threads: int | None = None
    decode_threads: int = 1

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if self.window_faces < 1 or self.steps < 1 or self.full_steps < 0:
            raise ValueError("window_faces and steps must be >= 1, full_steps >= 0")
        if self.window_faces >= self.faces[1]:
            raise ValueError(
                f"window_faces={self.window_faces} must be below the longest mesh "
                f"({self.faces[1]} faces) for truncation to mean anything"
            )
        if self.n_test < 1 or self.gen_batch < 1 or self.batch_size < 1:
            raise ValueError("n_test, gen_batch and batch_size must be >= 1")
        if not 1 <= self.faces[0] <= self.faces[1]:
            raise ValueError(f"faces must be (min, max) with 1 <= min <= max, got {self.faces}")
        MeshTokenizer(self.n_levels)  # validates n_levels
        self.model_config(self.n_levels + 3)  # validates layers, window

    def model_config(self, vocab_size: int, **changes) -> MeshtronConfig:
        cfg = MeshtronConfig(
            vocab_size=vocab_size, layers=self.layers, d_model=self.d_model, n_head=self.n_head,
            window=9 * self.window_faces, point_cloud=True, face_bins=self.face_bins,
            max_faces=self.faces[1],
        )  # fmt: skip
        return dataclasses.replace(cfg, **changes)


PRESETS = {
    # seconds: tiny model and data; checks the pipeline, not the claims
    "smoke": Config(
        n_train=24, n_test=2, faces=(20, 60), n_points=64, d_model=32, n_head=2, window_faces=4,
        steps=4, batch_size=4, full_steps=2, bench_batch=1, bench_repeats=1, gen_batch=2,
        export=1, layers=(1, 1, 1, 1, 1), memory=False, threads=1,
    ),
    # <= 5 minutes on 2 quiet cores
    "quick": Config(),
    # closer to the paper: 1024 levels, a wider model, longer training, 3 seeds
    "full": Config(
        seeds=(0, 1, 2), n_levels=1024, n_train=4000, n_test=32, d_model=256, n_head=8,
        layers=(2, 2, 8, 2, 2), window_faces=64, steps=5000, batch_size=16, full_steps=5000,
        bench_batch=4, bench_repeats=5, gen_batch=32, lr=1e-3,
    ),
}  # fmt: skip


def _loss(model: HourglassLM, batch) -> torch.Tensor:
    x, y, points, n_faces = batch
    logits = model(x, points, n_faces)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)


def _train(cfg: Config, model, ds, steps, batch_size, sample, seed, eval_fn=None, eval_every=0):
    tcfg = TrainConfig(
        steps=steps, lr=cfg.lr, batch_size=batch_size, warmup_steps=max(1, steps // 10),
        seed=seed, log_every=max(1, steps // 10), weight_decay=0.0, eval_every=eval_every,
    )  # fmt: skip

    def get_batch(step: int, g: torch.Generator):
        idx = torch.randint(0, len(ds), (batch_size,), generator=g).tolist()
        return sample(idx, g)

    return train(model, tcfg, get_batch, loss_fn=_loss, eval_fn=eval_fn)


def run(cfg: Config, out: RunDir) -> list[Result]:
    """Every measurement of every seed, then the Results."""
    rows = [_run_seed(cfg, seed, out) for seed in out.track(cfg.seeds, "meshtron seeds")]
    return results(cfg, rows)


def _run_seed(cfg: Config, seed: int, out: RunDir) -> dict:
    tok = MeshTokenizer(cfg.n_levels)
    train_ds = make_dataset(
        cfg.n_train, 1000 * seed + 1, tok, faces=cfg.faces, n_points=cfg.n_points
    )
    test_ds = make_dataset(cfg.n_test, 1000 * seed + 2, tok, faces=cfg.faces, n_points=cfg.n_points)
    mcfg = cfg.model_config(tok.vocab_size)
    row: dict = {"seed": seed}
    eval_ds = make_dataset(max(8, cfg.n_test), 1000 * seed + 3, tok, faces=cfg.faces,
                           n_points=cfg.n_points)  # fmt: skip
    wl = lambda m: window_loss(m, eval_ds, cfg.window_faces, seed)  # noqa: E731

    # ---- training: truncated windows (the main model) and whole sequences (reference)
    with num_threads(cfg.threads):
        torch.manual_seed(seed)
        model = HourglassLM(mcfg)
        at_full_steps: dict = {}

        def eval_trunc(m, step):
            if step in (cfg.full_steps, cfg.steps):
                at_full_steps[step] = wl(m)
            return {"window_loss": at_full_steps.get(step, float("nan"))}

        state = _train(
            cfg, model, train_ds, cfg.steps, cfg.batch_size,
            lambda idx, g: face_windows(train_ds, idx, cfg.window_faces, g), seed, eval_trunc,
            cfg.full_steps,
        )  # fmt: skip
        for rec in state.history:
            out.log(stage="train_truncated", seed=seed, **rec)
        row["window_loss_truncated"] = at_full_steps.get(cfg.full_steps, float("nan"))
        row["window_loss_final"] = at_full_steps.get(cfg.steps, wl(model))
        if cfg.full_steps:
            torch.manual_seed(seed)
            full_model = HourglassLM(mcfg)
            fb = max(1, cfg.batch_size // 4)
            st = _train(cfg, full_model, train_ds, cfg.full_steps, fb,
                        lambda idx, g: full_batch(train_ds, idx), seed)  # fmt: skip
            for rec in st.history:
                out.log(stage="train_full", seed=seed, **rec)
            row["window_loss_full"] = wl(full_model)

        # ---- hourglass vs flat, truncated vs full: the longest sequences of the data
        longest = 9 * cfg.faces[1] + 1
        flat_cfg = dataclasses.replace(mcfg, layers=(sum(cfg.layers),), window=None)
        hg_cfg = dataclasses.replace(mcfg, window=None)
        torch.manual_seed(seed)
        contenders = {"hourglass": HourglassLM(hg_cfg), "flat": HourglassLM(flat_cfg)}
        batch = random_batch(hg_cfg, cfg.bench_batch, longest, cfg.n_points, seed)
        times = train_timings(contenders, batch, repeats=cfg.bench_repeats)
        row["hourglass_speedup"] = paired_ratio(times["flat"], times["hourglass"])
        row["tokens_per_s"] = {k: batch[0].numel() / t.median for k, t in times.items()}
        if cfg.memory:
            mem = lambda c, n: peak_train_memory(  # noqa: E731
                c, cfg.bench_batch, n, cfg.n_points, threads=cfg.threads
            )
            row["mem_hourglass_mib"] = row["mem_full_mib"] = mem(hg_cfg, longest)
            row["mem_flat_mib"] = mem(flat_cfg, longest)
            row["mem_truncated_mib"] = mem(hg_cfg, 9 * cfg.window_faces + 1)
    out.log(stage="bench", **{k: v for k, v in row.items() if k != "seed"}, seed=seed)

    # ---- generation
    with num_threads(cfg.decode_threads):
        pts = torch.from_numpy(np.stack([e.points for e in test_ds.examples]))
        nf = torch.tensor([e.n_faces for e in test_ds.examples])
        pick = torch.arange(cfg.gen_batch) % len(test_ds)
        pts, nf = pts[pick], nf[pick]
        full_attn = HourglassLM(dataclasses.replace(mcfg, window=None))
        full_attn.load_state_dict(model.state_dict())
        gt = generation_timings({"sliding": model, "full": full_attn}, tok, cfg.bench_batch,
                                cfg.faces[1], points=pts[: cfg.bench_batch],
                                n_faces=nf[: cfg.bench_batch], seed=seed)  # fmt: skip
        row["generation_speedup"] = paired_ratio(gt["full"], gt["sliding"])
        row["generation_tokens_per_s"] = {
            k: cfg.bench_batch * 9 * cfg.faces[1] / t.median for k, t in gt.items()
        }
        g = torch.Generator().manual_seed(seed)
        gen = {
            mode: generate(model, tok, cfg.gen_batch, cfg.faces[1], points=pts, n_faces=nf,
                           robust=mode == "robust", temperature=cfg.temperature, generator=g)
            for mode in ("robust", "plain")
        }  # fmt: skip
    window_tokens = 9 * cfg.window_faces + 1
    robust = gen["robust"].tokens
    row["valid_robust"] = valid_rate(robust, tok)
    row["valid_plain"] = valid_rate(gen["plain"].tokens, tok)
    row["dead_ends"] = gen["robust"].dead_ends
    long = [s for s in robust if len(s) > window_tokens]
    row["n_beyond_window"] = len(long)
    row["valid_beyond_window"] = valid_rate(long, tok) if long else float("nan")
    row["generated_faces"] = [len(tok.faces_of(s)) for s in robust]
    row["requested_faces"] = nf.tolist()

    # ---- Chamfer to the conditioning cloud vs the nearest untransformed primitive
    prims = canonical_primitives()
    ours, base, meshes = [], [], []
    for s, p in zip(robust, pts.numpy()):
        try:
            mesh = tok.decode(s, fix_normals=False)
        except ValueError:
            meshes.append(None)
            continue
        meshes.append(mesh)
        ours.append(mesh_chamfer(mesh, p, seed=seed))
        base.append(nearest_primitive_chamfer(p, prims))
    row["chamfer"] = statistics.fmean(ours) if ours else float("nan")
    row["chamfer_baseline"] = statistics.fmean(base) if base else float("nan")
    out.log(stage="generation", **{k: v for k, v in row.items() if k != "seed"}, seed=seed)
    if seed == cfg.seeds[0] and cfg.export:
        _export(cfg, out, tok, robust, meshes, pts.numpy())
    return row


def _export(cfg: Config, out: RunDir, tok, seqs, meshes, clouds) -> None:
    n = min(cfg.export, len(meshes))
    for i in range(n):
        if meshes[i] is not None:
            for suffix in (".obj", ".glb"):
                save_mesh(meshes[i], out.path / "meshes" / f"generated_{i}{suffix}")
    titles = [
        f"{len(tok.faces_of(s))} faces, " + ("valid" if not sequence_errors(s, tok) else "invalid")
        for s in seqs[:n]
    ]
    out.savefig(plot_meshes(meshes[:n], clouds[:n], titles), "generated_meshes")


def _vals(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows]


def results(cfg: Config, rows: list[dict]) -> list[Result]:
    """Results from per-seed rows (see `_run_seed`)."""
    seeds = [r["seed"] for r in rows]
    mean = lambda k: statistics.fmean(_vals(rows, k))  # noqa: E731
    memory = "mem_full_mib" in rows[0]
    if memory:
        mem_cut = [100 * (1 - r["mem_truncated_mib"] / r["mem_full_mib"]) for r in rows]
        mem_ratio = [r["mem_flat_mib"] / r["mem_hourglass_mib"] for r in rows]
    loss_ratio = [
        r["window_loss_truncated"] / r["window_loss_full"] if "window_loss_full" in r else np.nan
        for r in rows
    ]
    valid_gain = [100 * (r["valid_robust"] - r["valid_plain"]) for r in rows]
    chamfer_ratio = [r["chamfer"] / r["chamfer_baseline"] for r in rows]
    tps = rows[0]["tokens_per_s"]
    gtps = rows[0]["generation_tokens_per_s"]
    longest = 9 * cfg.faces[1] + 2
    scale = f"d_model={cfg.d_model}, layers={cfg.layers}, {cfg.n_levels} levels"
    req = np.concatenate([r["requested_faces"] for r in rows])
    got = np.concatenate([r["generated_faces"] for r in rows])
    corr = float(np.corrcoef(req, got)[0, 1]) if len(req) > 1 and got.std() > 0 else float("nan")
    speed = [
        Result.check(
            CLAIMS[0],
            "enables 64K faces (hourglass vs flat, Fig. 4)",
            _vals(rows, "hourglass_speedup"),
            AtLeast(1.5),
            seeds,
            unit="x",
            note=f"{scale}; flat {sum(cfg.layers)} layers; batch {cfg.bench_batch} x {longest - 1} "
            f"tokens: {tps['hourglass']:.0f} vs {tps['flat']:.0f} tokens/s (fwd+bwd+AdamW)",
        )
    ]
    memory_results = [
        Result.check(
            CLAIMS[1], "lower (Fig. 4)", mem_ratio, AtLeast(1.0), seeds, unit="x",
            note=f"peak RSS growth in fresh subprocesses: flat {mean('mem_flat_mib'):.0f} MiB, "
            f"hourglass {mean('mem_hourglass_mib'):.0f} MiB",
        ),
        Result.check(
            CLAIMS[2], "> 50% less training memory", mem_cut, AtLeast(50.0), seeds, unit="%",
            note=f"windows of {cfg.window_faces} faces vs whole {cfg.faces[1]}-face sequences: "
            f"{mean('mem_truncated_mib'):.0f} vs {mean('mem_full_mib'):.0f} MiB (peak RSS growth)",
        ),
    ] if memory else []  # fmt: skip
    return speed + memory_results + [
        Result.check(
            CLAIMS[3], "comparable quality", loss_ratio, AtMost(1.05), seeds, unit="ratio",
            note=f"held-out window loss after {cfg.full_steps} steps each (batch {cfg.batch_size} "
            f"windows vs {max(1, cfg.batch_size // 4)} whole meshes)",
        ),
        Result.check(
            CLAIMS[4], "2.5x", _vals(rows, "generation_speedup"), AtLeast(2.0), seeds, unit="x",
            note=f"{cfg.bench_batch} x {9 * cfg.faces[1]} tokens, window {9 * cfg.window_faces}: "
            f"{gtps['sliding']:.0f} vs {gtps['full']:.0f} tokens/s",
        ),
        Result.check(
            CLAIMS[5], "64K-face meshes from a truncated-trained model",
            [r["valid_beyond_window"] for r in rows], AtLeast(0.8), seeds, unit="valid",
            note=f"{sum(r['n_beyond_window'] for r in rows)} robust generations longer than "
            f"the {9 * cfg.window_faces + 1}-token training window",
        ),
        Result.check(
            CLAIMS[6], "robust sampling avoids broken sequences", valid_gain, AtLeast(20.0),
            seeds, unit="points",
            note=f"robust {mean('valid_robust'):.2f} vs plain {mean('valid_plain'):.2f} valid "
            f"({cfg.gen_batch} meshes per seed; dead ends {sum(r['dead_ends'] for r in rows)}); "
            f"face count requested vs generated: r = {corr:.2f}",
        ),
        Result.check(
            CLAIMS[7], "not reported (point-cloud conditioning)", chamfer_ratio, AtMost(1.0),
            seeds, unit="ratio",
            note=f"Chamfer {mean('chamfer'):.3f} vs nearest primitive {mean('chamfer_baseline'):.3f}",
        ),
    ]  # fmt: skip
