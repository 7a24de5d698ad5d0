"""The papers minirepro covers, and how to find and configure each one's reproduction.

Every paper package `minirepro.papers.<id>` exports `PAPER`, a `Paper`::

    PAPER = Paper(
        id="flow",
        title="Flow Matching Guide and Code",
        arxiv="2412.06264",
        claims=["2D checkerboard: >= 95% of samples on correct-parity squares"],
        config=Config,
        presets=PRESETS,  # {"smoke": Config(...), "quick": Config(...), "full": Config(...)}
        run=run,  # run(cfg, out: RunDir) -> list[Result]
    )

`CATALOGUE` lists the eighteen papers of the project whether implemented or not;
`get_paper` loads one, `all_papers` lists them all, `make_config` builds a run's config
from a preset and `key=value` overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib
import importlib.util
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Literal, Union, get_args, get_origin

from minirepro.core.results import Result, RunDir

REQUIRED_PRESETS = ("smoke", "quick", "full")
NOT_IMPLEMENTED = "not implemented yet"


class RegistryError(ValueError):
    """A user error: unknown paper, preset or config key, or a bad override value."""


class PaperImportError(ImportError):
    """A paper package exists but importing it failed; the cause is chained."""


@dataclass(frozen=True)
class CatalogueEntry:
    """One paper of the project, implemented or not."""

    id: str
    title: str
    arxiv: str
    kind: str

    @property
    def link(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}"


CATALOGUE: tuple[CatalogueEntry, ...] = tuple(
    CatalogueEntry(*row)
    for row in [
        ("flexattn", "FlexAttention: a programming model for attention kernels", "2412.05496", "kernel library"),
        ("rnn", "FlashRNN: traditional RNNs made fast", "2412.07752", "kernel library"),
        ("flow", "Flow Matching Guide and Code", "2412.06264", "generative library"),
        ("serve", "NanoFlow: optimal LLM serving throughput", "2408.12757", "serving engine"),
        ("hybrid", "The Mamba in the Llama: distilling and accelerating hybrid models", "2408.15237", "model + decoding"),
        ("wim", "Writing in the Margins: long-context inference pattern", "2408.14906", "inference pattern"),
        ("coconut", "Coconut: reasoning in a continuous latent space", "2412.06769", "training method"),
        ("genrm", "Generative Verifiers: reward modeling as next-token prediction", "2408.15240", "training method"),
        ("retry", "Physics of LMs 2.2: learning from mistakes (iGSM retry data)", "2408.16293", "data + training"),
        ("sampling", "Smaller, Weaker, Yet Better: compute-optimal sampling", "2408.16737", "data + training"),
        ("processbench", "ProcessBench: identifying process errors", "2412.06559", "benchmark harness"),
        ("search", "Transformers Struggle to Learn to Search", "2412.04703", "data + interpretability"),
        ("pivotal", "Phi-4: pivotal token search + DPO", "2412.08905", "data + training"),
        ("jacobian", "Understanding gradient descent through the training Jacobian", "2412.07003", "analysis"),
        ("lrp4rag", "LRP4RAG: hallucination detection by relevance propagation", "2408.15533", "analysis"),
        ("gamengen", "GameNGen: diffusion models as real-time game engines", "2408.14837", "generative app"),
        ("meshtron", "Meshtron: artist-like mesh generation", "2412.09548", "generative app"),
        ("internvl", "InternVL 2.5: ViT-MLP-LLM, dynamic resolution, test-time scaling", "2412.05271", "multimodal"),
    ]
)  # fmt: skip
_CATALOGUE_BY_ID = {e.id: e for e in CATALOGUE}


@dataclass(frozen=True)
class Paper:
    """A paper's reproduction, as its package exports it in `PAPER`.

    Attributes:
        id: Short id, the package name under `minirepro.papers`.
        title: The paper's title.
        arxiv: The arXiv id, e.g. "2412.06264".
        claims: The headline claims checked, in words.
        config: The `Config` dataclass type.
        presets: Config instances for "smoke" (seconds, tests), "quick" (minutes on two
            CPU cores, the default) and "full" (closer to the paper); more are allowed.
        run: `run(cfg, out: RunDir) -> list[Result]`.
        status: "implemented", or "partial" where some claims are not checked yet.
    """

    id: str
    title: str
    arxiv: str
    claims: list[str]
    config: type
    presets: dict[str, Any]
    run: Callable[[Any, RunDir], list[Result]]
    status: str = "implemented"

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.config):
            raise TypeError(f"{self.id}: config must be a dataclass type, got {self.config!r}")
        missing = [p for p in REQUIRED_PRESETS if p not in self.presets]
        if missing:
            raise ValueError(f"{self.id}: presets lack {', '.join(missing)}")
        for name, cfg in self.presets.items():
            if not isinstance(cfg, self.config):
                raise TypeError(f"{self.id}: preset {name!r} is not a {self.config.__name__}")

    @property
    def link(self) -> str:
        """The paper's arXiv page."""
        return f"https://arxiv.org/abs/{self.arxiv}"


