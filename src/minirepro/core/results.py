"""Results of a reproduction and the folder one run writes.

A `Result` states a claim in words, the paper's value, the values measured here (one per
seed) and a criterion; its verdict is computed from the mean and the criterion, never
given by hand::

    Result.check(
        "samples on correct-parity squares",
        paper_value=">= 0.95",
        values=[0.97, 0.96, 0.98],
        criterion=AtLeast(0.95),
        seeds=[0, 1, 2],
    )

A `RunDir` is the folder of one run, `runs/<paper id>/<UTC time>-<git sha>/`, holding
config.json, env.json, metrics.jsonl, figures/*.png and result.json, or error.json and
traceback.txt for a run that raised.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from minirepro.core.env import GitInfo, environment, git_info, utc_stamp

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "AtLeast",
    "AtMost",
    "Between",
    "Criterion",
    "Result",
    "RunDir",
    "Verdict",
    "Within",
    "git_info",
    "jsonable",
]

Verdict = Literal["pass", "fail"]


def _fmt(x: float) -> str:
    """Formats a number for a criterion: short, but exact for round numbers."""
    return f"{x:.6g}"


class Criterion(ABC):
    """A condition on the mean of the measured values. NaN never passes."""

    _kinds: ClassVar[dict[str, type[Criterion]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Criterion._kinds[cls.__name__] = cls

    def holds(self, value: float) -> bool:
        """Returns True if `value` meets the criterion; False for NaN."""
        value = float(value)
        return not math.isnan(value) and self._holds(value)

    @abstractmethod
    def _holds(self, value: float) -> bool:
        """The test itself, for a value that is not NaN."""

    @abstractmethod
    def __str__(self) -> str:
        """The criterion in human-readable form, e.g. `>= 0.95`."""

    def to_dict(self) -> dict[str, Any]:
        """Returns `{"type": <class name>, **fields}`, which `from_dict` reads back."""
        return {"type": type(self).__name__, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Criterion:
        """Rebuilds a criterion written by `to_dict`."""
        fields = dict(data)
        kind = fields.pop("type", None)
        if kind not in Criterion._kinds:
            raise ValueError(f"unknown criterion type {kind!r}; known: {sorted(Criterion._kinds)}")
        return Criterion._kinds[kind](**fields)


@dataclass(frozen=True)
class AtLeast(Criterion):
    """Passes when the mean is at least `x`."""

    x: float

    def _holds(self, value: float) -> bool:
        return value >= self.x

    def __str__(self) -> str:
        return f">= {_fmt(self.x)}"


@dataclass(frozen=True)
class AtMost(Criterion):
    """Passes when the mean is at most `x`."""

    x: float

    def _holds(self, value: float) -> bool:
        return value <= self.x

    def __str__(self) -> str:
        return f"<= {_fmt(self.x)}"


@dataclass(frozen=True)
class Between(Criterion):
    """Passes when `lo <= mean <= hi`."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not self.lo <= self.hi:
            raise ValueError(f"Between needs lo <= hi, got lo={self.lo}, hi={self.hi}")

    def _holds(self, value: float) -> bool:
        return self.lo <= value <= self.hi

    def __str__(self) -> str:
        return f"in [{_fmt(self.lo)}, {_fmt(self.hi)}]"


