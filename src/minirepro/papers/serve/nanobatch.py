"""Nano-batching: a cost model from measured per-op costs, a schedule simulator, auto-search.

NanoFlow splits one iteration's batch into nano-batches and issues their ops so that ops
bound by different resources run at the same time (GEMMs on compute, decode attention on
memory bandwidth, collectives on the network). Smaller GEMMs are less efficient and
co-running ops slow each other down, so the split is chosen by a search over a cost model.

Here:
- `OpCosts`: per-op cost curves (seconds as a piecewise-linear function of the op's size),
  which resource each op uses, and pairwise interference (slowdown) factors. `profile(model)`
  measures them for the core `Transformer` on this CPU; `paper_costs()` is an analytic
  roofline model of LLaMA-2-70B on 8xA100 (a model, not a measurement).
- `simulate(costs, batch, plan)`: an event-driven simulation of one iteration on resource
  lanes (one op at a time per lane, ops on different lanes overlap and slow each other by
  the interference factors); returns a `Schedule` with per-lane timelines and the makespan.
- `search(costs, batch, max_nano)`: two-stage search of nano-batch count, op order,
  placement of the prefill tokens, then sizes; never worse than no split in the simulator.
- `draw_schedule(schedule, path)`: the timelines as a figure.

On this CPU the model's ops all run on one resource ("compute": torch's intra-op threads on
both cores); what nano-batching can overlap is the host thread's work (sampling,
detokenisation, scheduling, KV offload I/O) with the next nano-batch's compute.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
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


# --------------------------------------------------------------------------- cost model


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


# --------------------------------------------------------------------------- simulator


@dataclass(frozen=True)
class Segment:
    """One op's run on a lane: [start, end) in seconds."""

    lane: str
    op: str
    nano: int
    layer: int | None
    start: float
    end: float


@dataclass
class Schedule:
    """A simulated iteration.

    Attributes:
        segments: Every op's run, in start order.
        makespan: Seconds until the last op ends.
        plan, batch: What was simulated.
        lanes: The lanes, in display order.
    """

    segments: list[Segment]
    makespan: float
    plan: NanoPlan
    batch: BatchShape
    lanes: list[str]

    def busy(self, lane: str) -> float:
        """Seconds lane `lane` spends running ops."""
        return sum(s.end - s.start for s in self.segments if s.lane == lane)


@dataclass
class _Op:
    lane: str
    op: str
    nano: int
    layer: int | None
    work: float
    key: tuple
    deps: int = 0
    children: list[int] = field(default_factory=list)


def _nano_shapes(batch: BatchShape, plan: NanoPlan) -> list[dict[str, float]]:
    """Per nano-batch: tokens, KV tokens read, attention pairs, sampled sequences."""
    s, P = batch.prefill_seqs, batch.num_prefill_tokens
    chunk = P / s if s else 0.0
    pairs = s * chunk * (batch.prefill_context + (chunk + 1) / 2)
    shapes = []
    for i, d in enumerate(plan.sizes):
        pre = i == plan.prefill_nano
        shapes.append(
            {
                "tokens": d + (P if pre else 0),
                "kv": d * batch.mean_context,
                "pairs": pairs if pre else 0.0,
                "seqs": d + (s if pre else 0),
            }
        )
    return shapes


_SIZE_OF = {"attn_decode": "kv", "attn_prefill": "pairs"}


