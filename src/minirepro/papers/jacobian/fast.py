"""A hand-derived pushforward for the paper's case: one-hidden-layer GELU MLP, SGD momentum.

`training_jacobian` by default pushes tangents with `vmap(jvp(train))`, which works for any
model but spends most of its time in elementwise ops on (C, B, H) tangent tensors and in
batched matmuls that re-expand the shared inputs (torch.func's batching rules). For the
reference's MLP the forward-mode recursion is short enough to write out, with the C tangents
laid out so that every contraction is one large GEMM:

    a = x W1^T + b1, h = gelu(a), z = h W2^T + b2, dz = (softmax(z) - onehot(y)) / B
    gW2 = dz^T h, gb2 = sum dz, dh = dz W2, da = dh * gelu'(a), gW1 = da^T x, gb1 = sum da
    m <- g + mu m, theta <- theta - lr m

and each line is differentiated once (the tangent of `gelu'(a)` needs `gelu''(a)`). It is
the same forward-mode derivative, checked against `vmap(jvp(train))` and reverse mode in the
tests; `MLPPushforward` is what the repro passes to `training_jacobian(pushforward=...)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minirepro.papers.jacobian.setup import Digits, OptimConfig, lr_at

__all__ = ["MLPPushforward", "gelu_tanh_derivatives"]

_K = math.sqrt(2.0 / math.pi)
_C = 0.044715


def gelu_tanh_derivatives(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and second derivatives of gelu(a) = a/2 (1 + tanh(k (a + c a^3)))."""
    u1 = _K * (1 + 3 * _C * a * a)  # du/da
    u2 = 6 * _K * _C * a  # d2u/da2
    t = torch.tanh(_K * (a + _C * a * a * a))
    s = 1 - t * t  # dtanh/du
    d1 = 0.5 * (1 + t) + 0.5 * a * s * u1
    d2 = s * u1 + 0.5 * a * s * u2 - a * t * s * u1 * u1
    return d1, d2


@dataclass(frozen=True)
class MLPPushforward:
    """Final-parameter tangents of `train` for a 64 -> H -> 10 GELU MLP under SGD momentum.

    Calling it as `push(theta0, tangents)` with tangents (C, P) returns (C, P): row c is
    J @ tangents[c], the same as `vmap(jvp(train_fn))`, for `setup.MLP(hidden=(H,))`
    parameters in `FlatModel` order (W1, b1, W2, b2).

    Attributes:
        data: The fixed batches.
        width: Hidden width H.
        cfg: Optimiser settings; only `opt="sgd"` is supported.
    """

    data: Digits
    width: int
    cfg: OptimConfig

    def __post_init__(self) -> None:
        if self.cfg.opt != "sgd":
            raise ValueError("MLPPushforward implements SGD (momentum) only; use vmap(jvp)")

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """(..., P) -> W1 (..., H, 64), b1 (..., H), W2 (..., 10, H), b2 (..., 10) views."""
        h, d_in, d_out = self.width, self.data.x_train.shape[1], 10
        sizes = [h * d_in, h, d_out * h, d_out]
        shapes = [(h, d_in), (h,), (d_out, h), (d_out,)]
        parts = torch.split(v, sizes, dim=-1)
        return [p.reshape(*v.shape[:-1], *s) for p, s in zip(parts, shapes)]

    def __call__(self, theta0: torch.Tensor, tangents: torch.Tensor) -> torch.Tensor:
        cfg, n_c = self.cfg, tangents.shape[0]
        xb, yb = self.data.batches()
        total = cfg.epochs * self.data.n_batches
        theta = [p.clone() for p in self._split(theta0)]
        mom = [torch.zeros_like(p) for p in theta]
        d_theta = [p.contiguous() for p in self._split(tangents)]  # (C, ...) each
        d_mom = [torch.zeros_like(p) for p in d_theta]
        step = 0
        with torch.no_grad():
            for _ in range(cfg.epochs):
                for i in range(self.data.n_batches):
                    grads, d_grads = self._step(theta, d_theta, xb[i], yb[i], n_c)
                    lr = lr_at(step, total, cfg.lr)
                    for p, m, g, dp, dm, dg in zip(theta, mom, grads, d_theta, d_mom, d_grads):
                        m.mul_(cfg.momentum).add_(g)
                        p.add_(m, alpha=-lr)
                        dm.mul_(cfg.momentum).add_(dg)
                        dp.add_(dm, alpha=-lr)
                    step += 1
        return torch.cat([p.reshape(n_c, -1) for p in d_theta], dim=1)  # (C, P)

    @staticmethod
    def _step(theta, d_theta, x, y, n_c):
        """Gradient of the batch loss and its tangents; tangent activations are (B, C, H)."""
        w1, b1, w2, b2 = theta
        dw1, db1, dw2, db2 = d_theta
        bsz, n_h = x.shape[0], w1.shape[0]
        # Primal.
        a = torch.addmm(b1, x, w1.T)  # (B, H)
        h = F.gelu(a, approximate="tanh")
        g1, g2 = gelu_tanh_derivatives(a)
        z = torch.addmm(b2, h, w2.T)  # (B, 10)
        p = torch.softmax(z, dim=-1)
        dz = (p - F.one_hot(y, z.shape[-1]).to(p.dtype)) / bsz
        dh = dz @ w2  # (B, H)
        da = dh * g1
        grads = [da.T @ x, da.sum(0), dz.T @ h, dz.sum(0)]
        # Tangents: one GEMM per contraction, C folded into the matrix dimension.
        ta = (x @ dw1.reshape(n_c * n_h, -1).T).view(bsz, n_c, n_h) + db1  # (B, C, H)
        th = ta * g1[:, None, :]
        tz = (th.reshape(bsz * n_c, n_h) @ w2.T).view(bsz, n_c, -1)  # (B, C, 10)
        tz += (h @ dw2.reshape(-1, n_h).T).view(bsz, n_c, -1) + db2
        tp = p[:, None, :] * (tz - (p[:, None, :] * tz).sum(-1, keepdim=True))
        tdz = tp / bsz  # (B, C, 10)
        n_o = tdz.shape[-1]
        # d(gW2) = tdz^T h + dz^T th, as (C, 10, H)
        tgw2 = (tdz.reshape(bsz, n_c * n_o).T @ h).view(n_c, n_o, n_h)
        tgw2 += (dz.T @ th.reshape(bsz, n_c * n_h)).view(n_o, n_c, n_h).transpose(0, 1)
        # d(dh) = tdz W2 + dz dW2, as (B, C, H)
        tdh = (tdz.reshape(bsz * n_c, n_o) @ w2).view(bsz, n_c, n_h)
        tdh += (dw2.transpose(1, 2).reshape(n_c * n_h, n_o) @ dz.T).T.view(bsz, n_c, n_h)
        tda = tdh * g1[:, None, :] + (dh * g2)[:, None, :] * ta
        tgw1 = (tda.reshape(bsz, n_c * n_h).T @ x).view(n_c, n_h, -1)  # (C, H, 64)
        d_grads = [tgw1, tda.sum(0), tgw2, tdz.sum(0)]
        return grads, d_grads