@dataclass(frozen=True)
class Within(Criterion):
    """Passes when the mean is close to `target`.

    The tolerance is `max(rel * |target|, abs)`, as in `math.isclose`; give one or both.
    """

    target: float
    rel: float | None = None
    abs: float | None = None

    def __post_init__(self) -> None:
        if self.rel is None and self.abs is None:
            raise ValueError("Within needs a tolerance: rel=..., abs=... or both")
        for name in ("rel", "abs"):
            tol = getattr(self, name)
            if tol is not None and not tol >= 0:
                raise ValueError(f"Within: {name} must be >= 0, got {tol}")

    @property
    def tolerance(self) -> float:
        """The allowed absolute distance from the target."""
        return max((self.rel or 0.0) * math.fabs(self.target), self.abs or 0.0)

    def _holds(self, value: float) -> bool:
        return math.fabs(value - self.target) <= self.tolerance

    def __str__(self) -> str:
        parts = []
        if self.rel is not None:
            parts.append(f"{_fmt(self.rel * 100)}%")
        if self.abs is not None:
            parts.append(f"±{_fmt(self.abs)}")
        tol = parts[0] if len(parts) == 1 else f"max({', '.join(parts)})"
        return f"within {tol} of {_fmt(self.target)}"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Returns the mean and the sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class Result:
    """One claim of a paper checked over several seeds.

    Build it with `Result.check`; `mean`, `std` and `verdict` are computed, not passed,
    and the instance is frozen.

    Attributes:
        claim: The claim in words.
        paper_value: What the paper reports, e.g. 0.685 or "5.49x-8x".
        criterion: The condition the mean must meet.
        values: One measured value per seed.
        seeds: The seeds, aligned with `values`.
        unit: Unit of the values, e.g. "x" or "tok/s".
        note: A deviation or caveat worth printing beside the number.
        mean: Mean of `values` (also `measured`).
        std: Sample standard deviation of `values`; 0 for one seed.
        verdict: "pass" if `criterion` holds for `mean`, else "fail".
    """

    claim: str
    paper_value: str | float
    criterion: Criterion
    values: tuple[float, ...]
    seeds: tuple[int, ...]
    unit: str | None = None
    note: str | None = None
    mean: float = field(init=False)
    std: float = field(init=False)
    verdict: Verdict = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.criterion, Criterion):
            raise TypeError(f"criterion must be a Criterion (AtLeast, ...), got {self.criterion!r}")
        values = tuple(float(v) for v in self.values)
        seeds = tuple(int(s) for s in self.seeds)
        if not values:
            raise ValueError(f"no values for claim {self.claim!r}")
        if len(values) != len(seeds):
            raise ValueError(f"claim {self.claim!r}: {len(values)} values but {len(seeds)} seeds")
        mean, std = _mean_std(values)
        for name, value in [
            ("values", values),
            ("seeds", seeds),
            ("mean", mean),
            ("std", std),
            ("verdict", "pass" if self.criterion.holds(mean) else "fail"),
        ]:
            object.__setattr__(self, name, value)

    @classmethod
    def check(
        cls,
        claim: str,
        paper_value: str | float,
        values: float | Sequence[float],
        criterion: Criterion,
        seeds: Sequence[int],
        *,
        unit: str | None = None,
        note: str | None = None,
    ) -> Result:
        """Measures a claim: computes mean, std and the verdict of `criterion` on the mean.

        Args:
            claim: The claim in words.
            paper_value: What the paper reports (a number, or text such as "5.49x-8x").
            values: One value per seed (a single number for a single seed).
            criterion: `AtLeast`, `AtMost`, `Between` or `Within`.
            seeds: The seeds the values came from, same length as `values`.
            unit: Unit of the values.
            note: A caveat or deviation from the paper.

        Returns:
            The frozen Result.
        """
        if isinstance(values, (int, float)):
            values = [values]
        return cls(
            claim=claim,
            paper_value=paper_value,
            criterion=criterion,
            values=tuple(values),
            seeds=tuple(seeds),
            unit=unit,
            note=note,
        )

    @property
    def measured(self) -> float:
        """The value compared with the paper's: the mean over seeds."""
        return self.mean

    def format_measured(self) -> str:
        """Returns `mean ± std unit (n=seeds)`, e.g. `0.973 ± 0.0041 (n=3)`."""
        unit = f" {self.unit}" if self.unit else ""
        spread = f" ± {self.std:.2g}" if len(self.values) > 1 else ""
        return f"{self.mean:.4g}{spread}{unit} (n={len(self.values)})"

    def format_paper_value(self) -> str:
        """Returns the paper's value as text, with the unit after a number."""
        if isinstance(self.paper_value, str):
            return self.paper_value
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.paper_value:.4g}{unit}"

    def to_dict(self) -> dict[str, Any]:
        """Returns the JSON-ready record used in result.json (NaN written as null)."""
        return jsonable(
            {
                "claim": self.claim,
                "paper_value": self.paper_value,
                "measured": self.measured,
                "criterion": str(self.criterion),
                "verdict": self.verdict,
                "seeds": list(self.seeds),
                "mean": self.mean,
                "std": self.std,
                "values": list(self.values),
                "unit": self.unit,
                "note": self.note,
                "criterion_spec": self.criterion.to_dict(),
            }
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        """Reads a record written by `to_dict`, recomputing the verdict.

        Raises:
            ValueError: If the stored verdict disagrees with the recomputed one (an edited
                file) or the record is incomplete.
        """
        try:
            result = cls(
                claim=data["claim"],
                paper_value=data["paper_value"],
                criterion=Criterion.from_dict(data["criterion_spec"]),
                values=tuple(math.nan if v is None else v for v in data["values"]),
                seeds=tuple(data["seeds"]),
                unit=data.get("unit"),
                note=data.get("note"),
            )
        except KeyError as exc:
            raise ValueError(f"result record lacks {exc}") from None
        stored = data.get("verdict")
        if stored is not None and stored != result.verdict:
            raise ValueError(
                f"claim {result.claim!r}: stored verdict {stored!r} disagrees with "
                f"{result.verdict!r} computed from mean {result.mean} and {result.criterion}"
            )
        return result


def jsonable(obj: Any) -> Any:
    """Converts `obj` to plain JSON types.

    Handles dataclasses, paths, enums, numpy and torch scalars/arrays (via `tolist`), and
    writes NaN and infinities as None so the output is strict JSON.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value)
    if isinstance(obj, type):
        return obj.__qualname__
    if hasattr(obj, "tolist"):  # numpy and torch, arrays and scalars
        return jsonable(obj.tolist())
    return str(obj)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


class RunDir:
    """The folder of one run: `<root>/<paper id>/<UTC time>-<git short sha>/`.

    Creating it writes config.json and env.json; `log` appends to metrics.jsonl, `savefig`
    writes figures/<name>.png (both created on first use), and `write_results` writes
    result.json; `write_error` writes error.json and traceback.txt instead for a run that
    raised. Both record the wall time since the folder was created.

    Attributes:
        path: The run folder.
        paper_id: The paper this run reproduces.
        preset: The preset the config came from, or None for a hand-made config.
    """

    def __init__(
        self,
        paper_id: str,
        config: Any,
        *,
        root: str | os.PathLike[str] = "runs",
        preset: str | None = None,
        git: GitInfo | None = None,
    ) -> None:
        """Creates the folder and writes config.json and env.json.

        Args:
            paper_id: The paper id; the first folder level under `root`.
            config: The run's config, a dataclass instance or a mapping.
            root: The runs root, `./runs` by default.
            preset: The preset name recorded in result.json.
            git: The commit to record; looked up now by default. A long job passes the
                one it started at, so a commit made while it runs is not credited with
                code that was imported before it.
        """
        git = git or git_info()
        name = f"{utc_stamp()}-{git.short or 'nogit'}"
        self.paper_id = paper_id
        self.preset = preset
        self.progress: Any = None  # a rich Progress, attached by the CLI (see `track`)
        self.path = _new_dir(Path(root) / paper_id, name)
        self._started = time.monotonic()
        _write_json(self.config_path, config)
        _write_json(self.env_path, environment(git))

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def env_path(self) -> Path:
        return self.path / "env.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def figures_dir(self) -> Path:
        return self.path / "figures"

    @property
    def result_path(self) -> Path:
        return self.path / "result.json"

    @property
    def error_path(self) -> Path:
        return self.path / "error.json"

    @property
    def traceback_path(self) -> Path:
        return self.path / "traceback.txt"

    @property
    def elapsed(self) -> float:
        """Seconds since the folder was created."""
        return time.monotonic() - self._started

    def track(
        self, items: Iterable[Any], description: str, total: int | None = None
    ) -> Iterator[Any]:
        """Iterates over `items`, advancing a progress bar when the CLI attached one.

        `self.progress` is a `rich.progress.Progress` set by `minirepro run`; called from
        Python (tests, notebooks) it is None and this is a plain loop, so reproductions stay
        free of display code.
        """
        if self.progress is None:
            yield from items
            return
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        task = self.progress.add_task(f"{self.paper_id}: {description}", total=total)
        try:
            for item in items:
                yield item
                self.progress.advance(task)
        finally:
            self.progress.remove_task(task)

    def log(self, **metrics: Any) -> None:
        """Appends one JSON line of metrics, e.g. `out.log(step=10, loss=loss)`.

        Tensors and numpy scalars are converted; NaN is written as null.
        """
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(jsonable(metrics), allow_nan=False) + "\n")

    def savefig(self, fig: Figure, name: str, *, dpi: int = 120) -> Path:
        """Saves a matplotlib figure as figures/<name>.png and closes it.

        Args:
            fig: The figure.
            name: File name without folder; `.png` is added if missing.
            dpi: Resolution.

        Returns:
            The path of the PNG file.
        """
        import matplotlib.pyplot as plt

        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"figure name must be a plain file name, got {name!r}")
        self.figures_dir.mkdir(exist_ok=True)
        path = self.figures_dir / (name if name.endswith(".png") else f"{name}.png")
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        return path

    def write_results(self, results: Sequence[Result], wall_s: float | None = None) -> Path:
        """Writes result.json: `{"paper", "preset", "wall_s", "results": [...]}`.

        Args:
            results: The run's Results.
            wall_s: The run's wall time in seconds; by default the time since the folder
                was created.
        """
        for r in results:
            if not isinstance(r, Result):
                raise TypeError(f"{self.paper_id}: expected Result, got {type(r).__name__}")
        doc = {
            "paper": self.paper_id,
            "preset": self.preset,
            "wall_s": self.elapsed if wall_s is None else wall_s,
            "results": [r.to_dict() for r in results],
        }
        _write_json(self.result_path, doc)
        return self.result_path

    def write_error(self, exc: BaseException) -> Path:
        """Records a run that raised: traceback.txt, and error.json with the message.

        error.json is `{"paper", "preset", "wall_s", "error": "<Type>: <message>"}`.

        Returns:
            The path of traceback.txt.
        """
        self.traceback_path.write_text("".join(traceback.format_exception(exc)))
        doc = {
            "paper": self.paper_id,
            "preset": self.preset,
            "wall_s": self.elapsed,
            "error": f"{type(exc).__name__}: {exc}",
        }
        _write_json(self.error_path, doc)
        return self.traceback_path


def _new_dir(parent: Path, name: str) -> Path:
    """Creates `parent/name`, or `name-1`, `name-2`, ... if runs start in the same second."""
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        path = parent / (name if i == 0 else f"{name}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"cannot create a new run folder under {parent}")
