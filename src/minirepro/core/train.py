"""The one training loop every paper uses.

AdamW with linear warmup and cosine decay, gradient clipping, an evaluation hook, metrics as
JSON lines, atomic safetensors checkpoints with exact resumption, bf16 mixed precision
(``precision="bf16"`` or ``"auto"``, see `minirepro.core.precision`), and
DistributedDataParallel when launched by ``torchrun``.

Data comes from ``get_batch(step, generator)``, which returns the *global* batch of a step
from a generator seeded by ``(cfg.seed, step)`` alone. A resumed run therefore sees the same
data as an uninterrupted one, and under DDP every rank builds the same global batch and keeps
its own contiguous slice of it.

Example:
    >>> cfg = TrainConfig(steps=100, lr=1e-2, batch_size=16)
    >>> def get_batch(step, g):
    ...     x = torch.randint(0, 10, (cfg.batch_size, 8), generator=g)
    ...     return x, x  # (B, S) inputs, (B, S) targets
    >>> state = train(model, cfg, get_batch, out_dir="runs/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from minirepro.core.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from minirepro.core.precision import check_precision, mixed_precision, resolve_precision
from minirepro.core.seed import seed_everything

__all__ = [
    "TrainConfig",
    "TrainState",
    "is_distributed",
    "latest_checkpoint",
    "lm_loss",
    "load_checkpoint",
    "lr_at",
    "make_optimizer",
    "rank",
    "save_checkpoint",
    "seed_everything",
    "shard_batch",
    "train",
    "world_size",
]

# A tensor, or a tuple/list/dict of tensors (nesting allowed) whose dim 0 is the batch.
Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
EvalFn = Callable[[nn.Module, int], Mapping[str, float]]
StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainConfig:
    """Hyperparameters of a training run.

    Attributes:
        steps: Number of optimizer steps.
        lr: Peak learning rate, reached at the end of warmup.
        weight_decay: AdamW decoupled weight decay, applied to parameters with ndim >= 2.
        betas: AdamW betas.
        warmup_steps: Steps of linear warmup from ``lr / warmup_steps`` to ``lr``.
        min_lr_ratio: Cosine decay ends at ``lr * min_lr_ratio`` on the last step.
        grad_clip: Clip the global gradient norm to this value; None disables clipping.
        batch_size: The global batch size (summed over ranks under DDP).
        eval_every: Call ``eval_fn`` every this many steps (0: only at the end).
        log_every: Write a metrics record every this many steps (and at the end).
        ckpt_every: Write a checkpoint every this many steps (0: only at the end).
        seed: Seeds the global RNGs at the start and, with the step, each batch's generator.
        device: Where the model and batches live; under DDP ``"cuda"`` means the local GPU.
        precision: "fp32"; "bf16": the forward (and so the backward) under bf16 autocast,
            with fp32 parameters (master weights), gradients and AdamW state, model outputs
            cast to fp32 before the loss, fp32 checkpoints; "auto": bf16 only on a CPU
            with native bf16 matmul (AMX or AVX512-BF16) and a model wide enough for it to
            pay (`minirepro.core.precision.resolve_precision`). "bf16" on hardware without
            native bf16 warns and trains in fp32. `TrainState.precision` says which ran.
    """

    steps: int = 1000
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    batch_size: int = 32
    eval_every: int = 0
    log_every: int = 10
    ckpt_every: int = 0
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.steps < 1 or self.batch_size < 1 or self.log_every < 1:
            raise ValueError("steps, batch_size and log_every must be >= 1")
        if self.warmup_steps < 0 or self.eval_every < 0 or self.ckpt_every < 0:
            raise ValueError("warmup_steps, eval_every and ckpt_every must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")


@dataclass
class TrainState:
    """What `train` returns.

    Attributes:
        model: The trained model (unwrapped from DDP; the same object that was passed in).
        optimizer: The AdamW optimizer, for inspection or further training.
        step: Number of optimizer steps completed.
        history: The metrics records of the run, as written to ``metrics.jsonl``. On resume
            it includes the records before the checkpoint (on rank 0, which reads the file).
        precision: The precision the run trained in, "fp32" or "bf16" (``cfg.precision``
            resolved for this model and machine).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    precision: str = "fp32"
    history: list[dict[str, float]] = field(default_factory=list)


