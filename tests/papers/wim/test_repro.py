import math

import pytest
from typer.testing import CliRunner

from minirepro import cli
from minirepro.core.results import RunDir
from minirepro.papers.wim import PRESETS, CoreLM, retrieve, run
from minirepro.papers.wim.repro import CLAIMS, Config, results
from minirepro.papers.wim.segment import Segment


def _row(kind, wim, full, rag, recall=1.0, first=1.0, total=4.0):
    return {"kind": kind, "wim": wim, "full": full, "rag": rag, "margin_recall": recall,
            "margin_precision": 0.5, "idk_filter_precision": 0.5, "idk_filter_recall": 1.0,
            "time_to_first_margin": first, "time_to_answer": total}  # fmt: skip


def test_verdicts_follow_the_criteria():
    good = {s: [_row("multihop", 1, 0, 0), _row("multihop", 1, 1, 1), _row("cwe", 0.6, 0.2, 0.1)]
            for s in (0, 1)}  # fmt: skip
    res = results(PRESETS["smoke"], good)
    assert [r.claim for r in res] == CLAIMS
    assert [r.verdict for r in res] == ["pass"] * 5
    assert res[0].mean == pytest.approx(50.0) and res[1].mean == pytest.approx(40.0)
    bad = {s: [_row("multihop", 0, 1, 1, recall=0.0, first=3.0), _row("cwe", 0.1, 0.2, 0.1, first=3.0)]
           for s in (0, 1)}  # fmt: skip
    assert [r.verdict for r in results(PRESETS["smoke"], bad)] == ["fail"] * 5


def test_no_cwe_items_is_nan_not_a_pass():
    rows = {0: [_row("multihop", 1, 0, 0)]}
    res = results(PRESETS["smoke"], rows)
    assert math.isnan(res[1].mean) and res[1].verdict == "fail"


@pytest.mark.parametrize(
    "kwargs, match",
    [({"seeds": ()}, "seeds"), ({"context_tokens": (50, 40)}, "context_tokens"),
     ({"rag_k": 0}, "rag_k"), ({"classifier": "x"}, "classifier"), ({"segment_tokens": 0}, "segment")],
)  # fmt: skip
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Config(**kwargs)


def test_retrieve_ranks_by_meaning():
    texts = ["The harbour was foggy and the boats stayed in.",
             "Ada Brennock is employed by a tea house in the old town.",
             "Barley and oats grow in the valley fields."]  # fmt: skip
    segs = [Segment(i, t, [], 0, 0) for i, t in enumerate(texts)]
    assert [s.index for s in retrieve(segs, "Where does Ada Brennock work?", 1)] == [1]
    assert [s.index for s in retrieve(segs, "Where does Ada Brennock work?", 2)] == sorted(
        s.index for s in retrieve(segs, "Where does Ada Brennock work?", 2)
    )
    with pytest.raises(ValueError, match="k must"):
        retrieve(segs, "q", 0)


def test_smoke_run_with_a_tiny_model(tmp_path, tiny_core, tokenizer):
    cfg = PRESETS["smoke"]
    out = RunDir("wim", cfg, root=tmp_path, preset="smoke")
    res = run(cfg, out, lm=CoreLM(tiny_core, tokenizer))
    assert len(res) == 5 and all(r.verdict in ("pass", "fail") for r in res)
    lines = out.metrics_path.read_text().splitlines()
    assert sum('"stage": "item"' in line for line in lines) == cfg.n_multihop + cfg.n_cwe


runner = CliRunner(env={"COLUMNS": "200"})


def test_cli_ask_errors(tmp_path):
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    cases = [
        (["--context", str(tmp_path / "none.txt"), "--question", "q?"], "no such file"),
        (["--context", str(bad), "--question", "q?"], "not UTF-8"),
        (["--context", str(bad), "--question", " "], "question is empty"),
    ]
    good = tmp_path / "doc.txt"
    good.write_text("Ada works at the tea house.")
    cases.append((["--context", str(good), "--question", "q?", "--classifier", "x"], "classifier"))
    for args, match in cases:
        result = runner.invoke(cli.app, ["wim", "ask", *args])
        assert result.exit_code == 2, result.output
        assert match in result.output and "Traceback" not in result.output


@pytest.mark.llm
def test_cli_ask_streams_margins_then_the_answer(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(
        "Ada Brennock works at the Copperleaf Tea House. " + "The harbour was quiet. " * 12
    )
    result = runner.invoke(cli.app, ["wim", "ask", "--context", str(doc), "--question",
                                     "Where does Ada Brennock work?", "--segment-tokens", "40",
                                     "--max-margin-tokens", "6", "--max-answer-tokens", "6",
                                     "--stop-after", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.output
    assert "margin 1/" in out and "answer" in out
    assert out.index("margin 1/") < out.rindex("answer")
    assert "early exit after 1 of" in out
