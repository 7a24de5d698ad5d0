"""ConstrINT: returned assignments are feasible, infeasibility is exact, GPU sets are fast."""

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from minirepro.papers.rnn.constrint import Var, brute_force, check, solve
from minirepro.papers.rnn.tiling import cpu_tiles, gpu_constraints, gpu_tiles


def test_small_examples():
    bt, nb = Var("bt", range(1, 17)), Var("nb", range(1, 17))
    assert solve([bt * nb == 16, nb % 2 == 0]) == {"bt": 8, "nb": 2}
    bt2 = Var("bt", range(1, 17), prefer="smallest")
    assert solve([bt2 * nb == 16, nb % 2 == 0]) == {"bt": 1, "nb": 16}
    x = Var("x", [1, 2, 3])
    assert solve([x * x == 5]) is None
    assert solve([x + 1 <= 0]) is None
    assert solve([x >= 2, x * 2 <= 5]) == {"x": 2}


domains = st.one_of(
    st.lists(st.integers(-6, 12), min_size=1, max_size=6),
    st.builds(lambda a, n, s: range(a, a + n * s, s), st.integers(-4, 6), st.integers(1, 6),
              st.integers(1, 3)),
)  # fmt: skip


@st.composite
def systems(draw):
    n = draw(st.integers(1, 4))
    vs = [
        Var(f"v{i}", draw(domains), prefer=draw(st.sampled_from(["largest", "smallest"])))
        for i in range(n)
    ]
    term = st.one_of(st.sampled_from(vs), st.integers(-5, 20))
    cons = []
    for _ in range(draw(st.integers(1, 4))):
        a, b, c = draw(term), draw(term), draw(term)
        a = a if isinstance(a, Var) else vs[0]
        kind = draw(st.sampled_from(["eq_prod", "le_sum", "mod", "eq", "ge_prod"]))
        if kind == "eq_prod":
            cons.append(a * b == c)
        elif kind == "le_sum":
            cons.append(a + b <= c)
        elif kind == "mod":
            cons.append(a % b == 0)
        elif kind == "eq":
            cons.append(a == b)
        else:
            cons.append(a * b >= c)
    return vs, cons


@settings(max_examples=300, deadline=None)
@given(systems())
def test_solutions_feasible_and_infeasibility_exact(system):
    vs, cons = system
    sol = solve(cons, vs)
    if sol is None:
        assert not brute_force(cons, vs)
    else:
        assert set(sol) == {v.name for v in vs}
        assert all(sol[v.name] in v.domain for v in vs)
        assert check(cons, sol)


def test_gpu_set_solves_fast_and_feasibly():
    for D in (64, 256, 512):
        cons, vs = gpu_constraints(16, D, 4, 4)
        t = time.perf_counter()
        sol = solve(cons, vs)
        assert time.perf_counter() - t < 1.0
        assert sol is not None and check(cons, sol)
    assert gpu_tiles(16, 4096, 4, 4) is None  # R of 4 x 4096 x 4096 cannot stay on chip


def test_cpu_tiles():
    t = cpu_tiles(16, 4, 64, 4, 2, l2_bytes=1 << 20)
    assert (t.batch_tile, t.head_group) == (8, 4)
    t = cpu_tiles(16, 12, 64, 4, 2, l2_bytes=1 << 20)  # 12 heads' R exceed half of L2
    assert t.head_group * 4 * 64 * 64 * 4 <= 1 << 19 and 12 % t.head_group == 0
    assert cpu_tiles(7, 1, 16, 1, 2) == (7, 1)  # prime batch, one head: one item