# ----- distributed helpers ---------------------------------------------------------------------
def world_size() -> int:
    """Number of processes: from torch.distributed once initialised, else torchrun's env."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    """True when running with more than one process."""
    return world_size() > 1


def shard_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """This rank's contiguous slice of a global batch.

    Args:
        batch: Tensors of shape ``(B, ...)``, possibly in tuples, lists or dicts; other
            leaves are passed through unchanged.
        rank: This process's rank.
        world_size: Number of processes; must divide ``B``.

    Returns:
        The same structure with tensors of shape ``(B // world_size, ...)``.
    """
    if isinstance(batch, torch.Tensor):
        if batch.ndim == 0 or batch.shape[0] % world_size:
            raise ValueError(
                f"cannot split a batch tensor of shape {tuple(batch.shape)} over {world_size} "
                "ranks: dim 0 must be divisible by the world size"
            )
        n = batch.shape[0] // world_size
        return batch[rank * n : (rank + 1) * n]
    return _map_batch(batch, lambda t: shard_batch(t, rank, world_size))


def _map_batch(batch: Batch, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    """Apply ``fn`` to every tensor in a nested tuple/list/dict."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return type(batch)({k: _map_batch(v, fn) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_map_batch(v, fn) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(_map_batch(v, fn) for v in batch)
    return batch


def _tensors(batch: Batch) -> list[torch.Tensor]:
    """Every tensor in a nested tuple/list/dict, in order."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (tuple, list)):
        return [t for v in batch for t in _tensors(v)]
    return []


@contextlib.contextmanager
def _process_group(cfg: TrainConfig) -> Iterator[torch.device]:
    """Initialise torch.distributed if torchrun asked for it (and destroy it after); yield
    this process's device."""
    device = torch.device(cfg.device)
    if is_distributed() and device.type == "cuda":  # one GPU per process: torchrun's LOCAL_RANK
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    create = is_distributed() and not dist.is_initialized()
    if create:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
        if create:  # no rank tears gloo down while another still talks to it (or saves)
            dist.barrier()
    finally:
        if create:
            dist.destroy_process_group()


# ----- optimisation -----------------------------------------------------------------------------
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of step ``step`` (0-based): linear warmup, then cosine decay.

    Warmup rises linearly to ``cfg.lr`` at step ``warmup_steps - 1``; the cosine then falls
    to ``cfg.lr * cfg.min_lr_ratio`` at the last step (``cfg.steps - 1``) and stays there.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only.

    Common practice (GPT-2, nanoGPT, Llama): parameters with ndim >= 2 are decayed; biases
    and norm gains (ndim < 2) are not, since shrinking them toward zero only hurts.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The default loss: token cross-entropy, mean over targets that are not -100.

    Args:
        model: Maps ids ``(B, S)`` to logits ``(B, S, V)`` (if it returns a tuple, the first
            element is taken as the logits).
        batch: ``(x, y)``: input ids ``(B, S)`` and target ids ``(B, S)``, -100 to ignore;
            or ``(x, y, document_ids)`` for rows packed with several documents (``(B, S)``
            integers, passed to the model as ``document_ids``; see `minirepro.core.documents`).

    Returns:
        The scalar loss.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("lm_loss takes a batch (x, y) or (x, y, document_ids)")
    x, y, *docs = batch
    logits = model(x, document_ids=docs[0]) if docs else model(x)
    if isinstance(logits, tuple):
        logits = logits[0]
    return F.cross_entropy(logits.flatten(0, -2).float(), y.flatten(), ignore_index=-100)


def _step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator determined by (seed, step) alone, so any step's batch can be rebuilt."""
    mixed = np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed))


def _reset_metrics(path: Path, keep_until: int) -> list[dict[str, float]]:
    """Keep the records up to step ``keep_until`` (dropping those a crash left after the
    checkpoint) and return them."""
    kept = []
    if path.exists() and keep_until > 0:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kept = [r for r in records if r["step"] <= keep_until]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
    return kept


