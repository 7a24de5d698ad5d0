"""Reproduction of "Understanding Gradient Descent through the Training Jacobian".

`run(cfg, out)` trains the reference's digits MLP from each seed's init, computes the
training Jacobian by forward mode, and runs every analysis of the paper on it; each analysis
logs its numbers to metrics.jsonl and draws one figure. The Results compare the headline
numbers with the paper's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch

from minirepro.core.results import AtLeast, AtMost, Result, RunDir
from minirepro.core.seed import seed_everything
from minirepro.core.threads import num_threads
from minirepro.papers.jacobian import experiments as ex
from minirepro.papers.jacobian import plots
from minirepro.papers.jacobian.fast import MLPPushforward
from minirepro.papers.jacobian.jacobian import SVD, process_pool, svd64, training_jacobian
from minirepro.papers.jacobian.setup import (
    MLP,
    Digits,
    FlatModel,
    OptimConfig,
    heldout_loss,
    load_digits_data,
    noise_inputs,
    shuffled_labels,
    train,
    train_in_subspaces,
)

__all__ = ["CLAIMS", "PRESETS", "Config", "run"]


@dataclass
class Config:
    """What one reproduction run does.

    Attributes:
        width: Hidden width; 64 is the paper's 64 -> 64 -> 10 MLP with 4810 parameters
            ("model = MLP(hidden_sizes=(d_inner,), out_features=10)", d_inner = 64).
        n_train: Keep only this many of the 1600 training images (None: all).
        epochs: "num_epochs: int = 25".
        batch_size: "batch_size: int = 64".
        opt: "sgd" (the paper's runs) or "adam".
        lr: Peak lr; None is the reference's 0.1 for SGD, 3e-3 for Adam.
        momentum: SGD momentum, "optax.sgd(learning_rate=sched, momentum=0.9)".
        seeds: Init seeds; each gets a Jacobian, the first two are compared.
        data_seed: Seed of the shuffled labels, noise inputs and random subspaces
            (the reference's `jax.random.key(1)`).
        dtype: Training and forward-mode dtype; float32 as the JAX reference. The SVD, the
            KLs, linearity runs and the nullspace are float64 regardless.
        bulk_tol: The bulk is |σ - 1| < bulk_tol.
        wide_tol: A second, looser band reported beside it.
        n_eps: Points of the linearity sweep over ε in logspace(-3, 3) (the reference: 30).
        linear_tol: A response is "linear" while ||Δ - εσu|| < linear_tol * εσ.
        kl_step: Step length along each right singular vector (the reference adds Vh: 1).
        n_subspace_sizes: Subspace dimensions in the restricted-training sweep (the
            reference: 20), plus P - n_bulk.
        variants: Also compute the shuffled-label and noise-input Jacobians.
        nullspace: Also compute the output-Jacobian nullspace overlap.
        nullspace_rtol: Null means output sensitivity < rtol of the largest.
        chunk_size: Tangents per forward-mode chunk (None: from memory_budget_mb).
        memory_budget_mb: Memory for one chunk of tangents.
        cache_dir: Keep Jacobian chunks here, so an interrupted run resumes ("auto": the
            user cache folder). None: chunks go to the run folder and are deleted when done.
        threads: torch intra-op threads during the run (restored after); None leaves them.
            1 by default: the ops are small (64-image batches) and on a shared 2-core machine
            a second intra-op thread made forward-mode chunks 2-10x slower (NOTES.md).
        workers: Processes computing Jacobian chunks in parallel (single-threaded each);
            1 computes them in this process.
        fast: Push tangents with the hand-derived `fast.MLPPushforward` (2x faster, SGD
            only) instead of the generic `vmap(jvp(train))`; both give the same Jacobian.
    """

    width: int = 64
    n_train: int | None = None
    epochs: int = 25
    batch_size: int = 64
    opt: Literal["sgd", "adam"] = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    seeds: tuple[int, ...] = (0, 1)
    data_seed: int = 1
    dtype: Literal["float32", "float64"] = "float32"
    bulk_tol: float = 0.01
    wide_tol: float = 0.1
    n_eps: int = 30
    linear_tol: float = 0.1
    kl_step: float = 1.0
    n_subspace_sizes: int = 8
    variants: bool = True
    nullspace: bool = True
    nullspace_rtol: float = 1e-3
    chunk_size: int | None = None
    memory_budget_mb: int = 1024
    cache_dir: str | None = None
    threads: int | None = 1
    workers: int = 2
    fast: bool = True

    def __post_init__(self) -> None:
        if self.fast and self.opt != "sgd":
            self.fast = False  # the hand-derived pushforward covers SGD only

    def optim(self) -> OptimConfig:
        lr = self.lr if self.lr is not None else (0.1 if self.opt == "sgd" else 3e-3)
        return OptimConfig(opt=self.opt, lr=lr, momentum=self.momentum, epochs=self.epochs)


PRESETS = {
    # Seconds: a width-8 MLP (610 parameters) on 256 images for 5 epochs (20 steps), in
    # this process (worker start-up would cost more than it saves).
    "smoke": Config(width=8, n_train=256, epochs=5, n_eps=7, n_subspace_sizes=3, workers=1),
    # The main job, <= 10 minutes on 2 cores: width 32 (2410 parameters), the full data
    # and schedule (625 steps); four Jacobians (2 seeds, shuffled labels, noise inputs).
    "quick": Config(width=32, n_subspace_sizes=6),
    # The paper's 4810-parameter MLP and its 20-size subspace sweep; chunks cached so an
    # interrupted run resumes; two threads for the 4810 x 4810 SVDs.
    "full": Config(width=64, n_subspace_sizes=20, cache_dir="auto", threads=2),
}

CLAIMS = [
    "A large bulk of training-Jacobian singular values lies within 0.01 of 1",
    "Along the bulk, left and right singular vectors coincide (cos ≈ 1)",
    "Bulk directions change outputs far out of distribution, not on test data",
    "Training restricted to the complement of the bulk matches full training",
    "Bulk subspaces of different seeds overlap far more than random subspaces",
]


# ------------------------------------------------------------------------------ helpers


@dataclass
class Trained:
    """One training run and its Jacobian."""

    name: str
    fm: FlatModel
    data: Digits
    theta0: torch.Tensor
    theta_f: torch.Tensor
    svd: SVD
    bulk: torch.Tensor  # indices with |σ - 1| < bulk_tol


def _dtype(cfg: Config) -> torch.dtype:
    return getattr(torch, cfg.dtype)


def _init(cfg: Config, seed: int) -> FlatModel:
    seed_everything(seed)
    model = MLP(hidden=(cfg.width,)).init_(torch.Generator().manual_seed(seed))
    return FlatModel(model.to(_dtype(cfg)))


def _chunk_dir(cfg: Config, out: RunDir, name: str) -> tuple[Path, bool]:
    """Where a Jacobian's chunks go, and whether to delete them when it is complete."""
    if cfg.cache_dir is None:
        return out.path / "jacobian_chunks" / name, True
    root = Path(cfg.cache_dir)
    if cfg.cache_dir == "auto":
        import platformdirs

        root = Path(platformdirs.user_cache_dir("minirepro")) / "jacobian"
    return root.expanduser() / name, False


def _fit(
    cfg: Config,
    out: RunDir,
    name: str,
    fm: FlatModel,
    data: Digits,
    pool: Executor | None = None,
) -> Trained:
    """Trains, computes the Jacobian (checkpointed per chunk) and its SVD; logs timings."""
    optim = cfg.optim()
    train_fn = partial(train, data=data, apply=fm.apply, cfg=optim)
    theta0 = fm.flat()
    t0 = time.perf_counter()
    theta_f = train_fn(theta0)
    t_train = time.perf_counter() - t0

    keys = ("width", "n_train", "epochs", "batch_size", "data_seed", "dtype")
    setup = {k: v for k, v in asdict(cfg).items() if k in keys}
    tag = json.dumps({"name": name, **setup, **asdict(optim)}, sort_keys=True)
    # One folder per computation: a changed config starts afresh instead of clashing.
    digest = hashlib.sha256(tag.encode() + theta0.numpy().tobytes()).hexdigest()[:12]
    folder, delete = _chunk_dir(cfg, out, f"{name}-w{cfg.width}-{digest}")
    p, b = fm.n_params, data.batch_size
    bytes_per_tangent = theta0.element_size() * (4 * p + 6 * b * (64 + cfg.width + 10))
    t0 = time.perf_counter()
    jac = training_jacobian(
        train_fn,
        theta0,
        chunk_size=cfg.chunk_size,
        bytes_per_tangent=bytes_per_tangent,
        memory_budget=cfg.memory_budget_mb << 20,
        checkpoint_dir=folder,
        tag=tag,
        executor=pool,
        pushforward=MLPPushforward(data, cfg.width, optim) if cfg.fast else None,
    )
    t_jac = time.perf_counter() - t0
    t0 = time.perf_counter()
    svd = svd64(jac)
    t_svd = time.perf_counter() - t0
    if delete:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the shared parent, once empty
            folder.parent.rmdir()
    out.log(
        stage="jacobian", run=name, n_params=p, seconds_train=t_train,
        seconds_jacobian=t_jac, seconds_svd=t_svd, test_loss=heldout_loss(theta_f, data, fm.apply),
    )  # fmt: skip
    bulk = ex.bulk_indices(svd.S, cfg.bulk_tol)
    return Trained(name, fm, data, theta0, theta_f, svd, bulk)


def _ood_inputs(data: Digits, seed: int) -> dict[str, torch.Tensor]:
    """The reference's probes: train, test, N(0, 1) noise images and inverted test images."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(data.x_test.shape, generator=g, dtype=data.x_test.dtype)
    return {
        "train": data.x_train,
        "test": data.x_test,
        "noise": noise,
        "inverted": 1 - data.x_test,
    }


def _complement_dim(t: Trained) -> int:
    return t.theta0.numel() - len(t.bulk)


def _subspace_tasks(t: Trained, cfg: Config, k: int, kinds: tuple[str, ...]) -> tuple:
    """Arguments of `train_in_subspaces` for each kind of k-dim subspace of `t`."""
    bases = ex.subspace_bases(t.svd, k)
    stacked = torch.stack([bases[kind] for kind in kinds]).to(t.theta0.dtype)  # (n, k, P)
    return (t.theta0, stacked, t.data, t.fm.apply, cfg.optim())


def _map(pool: Executor | None, fn, tasks: list[tuple]) -> list:
    """`[fn(*args) for args in tasks]`, in the pool's processes when there is one."""
    if pool is None:
        return [fn(*args) for args in tasks]
    return [f.result() for f in [pool.submit(fn, *args) for args in tasks]]


# --------------------------------------------------------------------------------- run


def run(cfg: Config, out: RunDir) -> list[Result]:
    """Runs every experiment of the paper and checks the claims.

    Args:
        cfg: The run's config (see `PRESETS`).
        out: The run folder; metrics go to metrics.jsonl, figures to figures/.

    Returns:
        One Result per claim in `CLAIMS` (the KL claim twice: noise and inverted inputs).
    """
    with num_threads(cfg.threads), contextlib.ExitStack() as stack:
        pool = stack.enter_context(process_pool(cfg.workers)) if cfg.workers > 1 else None
        return _run(cfg, out, pool)


def _run(cfg: Config, out: RunDir, pool: Executor | None) -> list[Result]:
    start, cpu_start = time.perf_counter(), time.process_time()
    data = load_digits_data(n_train=cfg.n_train, batch_size=cfg.batch_size, dtype=_dtype(cfg))
    optim = cfg.optim()
    seeds = list(cfg.seeds)
    runs = [_fit(cfg, out, f"seed{s}", _init(cfg, s), data, pool) for s in seeds]
    main = runs[0]
    P = main.theta0.numel()
    # Weights reading a pixel that is 0 in every training image never get a gradient: each
    # is an exact singular value 1 with u = v. They are part of the bulk, but only a part.
    dead_pixels = data.x_train.abs().sum(0) == 0  # (64,)
    dead = int(dead_pixels.sum())
    dead_params = torch.zeros(P, dtype=torch.bool)
    dead_params[: cfg.width * 64].view(cfg.width, 64)[:, dead_pixels] = True  # layers.0.weight
    out.log(stage="data", n_train=len(data.x_train), dead_pixels=dead,
            dead_directions=dead * cfg.width)  # fmt: skip

    # 1. Spectrum, 2. alignment, 4. KL on outputs, per seed.
    per_seed: dict[str, list[float]] = {k: [] for k in ("bulk_frac", "cos", "kl_noise", "kl_inv")}
    nan = float("nan")
    for s, t in zip(seeds, runs):
        S = t.svd.S
        narrow, wide = ex.regions(S, cfg.bulk_tol), ex.regions(S, cfg.wide_tol)
        cos = ex.alignment(t.svd)
        nonbulk = torch.ones(len(S), dtype=torch.bool)
        nonbulk[t.bulk] = False
        # Bulk directions off the dead-pixel weights: their test KL is not trivially 0.
        live = t.bulk[(t.svd.Vh[t.bulk][:, dead_params] ** 2).sum(1) < 0.01]
        kls = ex.output_kl(
            t.fm.apply, t.theta_f, t.svd.Vh, _ood_inputs(data, cfg.data_seed), step=cfg.kl_step
        )
        med = {k: float(v[live].median()) if len(live) else nan for k, v in kls.items()}
        per_seed["bulk_frac"].append(narrow.bulk / len(S))
        per_seed["cos"].append(float(cos[t.bulk].mean()) if len(t.bulk) else nan)
        per_seed["kl_noise"].append(med["noise"] / med["test"])
        per_seed["kl_inv"].append(med["inverted"] / med["test"])
        out.log(
            stage="spectrum", seed=s, n_params=P, sigma_max=float(S[0]), sigma_min=float(S[-1]),
            **{f"{k}@{narrow.tol:g}": v for k, v in asdict(narrow).items() if k != "tol"},
            **{f"{k}@{wide.tol:g}": v for k, v in asdict(wide).items() if k != "tol"},
            bulk_live=len(live),
            cos_bulk_mean=per_seed["cos"][-1],
            cos_bulk_live_mean=float(cos[live].mean()) if len(live) else None,
            cos_bulk_min=float(cos[t.bulk].min()) if len(t.bulk) else None,
            cos_nonbulk_abs_mean=float(cos[nonbulk].abs().mean()) if nonbulk.any() else None,
            **{f"kl_bulk_live_median_{k}": v for k, v in med.items()},
            **{f"kl_bulk_all_median_{k}": float(v[t.bulk].median()) for k, v in kls.items() if len(t.bulk)},
            **{f"kl_nonbulk_median_{k}": float(v[nonbulk].median()) for k, v in kls.items() if nonbulk.any()},
        )  # fmt: skip
        if s == seeds[0]:
            title = (
                f"training Jacobian, seed {s}: {narrow.bulk}/{len(S)} within {cfg.bulk_tol:g} of 1"
            )
            out.savefig(plots.plot_spectrum(S, t.bulk, cfg.bulk_tol, title), "spectrum")
            out.savefig(plots.plot_alignment(cos, t.bulk), "alignment")
            out.savefig(plots.plot_kl(kls, t.bulk), "kl_after_step")

    # 3. Linearity along the top direction and the middle of the bulk (float64 runs).
    t0 = time.perf_counter()
    eps = torch.logspace(-3, 3, cfg.n_eps, dtype=torch.float64)
    probes = {"top": 0}
    # The bulk vector nearest the middle of the bulk that is not a dead-pixel direction
    # (those are trivially linear: training never touches them).
    dead_mass = (main.svd.Vh[:, dead_params] ** 2).sum(1)  # (K,)
    live = [int(i) for i in main.bulk if dead_mass[i] < 0.01]
    if live:
        middle = int(main.bulk[len(main.bulk) // 2])
        probes["bulk"] = min(live, key=lambda i: abs(i - middle))
    # functional_call swaps in every parameter, so the same apply runs float64 thetas.
    lin = ex.linearity(
        partial(train, data=data.to(torch.float64), apply=main.fm.apply, cfg=optim),
        main.theta0.double(),
        main.svd,
        list(probes.values()),
        eps,
    )
    for name, r in zip(probes, lin):
        out.log(
            stage="linearity", direction=name, index=r.index, sigma=r.sigma,
            dead_pixel_mass=float(dead_mass[r.index]),
            linear_range=r.linear_range(cfg.linear_tol), eps=r.eps, along=r.along,
            off=r.off, rel_err=r.rel_err,
        )  # fmt: skip
    out.log(stage="linearity", seconds=time.perf_counter() - t0)
    out.savefig(plots.plot_linearity(lin, list(probes)), "linearity")

    # 5. Training restricted to subspaces of growing size (sweep on the first seed) and,
    # for every seed, to the complement of its bulk.
    t0 = time.perf_counter()
    kinds = ("bulk", "complement", "chaotic", "stable")
    k_c = _complement_dim(main)
    # Sizes P/n, 2P/n, ..., (n-1)P/n and P - n_bulk; k = P is unconstrained training itself.
    ks = torch.linspace(P / cfg.n_subspace_sizes, P, cfg.n_subspace_sizes).round().int().tolist()
    ks = sorted({k for k in ks if k < P} | ({k_c} if 0 < k_c < P else set()))
    # One task per (run, k): the sweep on the first seed, then each other seed's complement.
    jobs = [(main, k, kinds) for k in ks]
    jobs += [
        (t, _complement_dim(t), ("complement",)) for t in runs[1:] if 0 < _complement_dim(t) < P
    ]
    finals = _map(pool, train_in_subspaces, [_subspace_tasks(t, cfg, k, kk) for t, k, kk in jobs])
    sweep = {kind: [] for kind in kinds}
    complement = {}
    for (t, k, kk), thetas in zip(jobs, finals):
        losses = {kind: heldout_loss(th, t.data, t.fm.apply) for kind, th in zip(kk, thetas)}
        if t is main:
            for kind in kinds:
                sweep[kind].append(losses[kind])
            out.log(stage="subspace_training", seed=seeds[0], k=k, **losses)
        if k == _complement_dim(t):
            complement[t.name] = losses["complement"]
    full_losses = [heldout_loss(t.theta_f, data, t.fm.apply) for t in runs]
    comp_ratio = []
    for s, t, full in zip(seeds, runs, full_losses):
        loss = complement.get(t.name, float("nan"))  # NaN: no bulk, or no complement
        comp_ratio.append(loss / full)
        out.log(stage="complement_training", seed=s, k=_complement_dim(t), test_loss=loss,
                full_test_loss=full)  # fmt: skip
    out.log(stage="subspace_training", seconds=time.perf_counter() - t0)
    out.savefig(plots.plot_subspace_training(ks, sweep, full_losses[0], k_c), "subspace_training")

    # 6. Bulk subspaces: across seeds, and for shuffled labels / noise inputs.
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.data_seed)
    overlaps: dict[str, tuple[float, float]] = {}

    def compare(name: str, other: Trained) -> None:
        a, b = main.svd.Vh[main.bulk], other.svd.Vh[other.bulk]
        if len(a) == 0 or len(b) == 0:
            overlaps[name] = (float("nan"), float("nan"))
            return
        overlaps[name] = (ex.subspace_overlap(a, b), ex.random_subspace_overlap(a, len(b), g))
        out.log(stage="bulk_overlap", pair=name, dim_a=len(a), dim_b=len(b),
                overlap=overlaps[name][0], random=overlaps[name][1])  # fmt: skip

    for s, t in zip(seeds[1:], runs[1:]):
        compare(f"seed {seeds[0]} vs {s}", t)
    spectra = {"digits": main.svd.S}
    if cfg.variants:
        for name, variant in [
            ("shuffled labels", shuffled_labels(data, cfg.data_seed)),
            ("noise inputs", noise_inputs(data, cfg.data_seed)),
        ]:
            t = _fit(cfg, out, name.replace(" ", "_"), _init(cfg, seeds[0]), variant, pool)
            spectra[name] = t.svd.S
            out.log(stage="spectrum", variant=name, **asdict(ex.regions(t.svd.S, cfg.bulk_tol)))
            compare(name, t)
        out.savefig(plots.plot_variants(spectra, cfg.bulk_tol), "variants")
    out.savefig(plots.plot_overlaps(overlaps), "bulk_overlap")
    out.log(stage="bulk_overlap", seconds=time.perf_counter() - t0)

    # 7. The bulk and the nullspace of the parameter -> output Jacobian on training data.
    if cfg.nullspace and len(main.bulk):
        t0 = time.perf_counter()
        gram = ex.output_gram(main.fm.apply, main.theta_f.double(), data.x_train.double())
        over_bulk, n_null, _ = ex.nullspace_overlap(
            gram, main.svd.Vh[main.bulk], cfg.nullspace_rtol
        )
        nonbulk = torch.ones(P, dtype=torch.bool)
        nonbulk[main.bulk] = False
        over_rest, _, _ = ex.nullspace_overlap(gram, main.svd.Vh[nonbulk], cfg.nullspace_rtol)
        sens = torch.einsum("ip,pq,iq->i", main.svd.Vh, gram, main.svd.Vh).clamp_min(0).sqrt()
        out.log(
            stage="nullspace", null_dim=n_null, n_params=P, overlap_bulk=over_bulk,
            overlap_nonbulk=over_rest, overlap_random=n_null / P,
            sensitivity_bulk_median=float(sens[main.bulk].median()),
            sensitivity_nonbulk_median=float(sens[nonbulk].median()) if nonbulk.any() else None,
            seconds=time.perf_counter() - t0,
        )  # fmt: skip
        title = (
            f"nullspace dim {n_null}/{P}: bulk overlap {over_bulk:.2f}, "
            f"non-bulk {over_rest:.2f}, random {n_null / P:.2f}"
        )
        out.savefig(plots.plot_nullspace(sens, main.bulk, title), "nullspace")

    out.log(
        stage="total", seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start, threads=torch.get_num_threads(),
    )  # fmt: skip
    return _results(cfg, seeds, per_seed, comp_ratio, overlaps, P)


def _results(
    cfg: Config,
    seeds: list[int],
    per_seed: dict[str, list[float]],
    comp_ratio: list[float],
    overlaps: dict[str, tuple[float, float]],
    n_params: int,
) -> list[Result]:
    size = f"width {cfg.width}, {n_params} params"
    results = [
        Result.check(
            CLAIMS[0],
            "~3000/4810 = 0.62",
            per_seed["bulk_frac"],
            AtLeast(0.30),
            seeds,
            unit="fraction",
            note=f"|σ-1| < {cfg.bulk_tol:g}; {size}",
        ),
        Result.check(
            CLAIMS[1],
            "≈ 1 (trial: 0.998)",
            per_seed["cos"],
            AtLeast(0.99),
            seeds,
            note="mean cos(u_i, v_i) over the bulk",
        ),
        Result.check(
            CLAIMS[2] + " (noise inputs)",
            "~1e5 (trial)",
            per_seed["kl_noise"],
            AtLeast(100),
            seeds,
            unit="x",
            note="median KL on N(0,1) images / on test, unit steps along bulk v_i (dead-pixel ones excluded)",
        ),
        Result.check(
            CLAIMS[2] + " (inverted images)",
            "~1e5 (trial)",
            per_seed["kl_inv"],
            AtLeast(100),
            seeds,
            unit="x",
            note="median KL on 1 - X_test / on test, unit steps along bulk v_i (dead-pixel ones excluded)",
        ),
        Result.check(
            CLAIMS[3],
            "matches (same test loss)",
            comp_ratio,
            AtMost(1.10),
            seeds,
            unit="x",
            note="test loss restricted to the P - n_bulk non-bulk directions / full",
        ),
    ]
    pairs = [k for k in overlaps if k.startswith("seed ")]
    if pairs:
        ov, rnd = overlaps[pairs[0]]
        excess = (ov - rnd) / (1 - rnd)
        results.append(
            Result.check(
                CLAIMS[4],
                "substantial overlap",
                excess,
                AtLeast(0.5),
                seeds[:1],
                note=f"{pairs[0]}: mean cos² {ov:.3f} vs random {rnd:.3f}; value is "
                "(overlap - random) / (1 - random)",
            )  # fmt: skip
        )
    return results
