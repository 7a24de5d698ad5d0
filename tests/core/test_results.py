"""Criteria, verdicts, Result round-trips and the files a RunDir writes."""

import dataclasses
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from minirepro.core.results import (  # noqa: E402
    AtLeast,
    AtMost,
    Between,
    Criterion,
    Result,
    RunDir,
    Within,
    git_info,
    jsonable,
)


@pytest.mark.parametrize(
    "criterion, value, expected",
    [
        (AtLeast(0.95), 0.95, True),
        (AtLeast(0.95), 0.9499, False),
        (AtMost(1.0), 1.0, True),
        (AtMost(1.0), 1.01, False),
        (Between(2.0, 3.0), 2.0, True),
        (Between(2.0, 3.0), 3.0, True),
        (Between(2.0, 3.0), 3.1, False),
        (Within(0.685, rel=0.1), 0.75, True),
        (Within(0.685, rel=0.1), 0.76, False),
        (Within(10.0, abs=0.5), 9.5, True),
        (Within(10.0, abs=0.5), 9.4, False),
        (Within(10.0, rel=0.01, abs=0.5), 9.55, True),  # the larger tolerance wins
        (Within(-2.0, rel=0.5), -1.0, True),  # relative to |target|
    ],
)
def test_criteria(criterion: Criterion, value: float, expected: bool) -> None:
    assert criterion.holds(value) is expected


@pytest.mark.parametrize(
    "criterion",
    [AtLeast(-math.inf), AtMost(math.inf), Between(-math.inf, math.inf), Within(0.0, abs=1e9)],
)
def test_nan_never_passes(criterion: Criterion) -> None:
    assert not criterion.holds(math.nan)
    r = Result.check("c", 1.0, [1.0, math.nan], criterion, seeds=[0, 1])
    assert math.isnan(r.mean) and r.verdict == "fail"


@pytest.mark.parametrize(
    "criterion, text",
    [
        (AtLeast(0.95), ">= 0.95"),
        (AtMost(1e-5), "<= 1e-05"),
        (Between(5.49, 8), "in [5.49, 8]"),
        (Within(0.685, rel=0.05), "within 5% of 0.685"),
        (Within(3, abs=0.1), "within ±0.1 of 3"),
        (Within(3, rel=0.02, abs=0.1), "within max(2%, ±0.1) of 3"),
    ],
)
def test_criterion_str(criterion: Criterion, text: str) -> None:
    assert str(criterion) == text
    assert Criterion.from_dict(criterion.to_dict()) == criterion


def test_bad_criteria() -> None:
    with pytest.raises(ValueError):
        Between(2, 1)
    with pytest.raises(ValueError):
        Within(1.0)
    with pytest.raises(ValueError):
        Within(1.0, rel=-0.1)


def test_result_statistics_and_verdict() -> None:
    r = Result.check(
        "accuracy", 0.95, [0.96, 0.97, 0.98], AtLeast(0.95), seeds=[0, 1, 2], unit="frac"
    )
    assert r.mean == pytest.approx(0.97) and r.measured == r.mean
    assert r.std == pytest.approx(np.std([0.96, 0.97, 0.98], ddof=1))
    assert r.verdict == "pass"
    assert r.seeds == (0, 1, 2)
    assert Result.check("x", 1.0, 0.5, AtLeast(0.9), seeds=[7]).verdict == "fail"
    assert Result.check("x", 1.0, 0.5, AtLeast(0.4), seeds=[7]).std == 0.0
    assert "± " in r.format_measured() and "(n=3)" in r.format_measured()


def test_verdict_cannot_be_set_by_hand() -> None:
    with pytest.raises(TypeError):
        Result("c", 1.0, AtLeast(0), (1.0,), (0,), verdict="pass")  # type: ignore[call-arg]
    r = Result.check("c", 1.0, [0.0], AtLeast(1.0), seeds=[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.verdict = "pass"  # type: ignore[misc]


def test_result_validation() -> None:
    with pytest.raises(ValueError, match="2 values but 1 seeds"):
        Result.check("c", 1.0, [1.0, 2.0], AtLeast(0), seeds=[0])
    with pytest.raises(ValueError, match="no values"):
        Result.check("c", 1.0, [], AtLeast(0), seeds=[])
    with pytest.raises(TypeError, match="Criterion"):
        Result.check("c", 1.0, [1.0], ">= 0", seeds=[0])  # type: ignore[arg-type]


def test_tensor_and_numpy_values() -> None:
    r = Result.check("c", 1.0, [torch.tensor(0.5), np.float32(1.5)], Within(1.0, abs=0.1), [0, 1])
    assert r.values == (0.5, 1.5) and r.verdict == "pass"


@given(
    values=st.lists(
        st.floats(allow_nan=True, allow_infinity=False, width=32), min_size=1, max_size=5
    ),
    lo=st.floats(-10, 10),
)
def test_json_round_trip(values: list[float], lo: float) -> None:
    r = Result.check(
        "claim", "5.49x-8x", values, Between(lo, lo + 1), seeds=list(range(len(values))), note="n"
    )
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))  # strict JSON: NaN -> null
    back = Result.from_dict(d)
    assert back.verdict == r.verdict and back.criterion == r.criterion
    assert back.seeds == r.seeds and back.note == "n" and back.paper_value == "5.49x-8x"
    np.testing.assert_array_equal(np.array(back.values), np.array(r.values))