# ----- the loop ---------------------------------------------------------------------------------
def train(
    model: nn.Module,
    cfg: TrainConfig,
    get_batch: Callable[[int, torch.Generator], Batch],
    loss_fn: LossFn | None = None,
    eval_fn: EvalFn | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    on_step: StepCallback | None = None,
) -> TrainState:
    """Train ``model`` for ``cfg.steps`` AdamW steps.

    Steps are numbered by how many updates are done: the update built from
    ``get_batch(i, g)`` is step ``i + 1`` in metrics, in ``eval_fn`` and in ``on_step``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised if needed (gloo
    on CPU, nccl on CUDA), the model is wrapped in DistributedDataParallel and each rank
    trains on its slice of the global batch. DDP averages gradients over ranks, so with a
    mean-reduced loss and equal slices the trajectory equals single-process training on the
    global batch. (A loss averaged over a varying number of targets, such as cross-entropy
    with ``ignore_index``, is a mean of per-rank means and can differ slightly.) Only rank 0
    evaluates, writes files and calls ``on_step``; the logged loss is the mean over ranks.
    All ranks must see the same ``out_dir`` to resume.

    Args:
        model: The model; moved to ``cfg.device`` and trained in place.
        cfg: Hyperparameters.
        get_batch: ``get_batch(i, generator)`` returns the global batch for the 0-based step
            ``i``: tensors whose dim 0 is ``cfg.batch_size``, in any tuple/list/dict nesting.
            It must draw its randomness from ``generator``, which is seeded from
            ``(cfg.seed, i)`` only.
        loss_fn: ``loss_fn(model, batch)`` returns a scalar; default `lm_loss` on ``(x, y)``.
            It gets the model wrapped (in DDP under torchrun; in `MixedPrecision`, which runs
            the forward under bf16 autocast and returns fp32 outputs, when training in bf16),
            so it should only call the model, not its other methods.
        eval_fn: ``eval_fn(model, step)`` returns metrics to log; called with the model in
            eval mode every ``cfg.eval_every`` steps and after the last step.
        out_dir: Where to write ``metrics.jsonl`` and ``checkpoints/``; None writes nothing.
        resume: Continue from the latest checkpoint in ``out_dir`` if there is one. The result
            equals an uninterrupted run's. With ``resume=False`` the run starts over,
            replacing the metrics and checkpoints already in ``out_dir``.
        on_step: ``on_step(step, metrics)`` after every step, e.g. to draw a progress bar.

    Returns:
        The final `TrainState`. Gradients of the last step, clipped, are left in ``.grad``.
    """
    n_ranks, main = world_size(), rank() == 0
    if cfg.batch_size % n_ranks:
        raise ValueError(
            f"batch_size={cfg.batch_size} is the global batch and must be divisible by the "
            f"world size {n_ranks}"
        )
    loss_fn = loss_fn or lm_loss
    run_dir = Path(out_dir) if out_dir is not None else None
    with _process_group(cfg) as device, contextlib.ExitStack() as closing:
        model.to(device)
        optimizer = make_optimizer(model, cfg)
        precision = resolve_precision(cfg.precision, model, device)
        state = TrainState(model=model, optimizer=optimizer, precision=precision)
        # Every rank gets the same seed: the ranks then draw identical random streams (e.g.
        # dropout masks), so rank 0's RNG state in a checkpoint is right for all on resume.
        seed_everything(cfg.seed)
        ckpt = latest_checkpoint(run_dir) if run_dir is not None and resume else None
        if ckpt is not None:
            state.step = load_checkpoint(ckpt, model, optimizer, restore_rng=True)
        metrics_file = None
        if run_dir is not None and main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if ckpt is None:
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            state.history = _reset_metrics(run_dir / "metrics.jsonl", keep_until=state.step)
            metrics_file = closing.enter_context(open(run_dir / "metrics.jsonl", "a"))

        ddp_model = model
        if n_ranks > 1:
            ids = [device.index] if device.type == "cuda" else None
            ddp_model = DistributedDataParallel(model, device_ids=ids)
        ddp_model = mixed_precision(ddp_model, precision, device)
        params = [p for p in model.parameters() if p.requires_grad]
        model.train()
        for i in range(state.step, cfg.steps):
            t0 = time.perf_counter()
            lr = lr_at(i, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = get_batch(i, _step_generator(cfg.seed, i))
            tensors = _tensors(batch)
            if n_ranks > 1:
                _check_global_batch(tensors, cfg.batch_size)
                batch = shard_batch(batch, rank(), n_ranks)
            batch = _map_batch(batch, lambda t: t.to(device, non_blocking=True))

            loss = loss_fn(ddp_model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # under DDP this also averages the gradients over ranks
            grad_norm = torch.nn.utils.get_total_norm(
                [p.grad for p in params if p.grad is not None]
            )
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip, grad_norm)
            optimizer.step()
            state.step = step = i + 1

            loss = loss.detach()
            if n_ranks > 1:
                dist.all_reduce(loss)
                loss /= n_ranks
            elapsed = time.perf_counter() - t0
            metrics = {
                "step": step,
                "loss": loss.item(),
                "lr": lr,
                "grad_norm": grad_norm.item(),  # before clipping
                "samples_per_s": cfg.batch_size / elapsed,
            }
            if tensors and tensors[0].ndim == 2 and not tensors[0].is_floating_point():
                metrics["tokens_per_s"] = tensors[0].numel() / elapsed  # global (B, S) ids
            last = step == cfg.steps
            evaluate = main and eval_fn is not None and (last or _every(step, cfg.eval_every))
            if evaluate:
                model.eval()
                metrics.update({k: float(v) for k, v in eval_fn(model, step).items()})
                model.train()
            if last or evaluate or _every(step, cfg.log_every):
                state.history.append(metrics)
                if metrics_file is not None:
                    metrics_file.write(json.dumps(metrics) + "\n")
                    metrics_file.flush()
            if run_dir is not None and main and (last or _every(step, cfg.ckpt_every)):
                save_checkpoint(run_dir, step, model, optimizer, cfg)
            if main and on_step is not None:
                on_step(step, metrics)
    return state


def _every(step: int, period: int) -> bool:
    return period > 0 and step % period == 0


def _check_global_batch(tensors: list[torch.Tensor], batch_size: int) -> None:
    shapes = [tuple(t.shape) for t in tensors]
    if not tensors or any(not s or s[0] != batch_size for s in shapes):
        raise ValueError(
            f"get_batch must return the global batch: tensors with dim 0 = batch_size="
            f"{batch_size}, got shapes {shapes}"
        )
