"""A loader for HotpotQA-format JSON that a user supplies (no download here).

HotpotQA's distractor setting stores each question with ten paragraphs, two of which hold
the supporting facts::

    {"_id": "5a8b...", "question": "...", "answer": "...",
     "context": [["Title", ["Sentence one.", " Sentence two."]], ...],
     "supporting_facts": [["Title", 0], ...]}

`load_hotpotqa(path)` reads a JSON list of such records (or JSON lines) into `QAItem`s:
the paragraphs become "Title: sentences" blocks, the supporting sentences the evidence.
A malformed record raises a ValueError naming the record and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from minirepro.tasks.haystack import QAItem

__all__ = ["hotpotqa_item", "load_hotpotqa"]


def _fail(where: str, message: str) -> ValueError:
    return ValueError(f"{where}: {message}")


def hotpotqa_item(record: Any, where: str = "record") -> QAItem:
    """One HotpotQA record as a QAItem.

    Raises:
        ValueError: a missing or mistyped field (the message names it).
    """
    if not isinstance(record, dict):
        raise _fail(where, f"expected a JSON object, got {type(record).__name__}")
    for key in ("question", "answer", "context"):
        if key not in record:
            raise _fail(where, f"missing field {key!r}")
    question, answer = record["question"], record["answer"]
    if not isinstance(question, str) or not question.strip():
        raise _fail(where, "'question' must be a non-empty string")
    if not isinstance(answer, str) or not answer.strip():
        raise _fail(where, "'answer' must be a non-empty string")
    context = record["context"]
    if not isinstance(context, list) or not context:
        raise _fail(where, "'context' must be a non-empty list of [title, [sentences]]")
    paragraphs, by_title = [], {}
    for j, para in enumerate(context):
        if (
            not isinstance(para, (list, tuple))
            or len(para) != 2
            or not isinstance(para[0], str)
            or not isinstance(para[1], list)
            or not all(isinstance(s, str) for s in para[1])
        ):
            raise _fail(where, f"context[{j}] must be [title, [sentence, ...]]")
        title, sentences = para
        by_title[title] = sentences
        paragraphs.append(f"{title}: " + " ".join(s.strip() for s in sentences))
    evidence = []
    for j, fact in enumerate(record.get("supporting_facts", [])):
        if not isinstance(fact, (list, tuple)) or len(fact) != 2 or not isinstance(fact[1], int):
            raise _fail(where, f"supporting_facts[{j}] must be [title, sentence index]")
        title, k = fact
        if title not in by_title or not 0 <= k < len(by_title[title]):
            raise _fail(where, f"supporting_facts[{j}] = {fact!r} names no sentence of the context")
        evidence.append(by_title[title][k].strip())
    return QAItem(
        id=str(record.get("_id", where)),
        kind="hotpotqa",
        context="\n\n".join(paragraphs),
        question=question.strip(),
        answers=(answer.strip(),),
        evidence=tuple(e for e in evidence if e),
        meta={"type": record.get("type"), "level": record.get("level")},
    )


def load_hotpotqa(path: str | Path, limit: int | None = None) -> list[QAItem]:
    """Read HotpotQA records from a JSON list or JSON-lines file.

    Args:
        path: the file.
        limit: read at most this many records.
    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, not a list of records, or a malformed record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no HotpotQA file at {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path} is neither a JSON list nor JSON lines (line {n}: {exc.msg})"
                ) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of HotpotQA records")
    records = data if limit is None else data[:limit]
    return [hotpotqa_item(r, f"{path.name} record {i}") for i, r in enumerate(records)]
