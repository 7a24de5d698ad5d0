"""Nano-batching: the simulator against hand-computed schedules, the search, the cost model."""

import json
import math
import random

import pytest
import torch

from minirepro.core.model import ModelConfig, Transformer
from minirepro.papers.serve.nanobatch import (
    CPU_LAYER_STAGES,
    BatchShape,
    Curve,
    NanoPlan,
    OpCosts,
    draw_schedule,
    paper_costs,
    profile,
    search,
    simulate,
    unsplit,
)


def toy_costs(interference=None, n_layer=1, mlp_per_token=1.0, sample_per_seq=0.5):
    """Costs with two non-zero ops: the MLP (compute) and sampling (host), linear in size."""
    res = {op: "compute" for s in CPU_LAYER_STAGES for op in s} | {"lm_head": "compute"}
    res |= {"sample": "host", "detok": "host", "schedule": "host", "offload": "host"}
    return OpCosts(
        device="cpu",
        n_layer=n_layer,
        curves={
            "mlp": Curve([1, 100], [mlp_per_token, 100 * mlp_per_token]),
            "sample": Curve([1, 100], [sample_per_seq, 100 * sample_per_seq]),
        },
        resources=res,
        interference=interference or {},
    )


def test_curve_interpolates_and_extrapolates():
    c = Curve([1, 3], [2.0, 6.0])
    assert c(0) == 0 and c(-1) == 0
    assert c(0.5) == 2.0  # below the first point: the first cost
    assert c(2) == pytest.approx(4.0)
    assert c(5) == pytest.approx(10.0)  # continues the last slope


def test_makespan_hand_computed_no_interference():
    costs, batch = toy_costs(), BatchShape(0, 4, 0.0)
    # Unsplit: forward 4 s, then sampling 2 s.
    assert simulate(costs, batch, unsplit(batch)).makespan == pytest.approx(6.0)
    # Two nano-batches: forward 0-2, 2-4; sampling 2-3 (overlaps forward 1), 4-5.
    s = simulate(costs, batch, NanoPlan([2, 2]))
    assert s.makespan == pytest.approx(5.0)
    host = [(g.start, g.end) for g in s.segments if g.lane == "host"]
    assert host == [pytest.approx((2.0, 3.0)), pytest.approx((4.0, 5.0))]
    assert s.busy("compute") == pytest.approx(4.0)


def test_makespan_hand_computed_with_interference():
    costs = toy_costs({"compute": {"host": 2.0}})
    batch = BatchShape(0, 4, 0.0)
    # forward 0: 0-2. At 2 sampling 0 (1 s) halves forward 1's speed: 0.5 s of its work done
    # by 3, the remaining 1.5 s at full speed -> 4.5; sampling 1: 4.5-5.5.
    assert simulate(costs, batch, NanoPlan([2, 2])).makespan == pytest.approx(5.5)


def test_layer_order_on_one_lane_delays_host_work():
    costs, batch = toy_costs(n_layer=3), BatchShape(0, 4, 0.0)
    nano = simulate(costs, batch, NanoPlan([2, 2], order="nano")).makespan
    layer = simulate(costs, batch, NanoPlan([2, 2], order="layer")).makespan
    # Interleaved layers finish both nano-batches at the end: no overlap, 12 + 1 + 1.
    assert layer == pytest.approx(14.0)
    assert nano == pytest.approx(13.0)


def test_search_never_worse_than_unsplit():
    rng = random.Random(0)
    for _ in range(12):
        costs = toy_costs(
            {"compute": {"host": rng.uniform(1, 2)}},
            n_layer=rng.randint(1, 3),
            mlp_per_token=rng.uniform(0.01, 1),
            sample_per_seq=rng.uniform(0.01, 1),
        )
        costs.curves["lm_head"] = Curve([1, 64], [rng.uniform(0, 1), rng.uniform(1, 3)])
        batch = BatchShape(rng.choice([0, 32]), rng.randint(1, 40), rng.uniform(0, 500))
        plan = search(costs, batch, max_nano=4)
        plan.check(batch)
        assert (
            simulate(costs, batch, plan).makespan
            <= simulate(costs, batch, unsplit(batch)).makespan + 1e-12
        )


