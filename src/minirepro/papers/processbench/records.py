"""ProcessBench records: the reference's format, read from and written to JSON or JSONL.

One record per solution (the fields of the Hugging Face dataset ``Qwen/ProcessBench``)::

    {"id": "gsm8k-0", "generator": "Qwen2-7B-Instruct", "problem": "...",
     "steps": ["...", "..."], "final_answer_correct": false, "label": 1}

``label`` is the index of the earliest wrong step, -1 when every step is correct. The
subset of a record is the part of its id before the last "-" ("gsm8k-0" -> "gsm8k"),
unless a ``subset`` field says otherwise.

`load_records` reads a ``.jsonl`` file (one record a line), a ``.json`` file holding a
list of records, or a ``.json`` object mapping subset names to lists (the four splits in
one file). A malformed record raises `RecordError` naming the file, the record (line or
position, and id when it has one) and the field; with ``skip_bad=True`` it is skipped and
counted instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LoadResult",
    "Record",
    "RecordError",
    "load_records",
    "parse_record",
    "subset_of",
    "write_records",
]


class RecordError(ValueError):
    """A record that is not in ProcessBench format; the message names record and field."""


def subset_of(record_id: str) -> str:
    """The subset an id names: the part before the last "-" ("gsm8k-12" -> "gsm8k")."""
    head, sep, _ = record_id.rpartition("-")
    return head if sep else record_id


@dataclass(frozen=True)
class Record:
    """One step-by-step solution with the index of its earliest wrong step.

    Attributes:
        id: Unique id, "<subset>-<n>" in the reference data.
        problem: The problem text.
        steps: The solution's steps (paragraphs), at least one.
        label: Index of the earliest wrong step; -1 when all steps are correct.
        final_answer_correct: Whether the solution's final answer is right.
        generator: The model that wrote the solution.
        subset: Split name ("gsm8k", "math", ...); defaults to the id's prefix.
        meta: Any further fields, kept as they are (e.g. our synthetic "error_kind").
    """

    id: str
    problem: str
    steps: tuple[str, ...]
    label: int
    final_answer_correct: bool
    generator: str = ""
    subset: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        if not self.subset:
            object.__setattr__(self, "subset", subset_of(self.id))

    def to_dict(self) -> dict[str, Any]:
        """The record in the reference's field order (``subset`` only when it is not the
        id's prefix), then ``meta``."""
        out: dict[str, Any] = {
            "id": self.id,
            "generator": self.generator,
            "problem": self.problem,
            "steps": list(self.steps),
            "final_answer_correct": self.final_answer_correct,
            "label": self.label,
        }
        if self.subset != subset_of(self.id):
            out["subset"] = self.subset
        return out | dict(self.meta)


_REQUIRED = ("id", "problem", "steps", "label", "final_answer_correct")
_KNOWN = (*_REQUIRED, "generator", "subset")


def parse_record(d: Any, where: str) -> Record:
    """A `Record` from one decoded JSON value.

    Args:
        d: The decoded value.
        where: How to name the record in errors, e.g. "data.jsonl line 3".

    Raises:
        RecordError: A field is missing, has the wrong type, or is out of range.
    """
    if not isinstance(d, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(d).__name__}")
    rid = d.get("id")
    name = f"{where} (id {rid!r})" if isinstance(rid, str) else where
    missing = [f for f in _REQUIRED if f not in d]
    if missing:
        raise RecordError(f"{name}: missing field(s) {', '.join(map(repr, missing))}")

    def bad(fld: str, want: str) -> RecordError:
        v = d[fld]
        shown = repr(v) if len(repr(v)) < 60 else repr(v)[:57] + "..."
        return RecordError(f"{name}: field {fld!r} must be {want}, got {shown}")

    for fld in ("id", "problem"):
        if not isinstance(d[fld], str):
            raise bad(fld, "a string")
    if not d["id"]:
        raise bad("id", "a non-empty string")
    for fld in ("generator", "subset"):
        if fld in d and not isinstance(d[fld], str):
            raise bad(fld, "a string")
    steps = d["steps"]
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise bad("steps", "a list of strings")
    if not steps:
        raise bad("steps", "a non-empty list")
    if not isinstance(d["final_answer_correct"], bool):
        raise bad("final_answer_correct", "true or false")
    label = d["label"]
    if isinstance(label, bool) or not isinstance(label, int):
        raise bad("label", "an integer")
    if not -1 <= label < len(steps):
        raise bad("label", f"-1 or a step index in [0, {len(steps) - 1}] ({len(steps)} steps)")
    return Record(
        id=d["id"],
        problem=d["problem"],
        steps=tuple(steps),
        label=label,
        final_answer_correct=d["final_answer_correct"],
        generator=d.get("generator", ""),
        subset=d.get("subset", ""),
        meta={k: v for k, v in d.items() if k not in _KNOWN},
    )


@dataclass(frozen=True)
class LoadResult:
    """What `load_records` read.

    Attributes:
        records: The well-formed records, in file order.
        skipped: One message per malformed record skipped (``skip_bad=True`` only).
    """

    records: list[Record]
    skipped: list[str]

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def _jsonl(path: Path, text: str) -> Iterable[tuple[str, Any]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            yield where, RecordError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")


def _entries(path: Path) -> Iterable[tuple[str, Any]]:
    """(where, decoded value or RecordError) for each record of the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    if path.suffix == ".jsonl":
        yield from _jsonl(path, text)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if path.suffix != ".json" and text.lstrip().startswith("{"):
            yield from _jsonl(path, text)  # JSONL under another name
            return
        raise RecordError(
            f"{path.name}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "expected a list of records, an object of subset -> list, or JSONL (.jsonl)"
        ) from None
    if isinstance(data, list):
        for i, d in enumerate(data):
            yield f"{path.name} record {i}", d
    elif isinstance(data, dict) and "id" in data:
        yield f"{path.name} record 0", data
    elif isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        for subset, rows in data.items():
            for i, d in enumerate(rows):
                if isinstance(d, dict) and "subset" not in d:
                    d = d | {"subset": subset}
                yield f"{path.name} [{subset!r}] record {i}", d
    else:
        raise RecordError(
            f"{path.name}: expected a list of records, an object of subset -> list of "
            f"records, or JSONL; got a JSON {type(data).__name__}"
        )


def load_records(path: str | Path, *, skip_bad: bool = False) -> LoadResult:
    """Read ProcessBench records from a JSON or JSONL file.

    Args:
        path: A ``.jsonl`` file (one record a line), a ``.json`` list of records, or a
            ``.json`` object mapping subset names to lists of records.
        skip_bad: Skip malformed records (counted in `LoadResult.skipped`) instead of
            raising; a file that is not JSON at all still raises.

    Returns:
        A `LoadResult`.

    Raises:
        FileNotFoundError: No such file.
        RecordError: A malformed record (without ``skip_bad``), a duplicate id, or a file
            that is not JSON/JSONL.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    records: list[Record] = []
    skipped: list[str] = []
    seen: dict[str, str] = {}
    for where, d in _entries(path):
        try:
            if isinstance(d, RecordError):
                raise d
            r = parse_record(d, where)
            if r.id in seen:
                raise RecordError(f"{where}: duplicate id {r.id!r} (first at {seen[r.id]})")
        except RecordError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
            continue
        seen[r.id] = where
        records.append(r)
    return LoadResult(records, skipped)


def write_records(records: Iterable[Record | Mapping[str, Any]], path: str | Path) -> Path:
    """Write records (or plain dicts, e.g. with predictions) as JSONL; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            d = r.to_dict() if isinstance(r, Record) else dict(r)
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return path
