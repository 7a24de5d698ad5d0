"""report.md and the self-contained report.html, built from synthetic run folders."""

import base64
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from minirepro.core.report import build_report, collect_runs, write_report  # noqa: E402
from minirepro.core.results import AtLeast, AtMost, Result, Within  # noqa: E402


def make_run(
    root: Path, paper: str, name: str, results: list[Result], figure: bool = True, wall_s=None
):
    path = root / paper / name
    path.mkdir(parents=True)
    doc = {"paper": paper, "preset": "smoke", "results": [r.to_dict() for r in results]}
    if wall_s is not None:
        doc["wall_s"] = wall_s
    (path / "result.json").write_text(json.dumps(doc))
    (path / "env.json").write_text(json.dumps({"cpu": "Test CPU", "usable_cores": 2, "torch": "x"}))
    if figure:
        (path / "figures").mkdir()
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1, 2], [2, 0, 1])
        fig.savefig(path / "figures" / "curve.png")
        plt.close(fig)
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    old = Result.check("old claim", 1.0, [0.1], AtLeast(0.5), seeds=[0])
    make_run(root, "alpha", "20240101T000000Z-aaaaaaa", [old], figure=False)
    evil = Result.check(
        "<script>alert('x')</script> | pipes & ampersands",
        0.685,
        [0.70, 0.66, 0.69],
        Within(0.685, rel=0.05),
        seeds=[0, 1, 2],
        note="a <b>note</b>",
    )
    failing = Result.check("loss below 0.1", "0.05", [0.3, 0.4], AtMost(0.1), seeds=[0, 1])
    make_run(root, "alpha", "20250101T000000Z-bbbbbbb", [evil, failing], wall_s=65.2)
    ok = Result.check("speed-up", "5.49x-8x", [6.0], AtLeast(2.0), seeds=[0], unit="x")
    make_run(root, "beta", "20250102T000000Z-ccccccc", [ok])
    (root / "beta" / "20250103T000000Z-unfinished").mkdir()  # a crashed run: no result.json
    return root


def test_collect_runs_latest_and_all(runs: Path) -> None:
    latest = collect_runs(runs)
    assert [(r.paper, r.path.name) for r in latest] == [
        ("alpha", "20250101T000000Z-bbbbbbb"),
        ("beta", "20250102T000000Z-ccccccc"),
    ]
    assert [r.verdict for r in latest[0].results] == ["pass", "fail"]
    assert latest[0].figures == [latest[0].path / "figures" / "curve.png"]
    assert len(collect_runs(runs, all_runs=True)) == 3


def test_markdown_report(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    md_path, html_path = build_report(runs, out, papers={"beta": ("Beta paper", "https://x/b")})
    assert (md_path, html_path) == (out / "report.md", out / "report.html")
    md = md_path.read_text()
    assert "old claim" not in md  # latest run only
    assert "3 claims from 2 runs: 2 pass, 1 fail" in md
    assert md.index("## beta — Beta paper") < md.index("## alpha")  # catalogue order first
    assert "0.6833 ± 0.021 (n=3)" in md and "within 5% of 0.685" in md and "**fail**" in md
    assert "| speed-up | 5.49x-8x | 6 x (n=1) | >= 2 | **pass** |" in md
    assert "\\| pipes" in md and "<script>" not in md  # table cells stay cells
    links = re.findall(r"!\[curve\]\(<(.+?)>\)", md)
    assert len(links) == 2 and all((out / link).is_file() for link in links)  # relative links


def test_html_report_is_self_contained_and_escaped(runs: Path) -> None:
    _, html_path = build_report(runs)  # defaults to the runs root
    assert html_path == runs / "report.html"
    page = html_path.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "a &lt;b&gt;note&lt;/b&gt;" in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 2 and all(src.startswith("data:image/png;base64,") for src in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:4] == b"\x89PNG"
    assert not re.search(r'(src|href)="(?!data:|https?://|#)', page)  # no local file links
    for anchor in re.findall(r'href="#([^"]+)"', page):  # dashboard links reach sections
        assert f'<section id="{anchor}">' in page
    assert 'class="verdict pass"' in page and 'class="verdict fail"' in page
    assert "<style>" in page


def test_dashboard_and_a_run_that_raised(runs: Path, tmp_path: Path) -> None:
    err = runs / "gamma" / "20250104T000000Z-ddddddd"
    err.mkdir(parents=True)
    doc = {"paper": "gamma", "preset": "smoke", "wall_s": 3.0, "error": "RuntimeError: <x>"}
    (err / "error.json").write_text(json.dumps(doc))
    (err / "traceback.txt").write_text("Traceback (most recent call last):\n  <frame>\n")
    papers = {p: (p.title(), "") for p in ["delta", "alpha", "beta", "gamma"]}
    md_path, html_path = write_report(
        collect_runs(runs), tmp_path, papers=papers, status={"delta": "not implemented yet"}
    )
    md = md_path.read_text()
    dash = md[: md.index("## ")]  # the dashboard comes before every paper's section
    assert "3 claims from 2 runs: 2 pass, 1 fail; 1 paper raised an error" in md
    assert "| delta | not implemented yet |  |  |  |  |" in dash
    assert "| alpha | **fail** | 1 | 1 | 1m 05s | &lt;script>alert" in dash  # headline: 1st claim
    assert "| beta | **pass** | 1 | 0 | — | speed-up: 6 x (n=1) (paper 5.49x-8x) |" in dash
    assert "| gamma | **error** |  |  | 3s | RuntimeError: &lt;x> |" in dash
    assert "traceback: `runs/gamma/20250104T000000Z-ddddddd/traceback.txt`" in md
    assert dash.index("delta") < dash.index("alpha") < dash.index("beta") < dash.index("gamma")
    page = html_path.read_text()
    assert page.index('<table class="dashboard">') < page.index('<section id="alpha">')
    assert "<pre>Traceback (most recent call last):\n  &lt;frame&gt;\n</pre>" in page
    # Claims get a fixed share of the width, whatever the numbers beside them.
    assert page.count('<col class="claim">') == 2 and "table-layout: fixed" in page


def test_malformed_result_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "p" / "run"
    bad.mkdir(parents=True)
    (bad / "result.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"p/run/result.json"):
        collect_runs(tmp_path)