@dataclass(frozen=True)
class Listing:
    """A row of `all_papers`: the catalogue entry and, if it loads, the Paper.

    Attributes:
        id: Paper id.
        title: Paper title.
        link: arXiv link.
        paper: The loaded Paper, or None.
        error: The import error of a package that exists but fails to import.
    """

    id: str
    title: str
    link: str
    paper: Paper | None = None
    error: PaperImportError | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return f"import error: {self.error}"
        return self.paper.status if self.paper else NOT_IMPLEMENTED


_REGISTERED: dict[str, Paper] = {}


def register(paper: Paper) -> None:
    """Adds a paper at run time; it shadows a package of the same id until `unregister`."""
    if not isinstance(paper, Paper):
        raise TypeError(f"register expects a Paper, got {type(paper).__name__}")
    _REGISTERED[paper.id] = paper


def unregister(paper_id: str) -> None:
    """Removes a paper added by `register`; does nothing if it is not registered."""
    _REGISTERED.pop(paper_id, None)


def _load(paper_id: str) -> Paper | None:
    """Imports `minirepro.papers.<id>` and returns its PAPER, or None if there is none.

    Raises:
        PaperImportError: The package exists but importing it raised.
    """
    if paper_id in _REGISTERED:
        return _REGISTERED[paper_id]
    name = f"minirepro.papers.{paper_id}"
    if importlib.util.find_spec(name) is None:
        return None
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        raise PaperImportError(
            f"paper {paper_id!r}: importing {name} failed: {type(exc).__name__}: {exc}"
        ) from exc
    paper = getattr(module, "PAPER", None)
    if paper is not None and not isinstance(paper, Paper):
        raise PaperImportError(f"paper {paper_id!r}: {name}.PAPER is not a registry.Paper")
    return paper


def known_ids() -> list[str]:
    """The catalogue's ids in order, then the ids registered at run time."""
    return [e.id for e in CATALOGUE] + [i for i in _REGISTERED if i not in _CATALOGUE_BY_ID]


def all_papers() -> list[Listing]:
    """Lists every known paper, loading those that are implemented.

    A package that fails to import is listed with its error rather than hiding the others.
    """
    rows = []
    for paper_id in known_ids():
        entry = _CATALOGUE_BY_ID.get(paper_id)
        try:
            paper = _load(paper_id)
            error = None
        except PaperImportError as exc:
            paper, error = None, exc
        title = paper.title if paper else entry.title  # type: ignore[union-attr]
        link = paper.link if paper else entry.link  # type: ignore[union-attr]
        rows.append(Listing(paper_id, title, link, paper, error))
    return rows


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def parse_ids(values: Iterable[str], option: str) -> list[str]:
    """Reads paper ids given to a command-line option, comma-separated or repeated.

    Args:
        values: Option values such as `["flow,rnn", "serve"]`.
        option: The option's name for messages, e.g. "--only".

    Returns:
        The ids, in the order given, without repeats.

    Raises:
        RegistryError: An id is unknown; the message lists the valid ones.
    """
    ids = list(dict.fromkeys(i.strip() for v in values for i in v.split(",") if i.strip()))
    known = known_ids()
    unknown = [i for i in ids if i not in known]
    if unknown:
        hints = "".join(_suggest(i, known) for i in unknown)
        raise RegistryError(
            f"{option}: unknown paper {', '.join(repr(i) for i in unknown)}.{hints} "
            f"Valid ids: {', '.join(known)}"
        )
    return ids


def has_package(paper_id: str) -> bool:
    """True if the paper is registered or has a package, without importing it."""
    return paper_id in _REGISTERED or (
        importlib.util.find_spec(f"minirepro.papers.{paper_id}") is not None
    )


def get_paper(paper_id: str) -> Paper:
    """Returns the Paper with this id.

    Raises:
        RegistryError: Unknown id (the message lists the valid ones), or a known paper
            that is not implemented yet.
        PaperImportError: The paper's package fails to import.
    """
    paper = _load(paper_id) if paper_id in known_ids() else None
    if paper is not None:
        return paper
    if paper_id in _CATALOGUE_BY_ID:
        entry = _CATALOGUE_BY_ID[paper_id]
        raise RegistryError(f"paper {paper_id!r} ({entry.title}) is {NOT_IMPLEMENTED}")
    ids = known_ids()
    raise RegistryError(
        f"unknown paper {paper_id!r}.{_suggest(paper_id, ids)} Valid ids: {', '.join(ids)}"
    )


# ---------------------------------------------------------------------------- configs

_TRUE = ("true", "1", "yes", "y", "on")
_FALSE = ("false", "0", "no", "n", "off")


