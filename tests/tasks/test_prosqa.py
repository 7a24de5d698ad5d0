import json
import random
import statistics

import pytest

from minirepro.tasks.prosqa import (
    NAMES,
    ProsQAConfig,
    bfs_depths,
    check_record,
    generate_prosqa,
    load_prosqa,
    options,
    save_prosqa,
    solve,
)


@pytest.fixture(scope="module")
def records():
    return generate_prosqa(400, seed=3)


def test_every_answer_is_checkable_by_graph_search(records):
    for r in records:
        assert solve(r) == r["answer"]
        depth = bfs_depths(len(r["idx_to_symbol"]), r["edges"], r["root"])
        assert depth[r["target"]] > 0 and depth[r["neg_target"]] == -1
        check_record(r)


def test_steps_are_a_shortest_path_from_the_person_to_the_target(records):
    for r in records:
        sym = r["idx_to_symbol"]
        edges = {(sym[a], sym[b]) for a, b in r["edges"]}
        node = sym[r["root"]]
        for i, step in enumerate(r["steps"]):
            head, tail = step[:-1].split(" is a ")
            assert head == (node if i == 0 else f"Every {node}")
            assert (node, tail) in edges
            node = tail
        assert node == sym[r["target"]]
        depth = bfs_depths(len(sym), r["edges"], r["root"])
        assert len(r["steps"]) == depth[r["target"]]


def test_statistics_match_the_spec(records):
    nodes = [len(r["idx_to_symbol"]) for r in records]
    edges = [len(r["edges"]) for r in records]
    steps = [len(r["steps"]) for r in records]
    assert min(nodes) >= 14 and max(nodes) <= 28
    assert 22 <= statistics.fmean(nodes) <= 24.5  # "mean ~23"
    assert 32 <= statistics.fmean(edges) <= 40  # "~36 edges"
    assert min(steps) >= 3 and max(steps) <= 6 and set(steps) == {3, 4, 5, 6}
    first = [r["question"].split(" Is ")[-1].split()[2] == options(r)[0] for r in records]
    assert 0.42 <= statistics.fmean(first) <= 0.58  # correct option first about half the time
    names = {r["idx_to_symbol"][r["root"]] for r in records}
    assert names <= set(NAMES) and len(names) == 17
    for r in records:  # the question names the person and both options
        name, (a, b) = r["idx_to_symbol"][r["root"]], options(r)
        assert r["question"].endswith((f"Is {name} a {a} or {b}?", f"Is {name} a {b} or {a}?"))


def test_same_seed_same_records_other_seed_others():
    assert generate_prosqa(5, 1) == generate_prosqa(5, 1)
    assert generate_prosqa(5, 1) != generate_prosqa(5, 2)


def test_small_graphs_respect_their_ranges():
    cfg = ProsQAConfig(n_nodes=(7, 9), mode_nodes=None, n_steps=(2, 3))
    for r in generate_prosqa(100, 0, cfg):
        assert 7 <= len(r["idx_to_symbol"]) <= 9 and 2 <= len(r["steps"]) <= 3


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_steps": (0, 3)}, "n_steps"), ({"n_nodes": (5, 9)}, "n_nodes"),
     ({"edges_per_node": 0.5}, "edges_per_node"), ({"concepts": ("a", "b")}, "concepts")],
)  # fmt: skip
def test_bad_generator_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProsQAConfig(**kwargs)


def test_files_round_trip_and_dict_symbols_load(tmp_path, records):
    path = tmp_path / "prosqa_test.json"
    save_prosqa(records[:5], path)
    assert load_prosqa(path) == records[:5]
    assert len(load_prosqa(path, limit=2)) == 2
    r = dict(records[0])
    r["idx_to_symbol"] = {str(i): s for i, s in enumerate(r["idx_to_symbol"])}
    path.write_text(json.dumps([r]))
    assert load_prosqa(path)[0]["idx_to_symbol"] == records[0]["idx_to_symbol"]


def _broken(records, kind):
    r = json.loads(json.dumps(records[1]))
    if kind == "missing":
        del r["edges"]
    elif kind == "edge_range":
        r["edges"].append([0, 999])
    elif kind == "neg_reachable":
        r["edges"].append([r["root"], r["neg_target"]])
    elif kind == "root_type":
        r["root"] = "Tom"
    elif kind == "steps":
        r["steps"] = "Tom is a lempus."
    return r


@pytest.mark.parametrize(
    "kind, match",
    [("missing", "record 1: missing field.*edges"), ("edge_range", "record 1: field 'edges'"),
     ("neg_reachable", "record 1: field 'neg_target' is reachable"),
     ("root_type", "record 1: field 'root'"), ("steps", "record 1: field 'steps'")],
)  # fmt: skip
def test_malformed_records_are_rejected_by_name(tmp_path, records, kind, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([records[0], _broken(records, kind)]))
    with pytest.raises(ValueError, match=match):
        load_prosqa(path)


def test_files_that_are_not_prosqa_are_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        load_prosqa(path)
    path.write_text(json.dumps({"question": "q"}))
    with pytest.raises(ValueError, match="JSON list"):
        load_prosqa(path)
    path.write_bytes(bytes(random.Random(0).randrange(128, 256) for _ in range(64)))
    with pytest.raises(ValueError, match="UTF-8"):
        load_prosqa(path)
