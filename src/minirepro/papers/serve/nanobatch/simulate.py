"""The schedule simulator of one iteration, and the two-stage auto-search over plans."""

from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass, field

from minirepro.papers.serve.nanobatch.costs import HOST_OPS, ORDERS, BatchShape, NanoPlan, OpCosts


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