def _build_ops(costs: OpCosts, batch: BatchShape, plan: NanoPlan) -> list[_Op]:
    ops: list[_Op] = []

    def add(lane, op, nano, layer, work, key, deps=()) -> int:
        ops.append(_Op(lane, op, nano, layer, work, key))
        idx = len(ops) - 1
        for d in deps:
            ops[d].children.append(idx)
            ops[idx].deps += 1
        return idx

    res = costs.resources
    sched = add(
        res.get("schedule", "host"),
        "schedule",
        -1,
        None,
        costs.cost("schedule", batch.num_decode_seqs + batch.prefill_seqs),
        (-1,),
    )
    model_ops = {op for stage in costs.layer_stages for op in stage} | {"lm_head"}
    one_lane = len({res[op] for op in model_ops}) == 1
    for i, shp in enumerate(_nano_shapes(batch, plan)):
        if one_lane and plan.order == "nano":
            # All model ops share one lane and run nano-batch by nano-batch: the chain is
            # exactly one op of the summed work (the simulation stays fast).
            work = costs.n_layer * sum(
                costs.cost(op, shp[_SIZE_OF.get(op, "tokens")])
                for s in costs.layer_stages
                for op in s
            )
            prev = [add(res["lm_head"], "forward", i, None, work, (i, 0), (sched,))]
        else:
            prev = [sched]
            for layer in range(costs.n_layer):
                for j, stage in enumerate(costs.layer_stages):
                    cur = []
                    for k, op in enumerate(stage):
                        w = costs.cost(op, shp[_SIZE_OF.get(op, "tokens")])
                        if w <= 0:
                            continue
                        key = (i, layer, j, k) if plan.order == "nano" else (layer, j, i, k)
                        cur.append(add(res[op], op, i, layer, w, key, prev))
                    prev = cur or prev
        last = (costs.n_layer + 1, 0, i) if plan.order == "layer" else (i, 1)
        prev = [
            add(res["lm_head"], "lm_head", i, None, costs.cost("lm_head", shp["seqs"]), last, prev)
        ]
        for op in HOST_OPS:
            prev = [add(res[op], op, i, None, costs.cost(op, shp["seqs"]), (i, 2), prev)]
    if batch.offload_tokens:
        add(
            res.get("offload", "host"),
            "offload",
            -1,
            None,
            costs.cost("offload", batch.offload_tokens),
            (math.inf,),
            (sched,),
        )
    return ops


def simulate(costs: OpCosts, batch: BatchShape, plan: NanoPlan) -> Schedule:
    """Simulates one iteration of `batch` split by `plan` on the lanes of `costs`.

    Each lane runs one op at a time, choosing among the ready ops (all dependencies done)
    the one first in the plan's order; an op on lane a runs at speed
    1 / costs.slowdown(a, busy lanes) while other lanes are busy (event-driven: speeds are
    recomputed whenever an op starts or ends).

    Args:
        costs: The cost model.
        batch: The iteration's shape.
        plan: The split; must split `batch` (see `NanoPlan.check`).

    Returns:
        The Schedule; its makespan is the simulated iteration time in seconds.
    """
    plan.check(batch)
    ops = _build_ops(costs, batch, plan)
    lanes = list(dict.fromkeys(o.lane for o in ops))
    shown = [lane for lane in lanes if any(o.work > 0 for o in ops if o.lane == lane)]
    ready: dict[str, list] = {lane: [] for lane in lanes}
    for idx, o in enumerate(ops):
        if o.deps == 0:
            heapq.heappush(ready[o.lane], (o.key, idx))
    running: dict[str, list] = {}  # lane -> [idx, remaining work, start]
    segments: list[Segment] = []
    t, done = 0.0, 0
    while done < len(ops):
        for lane in lanes:
            if lane not in running and ready[lane]:
                _, idx = heapq.heappop(ready[lane])
                running[lane] = [idx, ops[idx].work, t]
        if not running:
            raise RuntimeError("simulation stalled: ops wait on each other")  # a bug, not input
        busy = list(running)
        rates = {lane: 1.0 / costs.slowdown(lane, busy) for lane in busy}
        dt = min(r[1] / rates[lane] for lane, r in running.items())
        t += dt
        for lane in busy:
            r = running[lane]
            r[1] -= rates[lane] * dt
            if r[1] <= 1e-12 * max(1.0, ops[r[0]].work):
                o = ops[r[0]]
                if o.work > 0:
                    segments.append(Segment(lane, o.op, o.nano, o.layer, r[2], t))
                for c in o.children:
                    ops[c].deps -= 1
                    if ops[c].deps == 0:
                        heapq.heappush(ready[ops[c].lane], (ops[c].key, c))
                del running[lane]
                done += 1
    segments.sort(key=lambda s: (s.start, s.lane))
    order = ["compute", "memory", "network", "host"]
    shown.sort(key=lambda x: order.index(x) if x in order else len(order))
    return Schedule(segments, t, plan, batch, shown or lanes)


