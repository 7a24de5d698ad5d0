"""Cost model of nano-batching: per-op cost curves, batch shapes and nano-batch plans."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Ops of one layer, in dependency stages: every op of a stage waits for all ops of the
# previous stage of the same nano-batch; ops of one stage may run concurrently.
CPU_LAYER_STAGES: tuple[tuple[str, ...], ...] = (
    ("norm_rope",),
    ("qkv",),
    ("attn_decode", "attn_prefill"),
    ("o_proj",),
    ("mlp",),
)
GPU_LAYER_STAGES: tuple[tuple[str, ...], ...] = (
    ("qkv",),
    ("attn_decode", "attn_prefill"),
    ("o_proj",),
    ("allgather",),
    ("mlp",),
    ("allreduce",),
)
HOST_OPS = ("sample", "detok")  # per nano-batch, after its lm_head
ORDERS = ("nano", "layer")


@dataclass
class Curve:
    """Seconds as a piecewise-linear function of an op's size.

    Attributes:
        x: Sizes, strictly increasing, > 0 (tokens, KV tokens read, attention pairs, ...).
        y: Measured seconds at those sizes.

    Below x[0] the cost is y[0] (a call costs at least its overhead), 0 at size <= 0;
    beyond x[-1] it continues the last segment's slope (never decreasing).
    """

    x: list[float]
    y: list[float]

    def __post_init__(self) -> None:
        self.x, self.y = [float(v) for v in self.x], [float(v) for v in self.y]
        if not self.x or len(self.x) != len(self.y):
            raise ValueError(
                f"a curve needs as many y as x (>= 1), got {len(self.x)}, {len(self.y)}"
            )
        if any(b <= a for a, b in zip(self.x, self.x[1:])) or self.x[0] <= 0:
            raise ValueError(f"curve x must be positive and strictly increasing, got {self.x}")
        if any(not (v >= 0 and math.isfinite(v)) for v in self.y):
            raise ValueError(f"curve y must be finite seconds >= 0, got {self.y}")

    def __call__(self, size: float) -> float:
        if size <= 0:
            return 0.0
        x, y = self.x, self.y
        if size <= x[0]:
            return y[0]
        if size >= x[-1]:
            if len(x) == 1:
                return y[0] * size / x[0]  # one point: proportional
            slope = max(0.0, (y[-1] - y[-2]) / (x[-1] - x[-2]))
            return y[-1] + slope * (size - x[-1])
        lo, hi = 0, len(x) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if x[mid] <= size else (lo, mid)
        w = (size - x[lo]) / (x[hi] - x[lo])
        return y[lo] + w * (y[hi] - y[lo])

    @classmethod
    def zero(cls) -> Curve:
        return cls([1.0], [0.0])


@dataclass
class OpCosts:
    """Per-op costs of one model on one machine.

    Attributes:
        device: "cpu" (measured by `profile`) or "gpu-model" (analytic, `paper_costs`).
        n_layer: Layers; per-layer curves are multiplied by it.
        curves: Op name -> Curve. Per layer: norm_rope, qkv, o_proj, mlp (x = tokens),
            attn_decode (x = KV tokens read), attn_prefill (x = causal query-key pairs),
            allgather, allreduce (x = tokens; GPU only). Per iteration: lm_head (x = sampled
            sequences), sample, detok (x = sequences), schedule (x = sequences),
            offload (x = KV tokens written).
        resources: Op name -> the resource lane it occupies ("compute", "memory",
            "network", "host").
        interference: slowdown[a][b] >= 1: how much slower an op on lane a runs while lane
            b is busy (factors multiply when several lanes are busy); missing pairs are 1.
        layer_stages: The dependency stages of one layer (see CPU_LAYER_STAGES).
        meta: What was measured, how, and when (free-form, JSON-ready).
        plans: `search`'s memo of plans found with these costs (not saved).
    """

    device: str
    n_layer: int
    curves: dict[str, Curve]
    resources: dict[str, str]
    interference: dict[str, dict[str, float]] = field(default_factory=dict)
    layer_stages: tuple[tuple[str, ...], ...] = CPU_LAYER_STAGES
    meta: dict[str, Any] = field(default_factory=dict)
    plans: dict[tuple, NanoPlan] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_layer < 1:
            raise ValueError(f"n_layer must be >= 1, got {self.n_layer}")
        self.layer_stages = tuple(tuple(s) for s in self.layer_stages)
        for name in {op for s in self.layer_stages for op in s} | {"lm_head", *HOST_OPS}:
            self.curves.setdefault(name, Curve.zero())
            if name not in self.resources:
                raise ValueError(f"op {name!r} has no resource in OpCosts.resources")
        for a, row in self.interference.items():
            for b, f in row.items():
                if not f >= 1.0:
                    raise ValueError(f"interference[{a!r}][{b!r}] must be >= 1, got {f}")

    def cost(self, op: str, size: float) -> float:
        """Seconds of op `op` at `size` (0 for an op without a curve)."""
        curve = self.curves.get(op)
        return curve(size) if curve is not None else 0.0

    def slowdown(self, lane: str, busy: Sequence[str]) -> float:
        """The factor by which an op on `lane` runs slower while the lanes `busy` work."""
        row = self.interference.get(lane, {})
        return math.prod(row.get(b, 1.0) for b in busy if b != lane)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "n_layer": self.n_layer,
            "curves": {k: {"x": c.x, "y": c.y} for k, c in self.curves.items()},
            "resources": dict(self.resources),
            "interference": {a: dict(r) for a, r in self.interference.items()},
            "layer_stages": [list(s) for s in self.layer_stages],
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OpCosts:
        try:
            return cls(
                device=d["device"],
                n_layer=int(d["n_layer"]),
                curves={k: Curve(c["x"], c["y"]) for k, c in d["curves"].items()},
                resources=dict(d["resources"]),
                interference={a: dict(r) for a, r in d.get("interference", {}).items()},
                layer_stages=tuple(tuple(s) for s in d.get("layer_stages", CPU_LAYER_STAGES)),
                meta=dict(d.get("meta", {})),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an OpCosts document: {exc!r}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OpCosts:
        try:
            doc = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None
        return cls.from_dict(doc)


@dataclass(frozen=True)
class BatchShape:
    """What one iteration computes.

    Attributes:
        num_prefill_tokens: Prompt tokens prefilled this iteration (all prefill chunks).
        num_decode_seqs: Sequences decoding one token each.
        mean_context: Mean KV length (tokens already cached) of the decoding sequences.
        num_prefill_seqs: Sequences the prefill tokens belong to (0: one if any tokens).
        prefill_context: Mean tokens already cached before each prefill chunk.
        offload_tokens: KV tokens written to the offload cache during this iteration.
    """

    num_prefill_tokens: int
    num_decode_seqs: int
    mean_context: float
    num_prefill_seqs: int = 0
    prefill_context: float = 0.0
    offload_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("num_prefill_tokens", "num_decode_seqs", "num_prefill_seqs", "offload_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"BatchShape.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("mean_context", "prefill_context"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"BatchShape.{name} must be finite and >= 0, got {v}")
        if self.num_prefill_seqs > self.num_prefill_tokens:
            raise ValueError(
                f"num_prefill_seqs={self.num_prefill_seqs} exceeds num_prefill_tokens="
                f"{self.num_prefill_tokens}"
            )
        if self.num_prefill_tokens + self.num_decode_seqs == 0:
            raise ValueError("an empty batch: no prefill tokens and no decoding sequences")

    @classmethod
    def from_work(cls, work: Sequence[tuple[int, int]], offload_tokens: int = 0) -> BatchShape:
        """The shape of an iteration given each scheduled sequence's (start, num_tokens).

        A sequence decodes when it schedules one token after a non-empty cache (the
        runner's rule); every other entry is a prefill chunk.
        """
        dec = [start for start, n in work if n == 1 and start > 0]
        pre = [(start, n) for start, n in work if not (n == 1 and start > 0)]
        p_tokens = sum(n for _, n in pre)
        return cls(
            num_prefill_tokens=p_tokens,
            num_decode_seqs=len(dec),
            mean_context=sum(dec) / len(dec) + 1 if dec else 0.0,
            num_prefill_seqs=len(pre),
            prefill_context=sum(st for st, _ in pre) / len(pre) if pre else 0.0,
            offload_tokens=offload_tokens,
        )

    @property
    def prefill_seqs(self) -> int:
        if self.num_prefill_tokens == 0:
            return 0
        return self.num_prefill_seqs or 1

    @property
    def tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_seqs


@dataclass(frozen=True)
class NanoPlan:
    """How one iteration is split.

    Attributes:
        sizes: Decoding sequences per nano-batch, in the batch's order of decoding sequences
            (nano-batch 0 takes the first sizes[0] of them, and so on); sums to
            `BatchShape.num_decode_seqs`; `len(sizes)` is the number of nano-batches. Only the
            nano-batch that carries the prefill may have 0 decoding sequences.
        prefill_nano: The nano-batch that also carries all prefill tokens of the iteration.
        order: Issue order of ops that share a resource: "nano" runs nano-batch 0's whole
            forward before nano-batch 1's (host work of 0 then overlaps compute of 1);
            "layer" interleaves the nano-batches layer by layer (the paper's pipeline, which
            overlaps ops of different resources within a layer).
    """

    sizes: list[int]
    prefill_nano: int = 0
    order: str = "nano"

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ValueError("NanoPlan.sizes is empty: need at least one nano-batch")
        if any(not isinstance(s, int) or s < 0 for s in self.sizes):
            raise ValueError(f"NanoPlan.sizes must be ints >= 0, got {self.sizes}")
        if not 0 <= self.prefill_nano < len(self.sizes):
            raise ValueError(f"prefill_nano={self.prefill_nano} outside [0, {len(self.sizes)})")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        empty = [i for i, s in enumerate(self.sizes) if s == 0 and i != self.prefill_nano]
        if empty and len(self.sizes) > 1:
            raise ValueError(f"nano-batches {empty} are empty (sizes {self.sizes})")

    @property
    def num_nano(self) -> int:
        return len(self.sizes)

    def assign(self, is_decode: Sequence[bool]) -> list[list[int]]:
        """Indices of an iteration's scheduled entries per nano-batch (empty ones dropped).

        Args:
            is_decode: One flag per scheduled entry, in the batch's order (see
                `BatchShape.from_work` for which entries decode).

        Returns:
            Groups of indices, in nano-batch order: decoding entries fill nano-batch 0 with
            sizes[0] of them, then nano-batch 1, ...; all prefill entries join nano-batch
            `prefill_nano`. Within a group the batch's order is kept.
        """
        n_dec = sum(bool(d) for d in is_decode)
        if n_dec != sum(self.sizes):
            raise ValueError(
                f"plan sizes {self.sizes} sum to {sum(self.sizes)}, got {n_dec} decodes"
            )
        # owner[j]: the nano-batch of the j-th decoding entry
        owner = [k for k, size in enumerate(self.sizes) for _ in range(size)]
        groups: list[list[int]] = [[] for _ in self.sizes]
        j = 0
        for idx, dec in enumerate(is_decode):
            if dec:
                groups[owner[j]].append(idx)
                j += 1
            else:
                groups[self.prefill_nano].append(idx)
        return [g for g in groups if g]

    def check(self, batch: BatchShape) -> None:
        """Raises ValueError if this plan does not split `batch`."""
        if sum(self.sizes) != batch.num_decode_seqs:
            raise ValueError(
                f"plan sizes {self.sizes} sum to {sum(self.sizes)}, the batch has "
                f"{batch.num_decode_seqs} decoding sequences"
            )
        if batch.num_prefill_tokens == 0 and 0 in self.sizes and batch.num_decode_seqs > 0:
            raise ValueError(f"plan {self.sizes} has an empty nano-batch and no prefill")
