"""The smoke preset end to end: every claim measured, figures written, effects in the right
direction (the quick preset, run by `minirepro run flow`, is the real check)."""

import json

import pytest

from minirepro.core.results import RunDir
from minirepro.papers.flow import PAPER
from minirepro.papers.flow.repro import PRESETS, Config, run

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cfg = PRESETS["smoke"]
    out = RunDir("flow", cfg, root=tmp_path_factory.mktemp("runs"), preset="smoke")
    results = run(cfg, out)
    metrics = [json.loads(line) for line in out.metrics_path.read_text().splitlines()]
    final = {m["experiment"]: m for m in metrics if "seconds" in m or "relative_difference" in m}
    return out, results, final


def test_every_claim_is_measured(smoke_run):
    out, results, _ = smoke_run
    assert len(results) == 6
    assert all(r.verdict in ("pass", "fail") for r in results)
    for name in ("checkerboard", "checkerboard_discrete", "sphere", "digits", "likelihood"):
        assert (out.figures_dir / f"{name}.png").stat().st_size > 1000


def test_effects_point_the_right_way(smoke_run):
    _, results, m = smoke_run
    # Even a few hundred steps move samples onto the squares, well above the source.
    assert m["checkerboard"]["accuracy"] > m["checkerboard"]["accuracy_source"] + 0.05
    assert m["discrete"]["accuracy"] > m["discrete"]["accuracy_source"] + 0.1
    # The Riemannian solver keeps samples on the sphere, whatever the training.
    assert m["sphere"]["off_manifold"] <= 1e-5
    assert m["sphere"]["mmd_p_value_source"] < 0.05  # the test sees the difference
    # Guidance makes samples more recognisable than unconditional ones (chance is 0.1).
    assert m["digits"]["accuracy"] > m["digits"]["accuracy_w0"] + 0.1
    assert m["likelihood"]["relative_difference"] < 0.25


def test_paper_is_registered():
    assert PAPER.id == "flow" and set(PAPER.presets) >= {"smoke", "quick", "full"}
    assert isinstance(PAPER.presets["quick"], Config)


def test_config_rejects_likelihood_without_digits():
    with pytest.raises(ValueError, match="digits"):
        Config(experiments=("likelihood",))
