"""The catalogue, paper discovery and registration, and make_config's overrides."""

from __future__ import annotations  # make_config must resolve string annotations

import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional  # noqa: UP035

import pytest

import minirepro.papers
from minirepro import registry
from minirepro.registry import (
    CATALOGUE,
    Paper,
    PaperImportError,
    RegistryError,
    make_config,
    parse_value,
)


@dataclass
class Cfg:
    n: int = 10
    lr: float = 1e-3
    flag: bool = False
    name: str = "a"
    maybe: int | None = None
    legacy: Optional[float] = 1.0  # noqa: UP045
    dims: tuple[int, ...] = (1, 2)
    pair: tuple[float, float] = (0.0, 1.0)
    ratios: list[float] = field(default_factory=lambda: [0.5])
    mode: Literal["fast", "slow"] = "fast"
    k: Literal[1, 2, 4] = 1
    out: Path = Path("x")
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be >= 0")


def _run(cfg: Cfg, out: object) -> list:
    return []


PAPER = Paper(
    id="cfgtest",
    title="Config test",
    arxiv="0000.00000",
    claims=["none"],
    config=Cfg,
    presets={"smoke": Cfg(n=1), "quick": Cfg(n=100), "full": Cfg(n=10_000)},
    run=_run,
)


def test_catalogue_has_the_eighteen_papers() -> None:
    ids = [e.id for e in CATALOGUE]
    assert len(ids) == len(set(ids)) == 18
    assert {"flexattn", "flow", "internvl", "lrp4rag"} <= set(ids)
    assert all(e.arxiv[:2] in ("24",) and len(e.arxiv) == 10 for e in CATALOGUE)
    listed = registry.all_papers()
    assert [row.id for row in listed][:18] == ids
    for row in listed:
        assert row.link.startswith("https://arxiv.org/abs/")
        assert row.error is None, f"paper package {row.id} fails to import: {row.error}"
        assert row.status == (row.paper.status if row.paper else registry.NOT_IMPLEMENTED)


def test_paper_link_and_validation() -> None:
    assert PAPER.link == "https://arxiv.org/abs/0000.00000"
    with pytest.raises(ValueError, match="presets lack full"):
        Paper("x", "t", "1", [], Cfg, {"smoke": Cfg(), "quick": Cfg()}, _run)
    with pytest.raises(TypeError, match="not a Cfg"):
        Paper("x", "t", "1", [], Cfg, {"smoke": Cfg(), "quick": Cfg(), "full": 3}, _run)


def test_get_paper_errors(monkeypatch) -> None:
    with pytest.raises(RegistryError, match="Did you mean 'flow'") as exc:
        registry.get_paper("flwo")
    assert "flexattn" in str(exc.value)  # lists valid ids
    ghost = registry.CatalogueEntry("ghost", "A paper without a package", "2401.00003", "test")
    monkeypatch.setattr(registry, "CATALOGUE", (*CATALOGUE, ghost))
    monkeypatch.setattr(registry, "_CATALOGUE_BY_ID", {e.id: e for e in registry.CATALOGUE})
    with pytest.raises(RegistryError, match=r"'ghost' \(A paper without a package\) is not impl"):
        registry.get_paper("ghost")
    assert next(r for r in registry.all_papers() if r.id == "ghost").status == "not implemented yet"


