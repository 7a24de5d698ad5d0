"""`minirepro run gamengen --preset smoke` end to end, and playing what it saved."""

import json

from typer.testing import CliRunner

from minirepro import cli
from minirepro.papers.gamengen import GameSession

runner = CliRunner(env={"COLUMNS": "200"})


def test_smoke_run_writes_results_media_and_a_playable_model(tmp_path):
    r = runner.invoke(
        cli.app, ["run", "gamengen", "--preset", "smoke", "--runs-dir", str(tmp_path)]
    )
    assert r.exit_code in (0, 1), r.output  # smoke is too small for every claim to pass
    (run,) = (tmp_path / "gamengen").iterdir()
    doc = json.loads((run / "result.json").read_text())
    claims = [res["claim"] for res in doc["results"]]
    assert len(claims) == 6 and any("noise augmentation" in c for c in claims)
    for res in doc["results"]:
        assert res["verdict"] in ("pass", "fail") and res["values"]
    for name in ("rollout_strip.png", "rollout_psnr.png", "rollout.gif"):
        assert (run / "figures" / name).stat().st_size > 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["copy_psnr"] > 10 and len(metrics[0]["roll_curve_aug"]) == 6
    session = GameSession.from_checkpoint(run / "world_model.safetensors", steps=2)
    assert session.step(1).shape == (32, 32, 3)