# --------------------------------------------------------------------------- search


def _equal_split(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _structures(batch: BatchShape, max_nano: int) -> list[NanoPlan]:
    """Stage 1 candidates: every count, order and prefill placement, equal sizes."""
    D, has_prefill = batch.num_decode_seqs, batch.num_prefill_tokens > 0
    plans = [NanoPlan([D])]
    for k in range(2, max_nano + 1):
        for order in ORDERS:
            if D >= k:
                for pre in sorted({0, k - 1}) if has_prefill else [0]:
                    plans.append(NanoPlan(_equal_split(D, k), pre, order))
            if has_prefill and D >= k - 1:
                # The prefill alone in one nano-batch, the decoding sequences in the others.
                for pre in (0, k - 1):
                    rest = _equal_split(D, k - 1)
                    sizes = rest[:pre] + [0] + rest[pre:]
                    plans.append(NanoPlan(sizes, pre, order))
    return plans


def _refine(
    costs: OpCosts, batch: BatchShape, plan: NanoPlan, budget: int
) -> tuple[float, NanoPlan]:
    """Stage 2: moves decoding sequences between nano-batches while the makespan falls."""
    best = simulate(costs, batch, plan).makespan
    sizes = list(plan.sizes)
    step = max(1, max(sizes) // 4)
    sims = 1
    while step >= 1 and sims < budget:
        improved = False
        for i in range(len(sizes)):
            for j in range(len(sizes)):
                if i == j or sims >= budget:
                    continue
                cand = list(sizes)
                cand[i] -= step
                cand[j] += step
                if cand[i] < (0 if i == plan.prefill_nano else 1):
                    continue
                try:
                    p = dataclasses.replace(plan, sizes=cand)
                    p.check(batch)
                except ValueError:
                    continue
                m = simulate(costs, batch, p).makespan
                sims += 1
                if m < best * (1 - 1e-9):
                    best, sizes, improved = m, cand, True
        if not improved:
            step //= 2
    return best, dataclasses.replace(plan, sizes=sizes)


def _bucket(b: BatchShape) -> tuple:
    """Memo key: shapes that differ by a little context or a few prefill tokens share a
    plan (the decode count stays exact, since the plan's sizes must sum to it)."""
    return (
        b.num_decode_seqs,
        -(-b.num_prefill_tokens // 32),  # ceil: a prefill never rounds to none
        b.prefill_seqs,
        round(b.mean_context / 64),
        round(b.prefill_context / 64),
        -(-b.offload_tokens // 256),
    )


def search(
    costs: OpCosts, batch: BatchShape, max_nano: int = 4, *, keep: int = 3, budget: int = 40
) -> NanoPlan:
    """Picks the nano-batch count, order, prefill placement and sizes of least makespan.

    Stage 1 simulates every structure (count 1..max_nano, both orders, prefill in the first
    or last nano-batch, alone or with decoding sequences) with equal sizes; stage 2 refines
    the sizes of the `keep` best by moving sequences between nano-batches (coordinate
    descent with halving steps, at most `budget` simulations each). The unsplit plan is
    always a candidate, so the result is never worse than it in the simulator. Results are
    memoised per (costs, batch bucket, max_nano): shapes within 64 tokens of context and 32
    prefill tokens of one another share the plan found for the first of them.

    Args:
        costs: The cost model.
        batch: The iteration's shape.
        max_nano: Most nano-batches to consider (>= 1).
        keep: Structures refined in stage 2.
        budget: Simulations per refinement.

    Returns:
        The best NanoPlan found.
    """
    if not isinstance(max_nano, int) or max_nano < 1:
        raise ValueError(f"max_nano must be an int >= 1, got {max_nano!r}")
    ck = (_bucket(batch), max_nano, keep, budget)
    hit = costs.plans.get(ck)
    if hit is not None:
        return hit
    scored = sorted(
        (
            (simulate(costs, batch, p).makespan, n, p)
            for n, p in enumerate(_structures(batch, max_nano))
        ),
        key=lambda x: (x[0], x[1]),
    )
    best_m, best = scored[0][0], scored[0][2]
    for _, _, p in scored[:keep]:
        if p.num_nano == 1:
            continue
        m, q = _refine(costs, batch, p, budget)
        if m < best_m * (1 - 1e-9):
            best_m, best = m, q
    if len(costs.plans) > 4096:
        costs.plans.clear()
    costs.plans[ck] = best
    return best


def unsplit(batch: BatchShape) -> NanoPlan:
    """The plan without nano-batching."""
    return NanoPlan([batch.num_decode_seqs])


# --------------------------------------------------------------------------- CPU profile


def _time(fn: Callable[[], Any], repeats: int, min_time: float = 0.003) -> float:
    """Seconds of `fn`: the best of `repeats` rounds, each looping to at least `min_time`.

    The best round, not the median: on a machine shared with other jobs a round is only
    ever slowed down, so the fastest is the cost of the op itself.
    """
    fn()
    samples = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            el = time.perf_counter() - t0
            if el >= min_time:
                break
        samples.append(el / n)
    return min(samples)


def _curve(points: Mapping[float, list[float]]) -> Curve:
    xs = sorted(points)
    ys = [statistics.median(points[x]) for x in xs]
    # Costs never fall with size; measured noise can make them dip.
    for i in range(1, len(ys)):
        ys[i] = max(ys[i], ys[i - 1])
    return Curve(xs, ys)


def measure_interference(seconds: float = 0.3) -> dict[str, dict[str, float]]:
    """Measures how compute (torch matmuls) and host work (Python) slow each other down.

    A GEMM loop and a pure-Python loop (the kind of work sampling bookkeeping,
    detokenisation and scheduling do) are timed alone and then at the same time in two
    threads.

    Returns:
        {"compute": {"host": f_c}, "host": {"compute": f_h}}, each factor >= 1.
    """
    import torch

    a, b = torch.randn(256, 576), torch.randn(576, 1536)

    def gemm(n):
        for _ in range(n):
            torch.mm(a, b)

    def py(n):
        s = 0
        for i in range(n):
            s += len(str(i * 7))
        return s

    def rate(fn, n):
        t0 = time.perf_counter()
        fn(n)
        return time.perf_counter() - t0

    ng = max(1, int(seconds / max(rate(gemm, 3) / 3, 1e-6)))
    npy = max(1, int(seconds / max(rate(py, 20000) / 20000, 1e-9)))
    alone_g, alone_p = rate(gemm, ng), rate(py, npy)
    together: dict[str, float] = {}

    def host_thread():
        together["host"] = rate(py, npy)

    th = threading.Thread(target=host_thread)
    th.start()
    together["compute"] = rate(gemm, ng)
    th.join()
    return {
        "compute": {"host": max(1.0, together["compute"] / alone_g)},
        "host": {"compute": max(1.0, together["host"] / alone_p)},
    }


def _norm_rope(block, x, q, k, cos, sin, pool, slots):
    """A layer's element-wise work as the runner does it: norms, RoPE, K/V writes, residual."""
    import torch

    half = q.shape[-1] // 2
    h = block.norm1(x)
    q2 = q * cos + torch.cat([-q[..., half:], q[..., :half]], -1) * sin
    k2 = k * cos + torch.cat([-k[..., half:], k[..., :half]], -1) * sin
    pool.index_copy_(0, slots, k2)
    pool.index_copy_(0, slots, k2)
    return block.norm2(h + x), q2


def _mlp(x, w_gate_up, w_down):
    """SwiGLU with the gate and up projections fused into one GEMM (as the runner)."""
    import torch.nn.functional as F

    from minirepro.papers.serve.gemm import linear

    gate, up = linear(x, w_gate_up).chunk(2, dim=-1)
    return linear(F.silu(gate) * up, w_down)


def _lm_head(model, x, w):
    from minirepro.papers.serve.gemm import linear

    return linear(model.norm(x), w)


def _decode_attn(k_cache, v_cache, tables, lens, q):
    """The runner's decode attention (the paged kernel, or gather + SDPA without it).

    k_cache, v_cache: (num_blocks, block_size, H_kv, D); tables: (B, nb); lens: (B,);
    q: (B, H, D).
    """
    from minirepro.papers.serve.paged_attention import paged_decode_attention

    return paged_decode_attention(q, k_cache, v_cache, tables, lens)


def _sample(logits):
    """Greedy sampling as the engine does it: one argmax, ids to Python."""
    try:
        from minirepro.papers.serve.sampling import SamplingParams, sample_tokens
    except ImportError:  # the engine is not there: the same work by hand
        return logits.argmax(-1).tolist()
    params = [SamplingParams(temperature=0.0)] * logits.shape[0]
    return sample_tokens(logits, params, [None] * logits.shape[0])


def _detok_curve(tokenizer, repeats: int) -> Curve:
    """Seconds of incremental detokenisation of one new token per sequence."""
    try:
        from minirepro.papers.serve.sampling import Detokenizer
    except ImportError:
        Detokenizer = None
    ids = [int(t) for t in tokenizer.encode("The quick brown fox jumps over the lazy dog " * 8)]
    state = {"i": 0, "d": None}

    def step():
        if Detokenizer is not None:
            if state["d"] is None or state["i"] >= len(ids):
                state["d"], state["i"] = Detokenizer(tokenizer, []), 0
            state["d"].add([ids[state["i"]]])
            state["d"].delta(False)
        else:
            i = state["i"] = (state["i"] + 1) % (len(ids) - 6)
            tokenizer.decode(ids[i : i + 5]), tokenizer.decode(ids[i : i + 6])
        state["i"] += 1

    per_token = _time(step, repeats)
    return Curve([1.0, 256.0], [per_token, 256 * per_token])


def profile(
    model,
    tokenizer=None,
    *,
    token_grid: Sequence[int] = (1, 4, 16, 64, 128, 256, 512),
    repeats: int = 3,
    host: Mapping[str, Curve] | None = None,
    interference: bool = True,
) -> OpCosts:
    """Measures the per-op costs of the core `Transformer` on this CPU.

    Times layer 0's ops alone (all layers share shapes): RMSNorm + RoPE, the Q/K/V and
    output projections and the SwiGLU MLP at each batch size in `token_grid`; decode
    attention (SDPA of one query per sequence over its cached keys) over several batch x
    context shapes; causal prefill attention; final norm + LM head; greedy sampling
    (argmax and transfer to Python); incremental detokenisation if `tokenizer` is given;
    a KV-offload write (raw bytes to a temporary file); and the compute/host interference.

    Args:
        model: A core `Transformer` (attention layers).
        tokenizer: An HF tokenizer for the detokenisation cost, or None (cost 0).
        token_grid: Batch sizes, in tokens, to time the dense ops at.
        repeats: Timing rounds per point (medians).
        host: Host-op curves measured elsewhere (e.g. the engine's scheduling time), which
            replace the ones measured here.
        interference: Measure the compute/host slowdown (about 0.6 s); 1 if False.

    Returns:
        The OpCosts, device "cpu".
    """
    import torch
    import torch.nn.functional as F

    from minirepro.core.model import rope_cos_sin

    cfg = model.cfg
    if any(cfg.mixer_of(i) != "attention" for i in range(cfg.n_layer)):
        raise ValueError("profile needs a model of attention layers only")
    block = model.layers[0]
    att = block.mixer
    dtype = model.embed.weight.dtype
    g = torch.Generator().manual_seed(0)
    pts: dict[str, dict[float, list[float]]] = {}

    def rec(name, x, fn):
        pts.setdefault(name, {}).setdefault(float(x), []).append(_time(fn, repeats))

    t_start = time.perf_counter()
    H, Hkv, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    with torch.inference_mode():
        # The engine's runner fuses q/k/v and gate/up into one GEMM each, with the weights
        # laid out for its GEMM backend; time the same.
        from minirepro.papers.serve.gemm import linear, pack, resolve_gemm

        kind = resolve_gemm("auto", att.wq.weight)
        w_qkv = pack(torch.cat([att.wq.weight, att.wk.weight, att.wv.weight]), kind)
        w_gu = pack(torch.cat([block.mlp.w_gate.weight, block.mlp.w_up.weight]), kind)
        w_o, w_down = pack(att.wo.weight, kind), pack(block.mlp.w_down.weight, kind)
        w_lm = pack(model.lm_head.weight, kind)
        for n in token_grid:
            x = torch.randn(n, cfg.d_model, generator=g).to(dtype)
            cos, sin = rope_cos_sin(torch.arange(n), D, cfg.rope_theta, dtype)
            q = torch.randn(n, H, D, generator=g).to(dtype)
            k = torch.randn(n, Hkv, D, generator=g).to(dtype)
            pool = torch.zeros(n, Hkv, D, dtype=dtype)
            slots = torch.randperm(n, generator=g)
            y = torch.randn(n, H * D, generator=g).to(dtype)
            rec(
                "norm_rope",
                n,
                partial(_norm_rope, block, x, q, k, cos[:, None], sin[:, None], pool, slots),
            )
            rec("qkv", n, partial(linear, x, w_qkv))
            rec("o_proj", n, partial(linear, y, w_o))
            rec("mlp", n, partial(_mlp, x, w_gu, w_down))
            if n <= 256:
                rec("lm_head", n, partial(_lm_head, model, x, w_lm))
                logits = torch.randn(n, cfg.vocab_size, generator=g).to(dtype)
                rec("sample", n, partial(_sample, logits))
        bs = 16
        for B in (1, 8, 32):
            for T in (32, 256, 1024):
                nb = -(-T // bs)
                k_cache = torch.randn(B * nb, bs, Hkv, D, generator=g).to(dtype)
                v_cache = torch.randn(B * nb, bs, Hkv, D, generator=g).to(dtype)
                tables = torch.randperm(B * nb, generator=g).view(B, nb)
                lens = torch.full((B,), T, dtype=torch.long)
                q = torch.randn(B, H, D, generator=g).to(dtype)
                fn = partial(_decode_attn, k_cache, v_cache, tables, lens, q)
                rec("attn_decode", B * T, fn)
        for S in (16, 64, 256, 512):
            q = torch.randn(1, H, S, D, generator=g).to(dtype)
            kv = torch.randn(1, Hkv, S, D, generator=g).to(dtype)
            fn = partial(
                F.scaled_dot_product_attention, q, kv, kv, is_causal=True, enable_gqa=H != Hkv
            )
            rec("attn_prefill", S * (S + 1) / 2, fn)
    curves = {name: _curve(p) for name, p in pts.items()}
    if tokenizer is not None:
        curves["detok"] = _detok_curve(tokenizer, repeats)
    # KV offload: bytes of one token's K and V in every layer, written raw to a file.
    bytes_per_token = cfg.n_layer * 2 * cfg.n_kv_head * cfg.head_dim * dtype.itemsize
    buf = torch.randn(
        max(1, (4 << 20) // (bytes_per_token // dtype.itemsize or 1)),
        bytes_per_token // dtype.itemsize,
        generator=g,
    ).to(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kv.bin")

        def write():
            with open(path, "wb") as f:
                f.write(buf.numpy().tobytes())

        t_write = _time(write, repeats)
    curves["offload"] = Curve([float(buf.shape[0])], [t_write])
    if host:
        curves.update(host)
    ops = {op for s in CPU_LAYER_STAGES for op in s} | {"lm_head"}
    resources = {op: "compute" for op in ops} | {
        "sample": "host",
        "detok": "host",
        "schedule": "host",
        "offload": "host",
    }
    return OpCosts(
        device="cpu",
        n_layer=cfg.n_layer,
        curves=curves,
        resources=resources,
        interference=measure_interference() if interference else {},
        layer_stages=CPU_LAYER_STAGES,
        meta={
            "model": {
                k: getattr(cfg, k)
                for k in ("n_layer", "d_model", "n_head", "n_kv_head", "d_ff", "vocab_size")
            },
            "dtype": str(dtype),
            "torch_threads": torch.get_num_threads(),
            "profile_seconds": time.perf_counter() - t_start,
            "measured": sorted(curves),
        },
    )


_PROFILE_CACHE: dict[tuple, OpCosts] = {}


def default_costs(model, tokenizer=None) -> OpCosts:
    """`profile(model, tokenizer)` once per model shape and thread count in this process."""
    import torch

    cfg = model.cfg
    key = (
        cfg.n_layer,
        cfg.d_model,
        cfg.n_head,
        cfg.n_kv_head,
        cfg.d_ff,
        cfg.vocab_size,
        str(model.embed.weight.dtype),
        torch.get_num_threads(),
        tokenizer is not None,
    )
    if key not in _PROFILE_CACHE:
        _PROFILE_CACHE[key] = profile(model, tokenizer, repeats=2)
    return _PROFILE_CACHE[key]


# --------------------------------------------------------------------------- GPU model


@dataclass(frozen=True)
class GPUSpec:
    """An analytic device model (numbers of the order of an A100-80GB node; assumptions).

    Attributes:
        peak_flops: Dense fp16 tensor-core FLOP/s per GPU (A100: 312e12).
        mem_bw: HBM bytes/s per GPU (A100 80GB: ~2.0e12).
        net_bw: Achievable NVLink bus bandwidth per GPU for collectives, bytes/s.
        gemm_eff: GEMM efficiency at large sizes; `gemm_half` tokens give half of it.
        launch: Seconds of fixed cost per kernel.
    """

    peak_flops: float = 312e12
    mem_bw: float = 2.0e12
    net_bw: float = 240e9
    gemm_eff: float = 0.85
    gemm_half: float = 96.0
    attn_eff: float = 0.8
    launch: float = 8e-6


def paper_costs(
    spec: GPUSpec = GPUSpec(),
    *,
    n_gpu: int = 8,
    n_layer: int = 80,
    d_model: int = 8192,
    d_ff: int = 28672,
    n_kv_head: int = 8,
    head_dim: int = 128,
    vocab_size: int = 32000,
    bytes_per: int = 2,
) -> OpCosts:
    """Roofline cost model of LLaMA-2-70B, tensor-parallel on 8 A100s (the paper's setting).

    GEMMs are compute-bound at an efficiency that drops for small batches; decode attention
    is bound by reading the KV cache; all-gather / all-reduce by NVLink bandwidth (ring).
    Co-running ops slow each other (assumed factors, in the range the paper's interference
    profiling reports qualitatively). A model, not a measurement.
    """
    grid = [1, 16, 64, 128, 256, 512, 768, 1024, 1536, 2048, 4096]
    kv_dim = n_kv_head * head_dim

    def gemm(weights: float) -> Curve:
        ys = [
            spec.launch
            + 2 * weights / n_gpu * n / (spec.peak_flops * spec.gemm_eff * n / (n + spec.gemm_half))
            for n in grid
        ]
        return Curve(grid, ys)

    def net(factor: float) -> Curve:
        nbytes = [n * d_model * bytes_per for n in grid]
        return Curve(
            grid, [spec.launch * 2 + factor * (n_gpu - 1) / n_gpu * b / spec.net_bw for b in nbytes]
        )

    kv_grid = [1.0, 1e3, 1e5, 1e6, 1e7]
    pair_grid = [1.0, 1e4, 1e6, 1e7, 1e8]
    curves = {
        "qkv": gemm(d_model * (d_model + 2 * kv_dim)),
        "o_proj": gemm(d_model * d_model),
        "mlp": gemm(3 * d_model * d_ff),
        "lm_head": gemm(d_model * vocab_size),
        "attn_decode": Curve(
            kv_grid,
            [
                spec.launch + x * 2 * kv_dim * bytes_per / n_gpu / (spec.mem_bw * spec.attn_eff)
                for x in kv_grid
            ],
        ),
        "attn_prefill": Curve(
            pair_grid,
            [spec.launch + x * 4 * d_model / n_gpu / (spec.peak_flops * 0.5) for x in pair_grid],
        ),
        "allgather": net(1.0),
        "allreduce": net(2.0),
    }
    resources = {
        "qkv": "compute",
        "o_proj": "compute",
        "mlp": "compute",
        "lm_head": "compute",
        "attn_prefill": "compute",
        "attn_decode": "memory",
        "allgather": "network",
        "allreduce": "network",
        "sample": "host",
        "detok": "host",
        "schedule": "host",
        "offload": "host",
    }
    interference = {
        "compute": {"memory": 1.25, "network": 1.1},
        "memory": {"compute": 1.4, "network": 1.05},
        "network": {"compute": 1.2, "memory": 1.05},
    }
    params = n_layer * (d_model * (d_model + 2 * kv_dim) + d_model * d_model + 3 * d_model * d_ff)
    params += 2 * vocab_size * d_model
    return OpCosts(
        device="gpu-model",
        n_layer=n_layer,
        curves=curves,
        resources=resources,
        interference=interference,
        layer_stages=GPU_LAYER_STAGES,
        meta={
            "model": "LLaMA-2-70B (analytic)",
            "gpus": n_gpu,
            "spec": dataclasses.asdict(spec),
            "params": params,
            "optimal_tok_s": n_gpu * spec.peak_flops / (2 * params),
            "note": "roofline model with assumed efficiencies and interference; not measured",
        },
    )


# --------------------------------------------------------------------------- figure


def draw_schedule(
    schedule: Schedule | Sequence[Schedule],
    path: str | os.PathLike[str],
    *,
    titles: Sequence[str] | None = None,
    window: float | None = None,
) -> Path:
    """Draws schedules (e.g. unsplit and auto-searched) as lanes of nano-batch-coloured bars.

    Args:
        schedule: One Schedule or several, drawn one above the other on a shared time axis.
        path: The PNG file to write.
        titles: One title per schedule.
        window: Show only [0, window] seconds (e.g. the first layers of an 80-layer model).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scheds = [schedule] if isinstance(schedule, Schedule) else list(schedule)
    if not scheds:
        raise ValueError("no schedule to draw")
    titles = (
        list(titles)
        if titles is not None
        else [f"{s.plan.num_nano} nano-batch(es)" for s in scheds]
    )
    fig, axes = plt.subplots(
        len(scheds),
        1,
        figsize=(9, 1.1 + 0.55 * sum(len(s.lanes) for s in scheds)),
        sharex=True,
        squeeze=False,
    )
    colours = plt.get_cmap("tab10")
    scale = 1e3
    end = window if window is not None else max(s.makespan for s in scheds)
    for ax, s, title in zip(axes[:, 0], scheds, titles):
        for y, lane in enumerate(s.lanes):
            for seg in s.segments:
                if seg.lane != lane or seg.start >= end:
                    continue
                c = "0.6" if seg.nano < 0 else colours(seg.nano % 10)
                ax.barh(
                    y,
                    (min(seg.end, end) - seg.start) * scale,
                    left=seg.start * scale,
                    height=0.7,
                    color=c,
                    edgecolor="white",
                    linewidth=0.3,
                )
                wide = (seg.end - seg.start) / end > 0.06
                if wide:
                    ax.text(
                        (seg.start + min(seg.end, end)) / 2 * scale,
                        y,
                        seg.op,
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white",
                    )
        ax.set_yticks(range(len(s.lanes)), s.lanes)
        ax.invert_yaxis()
        ax.set_title(f"{title}: {s.makespan * scale:.3g} ms", fontsize=9)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colours(i))
        for i in range(max(s.plan.num_nano for s in scheds))
    ]
    axes[0, 0].legend(
        handles,
        [f"nano-batch {i}" for i in range(len(handles))],
        fontsize=7,
        loc="upper right",
        ncol=len(handles),
    )
    axes[-1, 0].set_xlabel("time (ms)")
    axes[-1, 0].set_xlim(0, end * scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = [
    "BatchShape",
    "Curve",
    "GPUSpec",
    "NanoPlan",
    "OpCosts",
    "Schedule",
    "Segment",
    "default_costs",
    "draw_schedule",
    "measure_interference",
    "paper_costs",
    "profile",
    "search",
    "simulate",
    "unsplit",
]
