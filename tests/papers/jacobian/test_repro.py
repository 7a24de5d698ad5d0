"""The smoke preset end to end, the direction of the paper's effects, and the analyses."""

import json

import pytest
import torch

from minirepro.core.results import Result, RunDir
from minirepro.papers.jacobian import (
    CLAIMS,
    PAPER,
    PRESETS,
    SVD,
    alignment,
    random_subspace_overlap,
    regions,
    subspace_overlap,
)
from minirepro.registry import get_paper


def test_paper_is_registered():
    assert get_paper("jacobian") is PAPER
    assert set(PAPER.presets) >= {"smoke", "quick", "full"}
    assert PAPER.presets["full"].width == 64  # the paper's 4810-parameter MLP


def test_regions_alignment_and_overlap_on_known_matrices():
    S = torch.tensor([50.0, 1.2, 1.005, 1.0, 0.995, 0.5, 1e-3], dtype=torch.float64)
    r = regions(S, 0.01)
    assert (r.chaotic, r.bulk, r.stable) == (2, 3, 2)
    q, _ = torch.linalg.qr(torch.randn(7, 7, dtype=torch.float64))
    assert torch.allclose(alignment(SVD(q, S, q.T)), torch.ones(7, dtype=torch.float64))
    assert torch.allclose(alignment(SVD(q, S, -q.T)), -torch.ones(7, dtype=torch.float64))
    assert subspace_overlap(q[:, :3].T, q[:, :3].T) == pytest.approx(1.0)
    assert subspace_overlap(q[:, :3].T, q[:, 3:].T) == pytest.approx(0.0, abs=1e-12)
    # Random 50-dim subspaces of R^200 overlap a fixed 50-dim one by ~50/200.
    a, _ = torch.linalg.qr(torch.randn(200, 50, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    assert random_subspace_overlap(a.T, 50, g, n_samples=5) == pytest.approx(0.25, abs=0.03)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cfg = PRESETS["smoke"]
    out = RunDir("jacobian", cfg, root=tmp_path_factory.mktemp("runs"), preset="smoke")
    return out, PAPER.run(cfg, out)


def test_smoke_preset_runs_end_to_end(smoke_run):
    out, results = smoke_run
    assert all(isinstance(r, Result) for r in results)
    claims = [r.claim for r in results]
    for claim in CLAIMS:
        assert any(c.startswith(claim) for c in claims), claim
    for r in results:
        assert len(r.values) == len(r.seeds) and all(v == v for v in r.values)  # no NaN
        assert r.verdict == ("pass" if r.criterion.holds(r.mean) else "fail")
    figures = {p.stem for p in out.figures_dir.glob("*.png")}
    assert figures >= {
        "spectrum", "alignment", "linearity", "kl_after_step", "subspace_training",
        "variants", "bulk_overlap", "nullspace",
    }  # fmt: skip
    stages = {json.loads(line)["stage"] for line in out.metrics_path.open()}
    assert stages >= {"jacobian", "spectrum", "linearity", "subspace_training", "bulk_overlap",
                      "nullspace", "total"}  # fmt: skip
    assert not (out.path / "jacobian_chunks").exists()  # temporary chunks are removed


def _metrics(out, stage, **match):
    rows = [json.loads(line) for line in out.metrics_path.open()]
    return [r for r in rows if r["stage"] == stage and all(r.get(k) == v for k, v in match.items())]


def test_smoke_shows_the_direction_of_the_paper_effects(smoke_run):
    """At smoke size (610 parameters, 20 steps) the effects are weaker than the paper's
    but point the same way; margins are several times the seed-to-seed spread measured."""
    out, results = smoke_run
    by_claim = {r.claim: r for r in results}
    # A sizeable bulk, and singular vectors aligned along it.
    assert by_claim[CLAIMS[0]].mean > 0.3
    assert by_claim[CLAIMS[1]].mean > 0.99
    # Bulk steps move out-of-distribution outputs more than test outputs.
    for r in results:
        if r.claim.startswith(CLAIMS[2]):
            assert r.mean > 3
    # Complement-of-bulk training matches full training; the bulk of the same size does not.
    assert by_claim[CLAIMS[3]].mean < 1.05
    k = _metrics(out, "complement_training", seed=0)[0]["k"]
    sweep = {r["k"]: r for r in _metrics(out, "subspace_training") if "k" in r}
    assert sweep[k]["bulk"] > 1.1 * sweep[k]["complement"]
    # Bulk subspaces of two seeds, and of shuffled labels, overlap more than random ones.
    for row in _metrics(out, "bulk_overlap"):
        if "pair" in row and row["pair"] != "noise inputs":
            assert row["overlap"] > row["random"] + 0.15
    # A bulk direction responds linearly far beyond the top direction's linear range.
    lin = {r["direction"]: r for r in _metrics(out, "linearity") if "direction" in r}
    assert lin["bulk"]["linear_range"] >= 100 * lin["top"]["linear_range"]
    # The bulk leans into the output nullspace more than the rest of parameter space.
    null = _metrics(out, "nullspace")[0]
    assert null["overlap_bulk"] > null["overlap_nonbulk"]
    assert null["sensitivity_bulk_median"] < null["sensitivity_nonbulk_median"]