def type_name(tp: Any) -> str:
    """A readable name for a type annotation: `int`, `tuple[int, ...]`, `'a' | 'b'`."""
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if isinstance(tp, type) and not get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def parse_value(text: str, tp: Any) -> Any:
    """Converts command-line text to a value of annotation `tp`.

    Supports int, float, bool (true/false/1/0/yes/no), str, paths, enums, Literal
    choices, Optional (`none`/`null` for None), unions, and tuples/lists written `1,2,3`.

    Raises:
        ValueError: `text` is not a valid value of `tp`.
        TypeError: `tp` cannot be set from text.
    """
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return text
    if origin is Union or origin is types.UnionType:
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(text, arg)
            except ValueError:
                pass
        raise ValueError(text)
    if origin is Literal:
        for choice in args:
            if str(choice) == text or (
                not isinstance(choice, str) and _try_parse(text, type(choice)) == choice
            ):
                return choice
        raise ValueError(text)
    if origin in (tuple, list) or tp in (tuple, list):
        return _parse_sequence(text, origin or tp, args)
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(text)
    if tp is int:
        try:
            return int(text)
        except ValueError:
            as_float = float(text)  # "1e6" is an int too
            if as_float.is_integer():
                return int(as_float)
            raise
    if tp is float:
        return float(text)
    if tp is str:
        return text
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return tp(text)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if text in (member.name, str(member.value)):
                return member
        raise ValueError(text)
    raise TypeError(f"type {type_name(tp)} cannot be set from the command line")


def _try_parse(text: str, tp: type) -> Any:
    try:
        return parse_value(text, tp)
    except (ValueError, TypeError):
        return None


def _parse_sequence(text: str, container: type, args: tuple[Any, ...]) -> Any:
    body = text.strip()
    if body[:1] + body[-1:] in ("()", "[]"):
        body = body[1:-1]
    items = [s.strip() for s in body.split(",")] if body.strip() else []
    if items and items[-1] == "":  # "1," is a one-element tuple
        items.pop()
    if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(items) != len(args):
            raise ValueError(text)
        return tuple(parse_value(s, a) for s, a in zip(items, args, strict=True))
    elem = args[0] if args else str
    return container(parse_value(s, elem) for s in items)


def _field_types(config_type: type) -> dict[str, Any]:
    """The init fields of a config dataclass and their resolved annotations."""
    try:
        hints = typing.get_type_hints(config_type)
    except Exception:  # a name only visible where the class was defined
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(config_type) if f.init}


def make_config(
    paper: Paper,
    preset: str,
    seed: int | None = None,
    overrides: Iterable[str] = (),
) -> Any:
    """Builds a run's config: the preset, then the seed, then `key=value` overrides.

    `seed` sets the config's `seed` field or, for a `seeds` tuple, replaces it with as many
    consecutive seeds starting at `seed` (so mean ± std still covers the same count).

    Args:
        paper: The paper.
        preset: A key of `paper.presets`.
        seed: Optional base seed.
        overrides: Strings `key=value`; values are parsed by the field's type.

    Returns:
        A new config instance (made with `dataclasses.replace`).

    Raises:
        RegistryError: Unknown preset or key, a value that does not parse, or a config
            that rejects the values.
    """
    if preset not in paper.presets:
        raise RegistryError(
            f"unknown preset {preset!r} for {paper.id}; presets: {', '.join(paper.presets)}"
        )
    base = paper.presets[preset]
    fields = _field_types(type(base))
    changes: dict[str, Any] = {}
    if seed is not None:
        if "seed" in fields:
            changes["seed"] = seed
        elif "seeds" in fields:
            changes["seeds"] = type(base.seeds)(range(seed, seed + len(base.seeds)))
        else:
            raise RegistryError(f"{paper.id}: its config has no 'seed' or 'seeds' field")
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RegistryError(f"override {item!r} is not of the form key=value")
        if key not in fields:
            raise RegistryError(
                f"unknown config key {key!r} for {paper.id}.{_suggest(key, fields)} "
                f"Valid keys: {', '.join(fields)}"
            )
        tp = fields[key]
        try:
            changes[key] = parse_value(text, tp)
        except ValueError:
            raise RegistryError(
                f"bad value for {key!r}: expected {type_name(tp)}, got {text!r}"
            ) from None
        except TypeError as exc:
            raise RegistryError(f"config key {key!r}: {exc}") from None
    try:
        return dataclasses.replace(base, **changes)
    except (ValueError, TypeError) as exc:  # the Config's own __post_init__ checks
        raise RegistryError(f"invalid config for {paper.id}: {exc}") from None


def paper_meta() -> Mapping[str, tuple[str, str]]:
    """Maps each known paper id to (title, link) without importing any paper package."""
    meta = {e.id: (e.title, e.link) for e in CATALOGUE}
    meta.update({p.id: (p.title, p.link) for p in _REGISTERED.values()})
    return meta
