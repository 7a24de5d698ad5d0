"""The smoke preset end to end: every claim measured, verdicts computed."""

import pytest

from minirepro.core.results import RunDir
from minirepro.papers.internvl import CLAIMS, PAPER, PRESETS, Config


def test_smoke_run(tmp_path):
    cfg = PRESETS["smoke"]
    results = PAPER.run(cfg, RunDir("internvl", cfg, root=tmp_path))
    assert [r.claim for r in results] == CLAIMS
    assert all(r.verdict in ("pass", "fail") and len(r.values) == len(cfg.seeds) for r in results)
    unshuffle = results[1]
    assert (
        "16 vs 64 tokens per tile" in unshuffle.note or "4 vs 16 tokens per tile" in unshuffle.note
    )


@pytest.mark.parametrize(
    "kw,match",
    [({"seeds": ()}, "seeds"), ({"weightings": ("square",)}, "weightings"), ({"stage_steps": (1, 2)}, "stage_steps"),
     ({"workers": 0}, "workers")],
)  # fmt: skip
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        Config(**kw)