def test_search_splits_when_host_work_dominates():
    costs, batch = toy_costs(mlp_per_token=1.0, sample_per_seq=1.0), BatchShape(0, 12, 0.0)
    plan = search(costs, batch, max_nano=4)
    assert plan.num_nano > 1
    assert (
        simulate(costs, batch, plan).makespan
        < 0.8 * simulate(costs, batch, unsplit(batch)).makespan
    )


def test_paper_model_overlaps_resources():
    costs = paper_costs()
    batch = BatchShape(512, 1536, 1024.0, 1)
    plan = search(costs, batch, max_nano=3, keep=1, budget=8)
    split, whole = simulate(costs, batch, plan), simulate(costs, batch, unsplit(batch))
    assert plan.num_nano >= 2
    assert split.makespan < 0.95 * whole.makespan
    # The optimal bound holds in the model: no schedule beats total FLOPs at peak.
    assert batch.tokens / split.makespan < costs.meta["optimal_tok_s"]


def test_costs_round_trip_json(tmp_path):
    costs = toy_costs({"compute": {"host": 1.5}})
    path = tmp_path / "costs.json"
    costs.save(path)
    back = OpCosts.load(path)
    assert back.to_dict() == json.loads(json.dumps(costs.to_dict()))
    batch = BatchShape(16, 8, 10.0)
    plan = NanoPlan([0, 8], prefill_nano=0)
    assert simulate(back, batch, plan).makespan == simulate(costs, batch, plan).makespan


def test_profile_tiny_model(tmp_path):
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=64, n_layer=2, d_model=32, n_head=4, n_kv_head=2)
    ).eval()
    costs = profile(model, token_grid=(1, 8, 32), repeats=1, interference=False)
    for op in (
        "qkv",
        "o_proj",
        "mlp",
        "lm_head",
        "attn_decode",
        "attn_prefill",
        "sample",
        "offload",
    ):
        c = costs.curves[op]
        assert all(y > 0 for y in c.y) and c.y == sorted(c.y), op
    batch = BatchShape(8, 4, 20.0)
    s = simulate(costs, batch, search(costs, batch))
    assert math.isfinite(s.makespan) and s.makespan > 0
    assert (
        draw_schedule([simulate(costs, batch, unsplit(batch)), s], tmp_path / "s.png")
        .stat()
        .st_size
        > 0
    )


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Curve([2, 1], [1, 2]), "increasing"),
        (lambda: Curve([1, 2], [1, float("nan")]), "finite"),
        (lambda: BatchShape(-1, 2, 0.0), "num_prefill_tokens"),
        (lambda: BatchShape(0, 0, 0.0), "empty batch"),
        (lambda: BatchShape(0, 2, float("inf")), "mean_context"),
        (lambda: NanoPlan([]), "empty"),
        (lambda: NanoPlan([2, 0, 2]), "empty"),
        (lambda: NanoPlan([2], prefill_nano=1), "prefill_nano"),
        (lambda: NanoPlan([2], order="zigzag"), "order"),
        (lambda: simulate(toy_costs(), BatchShape(0, 4, 0.0), NanoPlan([1, 2])), "sum to 3"),
        (lambda: search(toy_costs(), BatchShape(0, 4, 0.0), max_nano=0), "max_nano"),
        (lambda: OpCosts.from_dict({"device": "cpu"}), "not an OpCosts"),
        (lambda: toy_costs({"compute": {"host": 0.5}}), "interference"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_batch_shape_from_work_and_plan_assign():
    work = [(0, 32), (10, 1), (20, 1), (5, 8), (30, 1)]  # (start, num_tokens)
    b = BatchShape.from_work(work)
    assert (b.num_prefill_tokens, b.num_decode_seqs, b.num_prefill_seqs) == (40, 3, 2)
    assert b.mean_context == pytest.approx(21.0)  # keys seen by each decode: start + 1
    plan = NanoPlan([1, 2], prefill_nano=1)
    is_decode = [n == 1 and s > 0 for s, n in work]
    assert plan.assign(is_decode) == [[1], [0, 2, 3, 4]]
    assert NanoPlan([0, 3]).assign(is_decode) == [[0, 3], [1, 2, 4]]
    with pytest.raises(ValueError, match="sum to 2"):
        NanoPlan([2]).assign(is_decode)
