"""The reproductions' experiments, one function each: train a small model with the library,
sample it, and measure. `repro.run` turns the measurements into Results and figures.

Each function takes the run's `Config` (fields prefixed by experiment) and a seed, and returns
a dict: numbers under plain keys, arrays for the figures under keys starting with "_".
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from minirepro.core.train import TrainConfig, train
from minirepro.papers.flow.data import (
    checkerboard,
    checkerboard_tokens,
    load_digits,
    sphere_uniform,
    tokens_to_points,
    vmf_mixture,
    vmf_mixture_centers,
)
from minirepro.papers.flow.discrete import DiscreteEulerSolver, MixtureDiscretePath
from minirepro.papers.flow.guidance import GuidedVelocity, drop_labels
from minirepro.papers.flow.losses import generalized_kl, velocity_mse
from minirepro.papers.flow.manifolds import Sphere
from minirepro.papers.flow.metrics import checkerboard_accuracy, mmd_permutation_test
from minirepro.papers.flow.models import PosteriorMLP, VelocityMLP
from minirepro.papers.flow.paths import CondOTPath
from minirepro.papers.flow.riemannian import GeodesicPath, RiemannianODESolver, TangentVelocity
from minirepro.papers.flow.schedulers import (
    CondOTScheduler,
    CosineScheduler,
    PolynomialScheduler,
    RescheduledVelocity,
)
from minirepro.papers.flow.solvers import ODESolver

if TYPE_CHECKING:
    from minirepro.papers.flow.repro import Config

__all__ = [
    "run_checkerboard",
    "run_digits",
    "run_discrete_checkerboard",
    "run_likelihood",
    "run_sphere",
    "train_flow",
]


def train_flow(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    get_batch: Callable[[int, torch.Generator], Any],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    ema: float = 0.0,
    log: Callable[..., None] | None = None,
    precision: str = "fp32",
) -> tuple[nn.Module, float]:
    """Trains with the shared loop (AdamW, warmup + cosine, clipping); returns the model
    to sample (an EMA copy when `ema` > 0) and the final loss. `precision` is the
    trainer's ("fp32", "bf16", "auto"); sampling and likelihoods always run in fp32.

    No weight decay: these small regressors fit a fixed data distribution, and decay only
    biases the velocity toward zero.
    """
    cfg = TrainConfig(
        steps=steps,
        lr=lr,
        weight_decay=0.0,
        betas=(0.9, 0.99),
        warmup_steps=min(100, steps // 10),
        min_lr_ratio=0.01,
        grad_clip=1.0,
        batch_size=batch_size,
        log_every=max(1, steps // 20),
        seed=seed,
        precision=precision,
    )
    shadow = copy.deepcopy(model) if ema > 0 else None

    def on_step(step: int, metrics: dict[str, float]) -> None:
        if shadow is not None:
            with torch.no_grad():
                for s, p in zip(shadow.parameters(), model.parameters()):
                    s.lerp_(p, 1 - ema)
        if log is not None and (step % cfg.log_every == 0 or step == steps):
            log(step=step, loss=metrics["loss"])

    state = train(model, cfg, get_batch, loss_fn=loss_fn, on_step=on_step)
    final = (shadow or model).eval()
    return final, state.history[-1]["loss"]


def _timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    out = fn()
    out["seconds"] = time.perf_counter() - start
    return out


# ------------------------------------------------------------------ 2D checkerboard (continuous)
def run_checkerboard(
    cfg: Config, seed: int, log: Callable[..., None] | None = None
) -> dict[str, Any]:
    """Continuous flow matching (CondOT path) on the 2D checkerboard."""

    def go() -> dict[str, Any]:
        torch.manual_seed(seed)
        scale = cfg.cb_data_scale
        model = VelocityMLP(
            2, cfg.cb_width, cfg.cb_depth, fourier_features=cfg.cb_fourier_features,
            fourier_scale=cfg.cb_fourier_scale, seed=seed,
        )  # fmt: skip
        path = CondOTPath()

        def get_batch(i: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
            b = cfg.cb_batch
            return (
                torch.randn(b, 2, generator=g),
                checkerboard(b, g) / scale,
                torch.rand(b, generator=g),
            )

        def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
            s = path.sample(*batch)
            return velocity_mse(m(s.x_t, s.t), s.dx_t)

        model, loss = train_flow(
            model, loss_fn, get_batch, steps=cfg.cb_steps, batch_size=cfg.cb_batch,
            lr=cfg.cb_lr, seed=seed, precision=cfg.precision, ema=cfg.ema, log=log,
        )  # fmt: skip
        g = torch.Generator().manual_seed(10_000 + seed)
        x0 = torch.randn(cfg.cb_samples, 2, generator=g)
        grid = torch.linspace(0, 1, 5)
        with torch.no_grad():
            traj = ODESolver(model).sample(
                x0, method=cfg.cb_method, n_steps=cfg.cb_sample_steps, time_grid=grid,
                return_intermediates=True,
            ) * scale  # fmt: skip
            # The same model sampled along the cosine schedule, without retraining.
            cosine = RescheduledVelocity(model, CondOTScheduler(), CosineScheduler())
            x_cos = (
                ODESolver(cosine).sample(x0, method=cfg.cb_method, n_steps=cfg.cb_sample_steps)
                * scale
            )
        return {
            "accuracy": checkerboard_accuracy(traj[-1]),
            "accuracy_rescheduled_cosine": checkerboard_accuracy(x_cos),
            "accuracy_source": checkerboard_accuracy(x0),  # N(0, I): the floor
            "final_loss": loss,
            "_traj": traj,
            "_data": checkerboard(cfg.cb_samples, torch.Generator().manual_seed(seed)),
        }

    return _timed(go)


# --------------------------------------------------------------------- 2D checkerboard (tokens)
def run_discrete_checkerboard(
    cfg: Config, seed: int, log: Callable[..., None] | None = None
) -> dict[str, Any]:
    """Discrete flow matching (mixture path, uniform source, generalized KL) on a token grid."""

    def go() -> dict[str, Any]:
        torch.manual_seed(seed)
        k = cfg.dcb_bins
        model = PosteriorMLP(2, k, cfg.dcb_width, cfg.dcb_depth)
        # "kappa_t = t^2" as in the spec's discrete example (polynomial scheduler, n = 2)
        path = MixtureDiscretePath(PolynomialScheduler(2))

        def get_batch(i: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            b = cfg.dcb_batch
            x1 = checkerboard_tokens(b, k, g)
            x0 = torch.randint(0, k, (b, 2), generator=g)
            # t < 1: the rate d_kappa / (1 - kappa) is infinite at t = 1
            t = torch.rand(b, generator=g) * (1 - 1e-3)
            x_t = path.sample(x0, x1, t, generator=g).x_t
            return x1, x_t, t, x0

        def loss_fn(m: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
            x1, x_t, t, _ = batch
            return generalized_kl(m(x_t, t), x1, x_t, t, path)

        model, loss = train_flow(
            model, loss_fn, get_batch, steps=cfg.dcb_steps, batch_size=cfg.dcb_batch,
            lr=cfg.dcb_lr, seed=seed, precision=cfg.precision, log=log,
        )  # fmt: skip
        g = torch.Generator().manual_seed(20_000 + seed)
        x0 = torch.randint(0, k, (cfg.dcb_samples, 2), generator=g)
        x1 = DiscreteEulerSolver(model, path, k).sample(
            x0, n_steps=cfg.dcb_sample_steps, generator=g
        )
        return {
            "accuracy": checkerboard_accuracy(tokens_to_points(x1, k)),
            "accuracy_source": checkerboard_accuracy(tokens_to_points(x0, k)),
            "final_loss": loss,
            "_samples": x1,
            "_data": checkerboard_tokens(cfg.dcb_samples, k, torch.Generator().manual_seed(seed)),
        }

    return _timed(go)


# ---------------------------------------------------------------------------------- the sphere
def run_sphere(cfg: Config, seed: int, log: Callable[..., None] | None = None) -> dict[str, Any]:
    """Riemannian flow matching on S^2: uniform source to a von Mises-Fisher mixture."""

    def go() -> dict[str, Any]:
        torch.manual_seed(seed)
        sphere = Sphere()
        centers = vmf_mixture_centers(cfg.sph_components)
        model = TangentVelocity(VelocityMLP(3, cfg.sph_width, cfg.sph_depth), sphere)
        path = GeodesicPath(CondOTScheduler(), sphere)

        def get_batch(i: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
            b = cfg.sph_batch
            x1 = vmf_mixture(b, centers, cfg.sph_kappa, g)
            return sphere_uniform(b, 3, g), x1, torch.rand(b, generator=g)

        def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
            s = path.sample(*batch)
            return velocity_mse(m(s.x_t, s.t), s.dx_t)

        model, loss = train_flow(
            model, loss_fn, get_batch, steps=cfg.sph_steps, batch_size=cfg.sph_batch,
            lr=cfg.sph_lr, seed=seed, precision=cfg.precision, log=log,
        )  # fmt: skip
        g = torch.Generator().manual_seed(30_000 + seed)
        x0 = sphere_uniform(cfg.sph_samples, 3, g)
        with torch.no_grad():
            x1 = RiemannianODESolver(sphere, model).sample(
                x0, method="midpoint", n_steps=cfg.sph_sample_steps
            )
        target = vmf_mixture(cfg.sph_samples, centers, cfg.sph_kappa, g)
        _, p_model = mmd_permutation_test(x1, target, cfg.sph_permutations, g)
        _, p_source = mmd_permutation_test(x0, target, cfg.sph_permutations, g)
        return {
            "off_manifold": (x1.norm(dim=-1) - 1).abs().max().item(),
            "mmd_p_value": p_model,
            "mmd_p_value_source": p_source,  # uniform vs target: the test must reject
            "final_loss": loss,
            "_samples": x1,
            "_data": target,
        }

    return _timed(go)


# ------------------------------------------------------------------------ digits with guidance
def train_digits_model(
    cfg: Config, seed: int, log: Callable[..., None] | None = None
) -> tuple[VelocityMLP, Any]:
    """A class-conditional velocity MLP on the real digits, trained with label dropout."""
    torch.manual_seed(seed)
    digits = load_digits(seed=0)  # one fixed split: the classifier is trained on it too
    model = VelocityMLP(
        64, cfg.dig_width, cfg.dig_depth, n_classes=10, time_features=cfg.dig_time_features
    )
    path = CondOTPath()
    x_train, y_train = digits.x_train, digits.y_train

    def get_batch(i: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b = cfg.dig_batch
        idx = torch.randint(0, len(x_train), (b,), generator=g)
        y = drop_labels(y_train[idx], cfg.dig_label_dropout, model.null_label, g)
        return torch.randn(b, 64, generator=g), x_train[idx], torch.rand(b, generator=g), y

    def loss_fn(m: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        x0, x1, t, y = batch
        s = path.sample(x0, x1, t)
        return velocity_mse(m(s.x_t, s.t, y=y), s.dx_t)

    model, _ = train_flow(
        model, loss_fn, get_batch, steps=cfg.dig_steps, batch_size=cfg.dig_batch,
        lr=cfg.dig_lr, seed=seed, precision=cfg.precision, ema=cfg.ema, log=log,
    )  # fmt: skip
    return model, digits


def digit_classifier(digits: Any) -> Any:
    """An RBF support-vector classifier on the real training digits (pixels in [-1, 1])."""
    from sklearn.svm import SVC

    return SVC(C=10.0, gamma="scale").fit(digits.x_train.numpy(), digits.y_train.numpy())


def run_digits(cfg: Config, seed: int, log: Callable[..., None] | None = None) -> dict[str, Any]:
    """Class-conditional generation of real 8x8 digits with classifier-free guidance."""

    def go() -> dict[str, Any]:
        model, digits = train_digits_model(cfg, seed, log)
        clf = digit_classifier(digits)
        out: dict[str, Any] = {
            "classifier_test_accuracy": float(
                clf.score(digits.x_test.numpy(), digits.y_test.numpy())
            ),
        }
        g = torch.Generator().manual_seed(40_000 + seed)
        n = cfg.dig_samples_per_class
        y = torch.arange(10).repeat_interleave(n)
        x0 = torch.randn(10 * n, 64, generator=g)
        weights = sorted({0.0, 1.0, cfg.dig_guidance})
        for w in weights:
            with torch.no_grad():
                x = ODESolver(GuidedVelocity(model, w, model.null_label)).sample(
                    x0, method="midpoint", n_steps=cfg.dig_sample_steps, y=y
                ).clamp(-1, 1)  # fmt: skip
            acc = float((torch.as_tensor(clf.predict(x.numpy())) == y).float().mean())
            out[f"accuracy_w{w:g}"] = acc
            if w == cfg.dig_guidance:
                out["accuracy"] = acc
                out["_samples"] = x
                # Memorisation check: how close samples come to their nearest training digit,
                # against the same distance for real test digits.
                out["nn_distance_generated"] = _nearest_distance(x, digits.x_train)
                out["nn_distance_test"] = _nearest_distance(digits.x_test, digits.x_train)
        out["_model"] = model
        out["_digits"] = digits
        return out

    return _timed(go)


def _nearest_distance(x: Tensor, reference: Tensor) -> float:
    """Median Euclidean distance from each row of x to its nearest row of `reference`."""
    return torch.cdist(x, reference).min(dim=1).values.median().item()


# --------------------------------------------------------------------- exact vs Hutchinson
def run_likelihood(
    cfg: Config, seed: int, model: nn.Module, x: Tensor, log: Callable[..., None] | None = None
) -> dict[str, Any]:
    """log p(x) of a trained model, with the exact divergence and with Hutchinson's estimator."""

    def go() -> dict[str, Any]:
        solver = ODESolver(model)
        kw = {"method": "midpoint", "n_steps": cfg.ll_steps}
        with torch.no_grad():
            _, exact = solver.log_likelihood(x, exact_divergence=True, **kw)
            g = torch.Generator().manual_seed(50_000 + seed)
            _, hutch = solver.log_likelihood(x, exact_divergence=False, generator=g, **kw)
        d = x[0].numel()
        rel = abs(hutch.mean().item() - exact.mean().item()) / abs(exact.mean().item())
        return {
            "relative_difference": rel,
            "exact_nats_per_dim": -exact.mean().item() / d,
            "hutchinson_nats_per_dim": -hutch.mean().item() / d,
            "_exact": exact,
            "_hutchinson": hutch,
        }

    return _timed(go)


def digits_likelihood_points(digits: Any, n: int, seed: int) -> Tensor:
    """n test digits with uniform dequantisation noise (one pixel level = 1/8 in [-1, 1])."""
    g = torch.Generator().manual_seed(60_000 + seed)
    x = digits.x_test[:n]
    return x + (torch.rand(x.shape, generator=g) - 0.5) / 8
