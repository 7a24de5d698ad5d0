"""The reference's setup: scikit-learn digits, a GELU MLP, and training as a pure function.

Everything here mirrors EleutherAI/training-jacobian (experiments notebook, JAX/Flax):

- data: `load_digits`, `X / 16`, `train_test_split(test_size=197, random_state=0)`, so
  1600 training images in 25 batches of 64, visited in the same order every epoch;
- model: Dense(64 -> width) -> GELU (tanh form, Flax's default) -> Dense(width -> 10), with
  Flax's initialisation (LeCun truncated-normal kernels, normal(width**-0.5) biases);
- optimiser: SGD with momentum 0.9, lr 0.1 with cosine decay to 0 over all steps (optax's
  `cosine_decay_schedule`), or Adam 3e-3 with the same decay.

Training is `train(theta0, data, model, cfg) -> theta_final`, a pure function of the flat
parameter vector built from `torch.func.functional_call` and `torch.func.grad`, so that
`torch.func.jvp` and `vmap` can differentiate straight through the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

__all__ = [
    "MLP",
    "Digits",
    "FlatModel",
    "OptimConfig",
    "Subspace",
    "load_digits_data",
    "lr_at",
    "noise_inputs",
    "shuffled_labels",
    "heldout_loss",
    "train",
    "train_in_subspaces",
    "train_subspace",
]

ApplyFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Flax's `lecun_normal`: a normal truncated at 2 std, rescaled to keep variance 1 / fan_in.
_TRUNC_STD = 0.87962566103423978


# ---------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Digits:
    """Train/test tensors, with the training set already cut into its fixed batches.

    Attributes:
        x_train: (N, 64) pixel intensities in [0, 1].
        y_train: (N,) labels 0..9.
        x_test: (M, 64).
        y_test: (M,).
        batch_size: Batch size used to cut the training set.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    batch_size: int = 64

    @property
    def n_batches(self) -> int:
        return self.x_train.shape[0] // self.batch_size

    def batches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed batches: (n_batches, B, 64) inputs and (n_batches, B) labels.

        A remainder smaller than a batch is dropped (1600 = 25 x 64 has none).
        """
        n = self.n_batches * self.batch_size
        xb = self.x_train[:n].reshape(self.n_batches, self.batch_size, -1)  # (nb, B, 64)
        yb = self.y_train[:n].reshape(self.n_batches, self.batch_size)  # (nb, B)
        return xb, yb

    def to(self, dtype: torch.dtype) -> Digits:
        """The same data with float inputs cast to `dtype`."""
        return self.replace(x_train=self.x_train.to(dtype), x_test=self.x_test.to(dtype))

    def replace(self, **changes: torch.Tensor) -> Digits:
        fields = {k: getattr(self, k) for k in ("x_train", "y_train", "x_test", "y_test")}
        return Digits(**{**fields, **changes}, batch_size=self.batch_size)


def load_digits_data(
    *,
    test_size: int = 197,
    n_train: int | None = None,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
) -> Digits:
    """scikit-learn's 8x8 digits (1797 images, shipped with the package), split as the reference.

    Args:
        test_size: Held-out images; the reference's `train_test_split(test_size=197,
            random_state=0)` leaves 1600 for training.
        n_train: Keep only the first `n_train` training images (smaller presets).
        batch_size: Batch size of the fixed batches.
        dtype: Float dtype of the inputs.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x / 16.0  # the reference's normalisation to [0, 1]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=0)
    if n_train is not None:
        x_tr, y_tr = x_tr[:n_train], y_tr[:n_train]
    return Digits(
        x_train=torch.as_tensor(x_tr, dtype=dtype),
        y_train=torch.as_tensor(y_tr, dtype=torch.long),
        x_test=torch.as_tensor(x_te, dtype=dtype),
        y_test=torch.as_tensor(y_te, dtype=torch.long),
        batch_size=batch_size,
    )


def shuffled_labels(data: Digits, seed: int) -> Digits:
    """The same inputs with the training labels permuted (the paper's shuffled-label run)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(data.y_train.shape[0], generator=g)
    return data.replace(y_train=data.y_train[perm])


def noise_inputs(data: Digits, seed: int) -> Digits:
    """Training inputs replaced by uniform [0, 1) noise, labels kept (the paper's noise run)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(data.x_train.shape, generator=g, dtype=data.x_train.dtype)
    return data.replace(x_train=x)


# --------------------------------------------------------------------------------- model


class MLP(nn.Module):
    """Dense -> GELU -> ... -> Dense, initialised as Flax's `nn.Dense` in the reference.

    Args:
        d_in: Input features (64 pixels).
        hidden: Hidden widths; the paper uses (64,), giving 4810 parameters.
        d_out: Classes (10).
    """

    def __init__(self, d_in: int = 64, hidden: Sequence[int] = (64,), d_out: int = 10):
        super().__init__()
        sizes = [d_in, *hidden, d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        # The reference's output bias reuses the last hidden layer's init scale.
        self._bias_std = [w**-0.5 for w in hidden] + [hidden[-1] ** -0.5 if hidden else 1.0]

    @torch.no_grad()
    def init_(self, generator: torch.Generator) -> MLP:
        """Flax init: kernels LeCun truncated normal, biases normal(std=width**-0.5)."""
        for layer, bias_std in zip(self.layers, self._bias_std):
            std = math.sqrt(1.0 / layer.in_features) / _TRUNC_STD
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std, generator=generator)
            layer.bias.normal_(0.0, bias_std, generator=generator)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.gelu(layer(x), approximate="tanh")  # Flax's nn.gelu is the tanh form
        return self.layers[-1](x)


class FlatModel:
    """A module seen as a function of one flat parameter vector.

    `apply(theta, x)` splits `theta` into the module's parameter shapes and calls the module
    with `torch.func.functional_call`, so any `torch.func` transform can act on `theta`.

    Args:
        module: The module; its current parameters define the layout (and `flat()`).
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.names = [n for n, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.sizes = [p.numel() for _, p in module.named_parameters()]

    @property
    def n_params(self) -> int:
        return sum(self.sizes)

    def flat(self) -> torch.Tensor:
        """The module's current parameters as one detached vector, shape (P,)."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """(P,) -> {name: tensor of the parameter's shape} (views into `theta`)."""
        parts = torch.split(theta, self.sizes)
        return {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}

    def apply(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (..., d_out) of inputs (..., d_in) under parameters `theta` (P,)."""
        return functional_call(self.module, self.unflatten(theta), (x,))


# ------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class OptimConfig:
    """The reference's optimiser and schedule.

    Attributes:
        opt: "sgd" (the paper's main runs) or "adam".
        lr: Peak learning rate; "cosine_decay_schedule(0.1, num_steps)" for SGD and
            3e-3 for Adam in the reference.
        momentum: SGD momentum ("optax.sgd(learning_rate=sched, momentum=0.9)").
        epochs: Passes over the fixed batches ("num_epochs: int = 25").
    """

    opt: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    epochs: int = 25
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    eps_root: float = 1e-8  # the reference's `optax.adam(..., eps_root=1e-8)`; keeps sqrt smooth


def lr_at(step: int, total: int, peak: float) -> float:
    """optax.cosine_decay_schedule(peak, total): peak * (1 + cos(pi * step / total)) / 2."""
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def _ce_loss(apply: ApplyFn, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    return F.cross_entropy(apply(theta, x), y)


def train(
    theta0: torch.Tensor,
    data: Digits,
    apply: ApplyFn,
    cfg: OptimConfig,
    *,
    grad_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Trains from `theta0` and returns the final flat parameters; a pure function of theta0.

    Args:
        theta0: (P,) initial parameters (may carry jvp/vmap tangents).
        data: The fixed batches, visited in order each epoch.
        apply: `apply(theta, x) -> logits`.
        cfg: Optimiser settings.
        grad_fn: Optional `grad_fn(theta, x, y) -> (P,)` gradient of the mean cross-entropy;
            defaults to `torch.func.grad` of `apply`.

    Returns:
        (P,) the parameters after `cfg.epochs * data.n_batches` steps.
    """
    if grad_fn is None:
        grad_fn = grad(lambda th, x, y: _ce_loss(apply, th, x, y))
    xb, yb = data.batches()
    total = cfg.epochs * data.n_batches
    theta = theta0
    m = torch.zeros_like(theta0)
    v = torch.zeros_like(theta0)
    step = 0
    for _ in range(cfg.epochs):
        for i in range(data.n_batches):
            g = grad_fn(theta, xb[i], yb[i])
            lr = lr_at(step, total, cfg.lr)
            if cfg.opt == "sgd":
                m = g + cfg.momentum * m  # optax.trace: no dampening
                theta = theta - lr * m
            else:  # optax.adam with eps_root
                b1, b2 = cfg.betas
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                m_hat = m / (1 - b1 ** (step + 1))
                v_hat = v / (1 - b2 ** (step + 1))
                theta = theta - lr * m_hat / (torch.sqrt(v_hat + cfg.eps_root) + cfg.eps)
            step += 1
    return theta


@dataclass(frozen=True)
class Subspace:
    """Training restricted to `theta0 + basis.T @ c`, c starting at 0.

    Attributes:
        theta0: (P,) the initial parameters (the subspace's origin).
        basis: (k, P) orthonormal rows spanning the allowed directions.
    """

    theta0: torch.Tensor
    basis: torch.Tensor

    def apply_fn(self, apply: ApplyFn) -> ApplyFn:
        return lambda c, x: apply(self.theta0 + c @ self.basis, x)


def train_subspace(
    theta0: torch.Tensor, basis: torch.Tensor, data: Digits, apply: ApplyFn, cfg: OptimConfig
) -> torch.Tensor:
    """Trains only the coordinates along `basis` (the reference's `make_apply_subspace`).

    Args:
        theta0: (P,) initial parameters.
        basis: (k, P) orthonormal rows.

    Returns:
        (P,) the final parameters `theta0 + basis.T @ c_final`.
    """
    sub = Subspace(theta0, basis)
    c0 = theta0.new_zeros(basis.shape[0])
    c = train(c0, data, sub.apply_fn(apply), cfg)
    return theta0 + c @ basis


def train_in_subspaces(
    theta0: torch.Tensor, bases: torch.Tensor, data: Digits, apply: ApplyFn, cfg: OptimConfig
) -> torch.Tensor:
    """`train_subspace` for several same-sized bases at once (one `vmap`ped run).

    Args:
        theta0: (P,) initial parameters.
        bases: (n, k, P) n orthonormal bases.

    Returns:
        (n, P) final parameters, one row per basis.
    """
    fn = partial(train_subspace, theta0, data=data, apply=apply, cfg=cfg)
    return torch.func.vmap(fn)(bases)


def heldout_loss(theta: torch.Tensor, data: Digits, apply: ApplyFn) -> float:
    """Mean cross-entropy on the test split (the reference's returned `test_loss`)."""
    with torch.no_grad():
        return float(F.cross_entropy(apply(theta, data.x_test), data.y_test))