def test_register_and_unregister() -> None:
    registry.register(PAPER)
    try:
        assert registry.get_paper("cfgtest") is PAPER
        assert "cfgtest" in registry.known_ids()
        row = next(r for r in registry.all_papers() if r.id == "cfgtest")
        assert row.paper is PAPER and row.status == "implemented"
    finally:
        registry.unregister("cfgtest")
    with pytest.raises(RegistryError, match="unknown paper"):
        registry.get_paper("cfgtest")


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """Adds two catalogue entries whose packages live in tmp_path: one good, one broken."""
    good = tmp_path / "goodpkg"
    good.mkdir()
    (good / "__init__.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from minirepro.registry import Paper

            @dataclass
            class Config:
                n: int = 1

            PAPER = Paper("goodpkg", "Good", "2401.00001", ["c"], Config,
                          {p: Config() for p in ("smoke", "quick", "full")}, lambda c, o: [])
            """
        )
    )
    broken = tmp_path / "brokenpkg"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('boom at import')\n")
    extra = [
        registry.CatalogueEntry("goodpkg", "Good", "2401.00001", "test"),
        registry.CatalogueEntry("brokenpkg", "Broken", "2401.00002", "test"),
    ]
    catalogue = (*CATALOGUE, *extra)
    monkeypatch.setattr(registry, "CATALOGUE", catalogue)
    monkeypatch.setattr(registry, "_CATALOGUE_BY_ID", {e.id: e for e in catalogue})
    monkeypatch.setattr(minirepro.papers, "__path__", [*minirepro.papers.__path__, str(tmp_path)])
    yield
    for name in ("minirepro.papers.goodpkg", "minirepro.papers.brokenpkg"):
        sys.modules.pop(name, None)


def test_discovery_and_import_errors(fake_packages) -> None:
    paper = registry.get_paper("goodpkg")
    assert paper.title == "Good"
    with pytest.raises(PaperImportError, match="'brokenpkg'.*boom at import") as exc:
        registry.get_paper("brokenpkg")
    assert isinstance(exc.value.__cause__, RuntimeError)  # the real error is chained
    rows = {r.id: r for r in registry.all_papers()}
    assert rows["goodpkg"].paper is paper
    assert "boom at import" in rows["brokenpkg"].status  # listed, not hidden


def test_make_config_each_type() -> None:
    cfg = make_config(
        PAPER,
        "smoke",
        overrides=[
            "n=1e3",
            "lr=0.5",
            "flag=yes",
            "name=hello=world",
            "maybe=7",
            "legacy=none",
            "dims=4,5,6",
            "pair=(1.5, 2)",
            "ratios=[0.1,0.2]",
            "mode=slow",
            "k=4",
            "out=/tmp/y",
        ],
    )
    assert cfg.n == 1000 and cfg.lr == 0.5 and cfg.flag is True and cfg.name == "hello=world"
    assert cfg.maybe == 7 and cfg.legacy is None
    assert cfg.dims == (4, 5, 6) and cfg.pair == (1.5, 2.0) and cfg.ratios == [0.1, 0.2]
    assert cfg.mode == "slow" and cfg.k == 4 and cfg.out == Path("/tmp/y")
    assert PAPER.presets["smoke"].n == 1  # presets are not mutated
    for text, value in [("true", True), ("0", False), ("No", False), ("1", True)]:
        assert make_config(PAPER, "quick", overrides=[f"flag={text}"]).flag is value
    assert make_config(PAPER, "quick", overrides=["maybe=null"]).maybe is None
    assert make_config(PAPER, "quick", overrides=["dims="]).dims == ()


def test_make_config_seed() -> None:
    assert make_config(PAPER, "quick", seed=10).seeds == (10, 11, 12)
    assert make_config(PAPER, "quick").seeds == (0, 1, 2)


@pytest.mark.parametrize(
    "override, message",
    [
        ("nn=3", r"unknown config key 'nn'.*Did you mean 'n'.*Valid keys: n, lr, flag"),
        ("n=abc", r"bad value for 'n': expected int, got 'abc'"),
        ("n=1.5", r"bad value for 'n': expected int"),
        ("lr=fast", r"bad value for 'lr': expected float"),
        ("flag=maybe", r"bad value for 'flag': expected bool"),
        ("mode=medium", r"bad value for 'mode': expected 'fast' \| 'slow'"),
        ("k=3", r"bad value for 'k': expected 1 \| 2 \| 4"),
        ("dims=1,x", r"bad value for 'dims': expected tuple\[int, ...\]"),
        ("pair=1,2,3", r"bad value for 'pair'"),
        ("maybe=x", r"bad value for 'maybe': expected int \| None"),
        ("n", r"not of the form key=value"),
        ("n=-1", r"invalid config for cfgtest: n must be >= 0"),
    ],
)
def test_make_config_errors(override: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        make_config(PAPER, "quick", overrides=[override])


def test_unknown_preset() -> None:
    with pytest.raises(RegistryError, match="unknown preset 'medium'.*smoke, quick, full"):
        make_config(PAPER, "medium")


def test_parse_value_unsupported_type() -> None:
    with pytest.raises(TypeError, match="cannot be set"):
        parse_value("x", dict[str, int])