def test_from_dict_rejects_edited_verdict() -> None:
    d = Result.check("c", 1.0, [0.5], AtLeast(0.9), seeds=[0]).to_dict()
    d["verdict"] = "pass"
    with pytest.raises(ValueError, match="disagrees"):
        Result.from_dict(d)


def test_jsonable() -> None:
    out = jsonable({"t": torch.tensor([1.0, 2.0]), "n": np.int64(3), "x": math.inf, "s": {1}})
    assert out == {"t": [1.0, 2.0], "n": 3, "x": None, "s": [1]}


@dataclasses.dataclass
class _Cfg:
    n: int = 10
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0, 1)


def test_run_dir_files(tmp_path) -> None:
    out = RunDir("toy", _Cfg(), root=tmp_path, preset="smoke")
    assert out.path.parent == tmp_path / "toy"
    stamp, sha = out.path.name.split("-")[:2]
    assert len(stamp) == 16 and stamp.endswith("Z") and stamp[8] == "T"
    assert json.loads(out.config_path.read_text()) == {"n": 10, "lr": 1e-3, "seeds": [0, 1]}

    env = json.loads(out.env_path.read_text())
    for key in ("python", "torch", "numpy", "platform", "cpu", "cpu_count", "git_sha", "git_dirty"):
        assert key in env
    assert env["torch"] == torch.__version__
    git = git_info()
    assert sha == (git.short or "nogit") and env["git_sha"] == git.sha

    out.log(step=0, loss=torch.tensor(1.5))
    out.log(step=1, loss=math.nan)
    lines = [json.loads(s) for s in out.metrics_path.read_text().splitlines()]
    assert lines == [{"step": 0, "loss": 1.5}, {"step": 1, "loss": None}]

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = out.savefig(fig, "curve")
    assert png == out.figures_dir / "curve.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert not plt.fignum_exists(fig.number)
    with pytest.raises(ValueError):
        out.savefig(plt.figure(), "../escape")

    results = [
        Result.check("a", 0.9, [0.95, 0.97], AtLeast(0.9), seeds=[0, 1]),
        Result.check("b", "2x", [1.1], AtLeast(2.0), seeds=[0], unit="x"),
    ]
    doc = json.loads(out.write_results(results).read_text())
    assert set(doc) == {"paper", "preset", "wall_s", "results"}
    assert 0 < doc["wall_s"] < 60  # the time since the folder was made
    assert json.loads(out.write_results(results, wall_s=12.5).read_text())["wall_s"] == 12.5
    assert doc["paper"] == "toy" and doc["preset"] == "smoke"
    keys = {"claim", "paper_value", "measured", "criterion", "verdict", "seeds", "mean", "std"}
    assert all(keys <= set(r) for r in doc["results"])
    assert [r["verdict"] for r in doc["results"]] == ["pass", "fail"]
    assert doc["results"][1]["criterion"] == ">= 2"


def test_run_dir_records_an_error_with_its_traceback(tmp_path) -> None:
    out = RunDir("toy", {"a": 1}, root=tmp_path, preset="quick")
    try:
        {}["missing"]
    except KeyError as exc:
        tb = out.write_error(exc)
    assert tb == out.traceback_path and '{}["missing"]' in tb.read_text()  # the source line
    doc = json.loads(out.error_path.read_text())
    assert doc["error"] == "KeyError: 'missing'" and doc["preset"] == "quick" and doc["wall_s"] >= 0
    assert not out.result_path.exists()


def test_run_dir_records_the_commit_it_is_given(tmp_path) -> None:
    from minirepro.core.env import GitInfo

    out = RunDir("toy", {}, root=tmp_path, git=GitInfo("0123456789abcdef", False))
    assert out.path.name.endswith("-0123456")
    env = json.loads(out.env_path.read_text())
    assert (env["git_sha"], env["git_dirty"]) == ("0123456789abcdef", False)


def test_run_dirs_in_the_same_second_differ(tmp_path) -> None:
    paths = {RunDir("toy", {"a": 1}, root=tmp_path).path for _ in range(3)}
    assert len(paths) == 3


def test_git_info_outside_a_repo(tmp_path) -> None:
    info = git_info(tmp_path)
    assert info.sha is None and info.dirty is None and info.short is None


def test_track_is_a_plain_loop_without_progress_and_advances_with_it(tmp_path):
    from rich.progress import Progress

    out = RunDir("toy", {"a": 1}, root=tmp_path)
    assert list(out.track(range(3), "steps")) == [0, 1, 2]
    with Progress(disable=True) as progress:
        out.progress = progress
        seen = []
        for i in out.track(range(4), "steps"):
            seen.append(i)
            [task] = progress.tasks
            assert task.completed == i and task.total == 4
        assert seen == [0, 1, 2, 3] and not progress.tasks  # the bar is removed when done
