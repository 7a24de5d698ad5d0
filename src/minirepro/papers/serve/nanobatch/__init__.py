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

The parts: `costs` (OpCosts, Curve, BatchShape, NanoPlan), `simulate` (simulate, search),
`profiling` (profile, default_costs: measured on this CPU), `gpu_model` (paper_costs), `figure`
(draw_schedule).
"""

from minirepro.papers.serve.nanobatch.costs import (
    CPU_LAYER_STAGES,
    GPU_LAYER_STAGES,
    HOST_OPS,
    ORDERS,
    BatchShape,
    Curve,
    NanoPlan,
    OpCosts,
)
from minirepro.papers.serve.nanobatch.figure import draw_schedule
from minirepro.papers.serve.nanobatch.gpu_model import GPUSpec, paper_costs
from minirepro.papers.serve.nanobatch.profiling import default_costs, measure_interference, profile
from minirepro.papers.serve.nanobatch.simulate import Schedule, Segment, search, simulate, unsplit

__all__ = [
    "BatchShape",
    "CPU_LAYER_STAGES",
    "Curve",
    "GPUSpec",
    "GPU_LAYER_STAGES",
    "HOST_OPS",
    "NanoPlan",
    "ORDERS",
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
