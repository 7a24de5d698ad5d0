"""Score a ProcessBench file with one evaluator: what `minirepro processbench eval` runs.

>>> result = evaluate_file("processbench.jsonl", "critic")  # doctest: +SKIP
>>> print(result.report.table())  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minirepro.papers.processbench.metric import Report, score
from minirepro.papers.processbench.records import Record, load_records, write_records

__all__ = ["EVALUATORS", "FileResult", "evaluate_file", "evaluate_records"]

EVALUATORS = ("critic", "prm", "outcome")


@dataclass
class FileResult:
    """What `evaluate_file` returns.

    Attributes:
        report: The metric per subset and averaged.
        predictions: One dict per record: id, subset, label, prediction, match, and the
            evaluator's evidence (critiques and samples, or step scores and threshold).
        n_skipped: Malformed records skipped (``skip_bad``).
        skipped: Their error messages.
    """

    report: Report
    predictions: list[dict[str, Any]]
    n_skipped: int = 0
    skipped: tuple[str, ...] = ()

    def write(self, path: str | Path) -> Path:
        """The per-record predictions as JSONL."""
        return write_records(self.predictions, path)


def evaluate_records(
    records: Sequence[Record],
    evaluator: str,
    model: Any = None,
    *,
    samples: int = 1,
    max_new_tokens: int = 512,
    calibration_subset: str | None = None,
) -> tuple[Report, list[dict[str, Any]]]:
    """Predict the earliest wrong step of each record and score the predictions.

    Args:
        records: (N,) records.
        evaluator: "critic" (a chat model: ``model`` "smollm2", the default, or any
            `minirepro.core.pretrained.Pretrained`), "prm" or "outcome" (``model``: a
            verifier folder saved by `Verifier.save`, or a `Verifier`).
        model: See ``evaluator``.
        samples: Critic samples per record (more than 1: majority vote).
        max_new_tokens: Critic generation budget.
        calibration_subset: For prm/outcome: choose the threshold by F1 on this subset of
            ``records`` (the paper uses gsm8k) instead of the saved one.

    Returns:
        The report and one prediction dict per record.
    """
    if evaluator not in EVALUATORS:
        raise ValueError(f"unknown evaluator {evaluator!r}; expected one of {EVALUATORS}")
    if not records:
        raise ValueError("no records to evaluate")
    rows = [{"id": r.id, "subset": r.subset, "label": r.label} for r in records]
    if evaluator == "critic":
        preds = _critic(records, model, samples, max_new_tokens, rows)
    else:
        preds = _verifier(records, evaluator, model, calibration_subset, rows)
    for row, p in zip(rows, preds):
        row |= {"prediction": p, "match": p == row["label"]}
    return score(records, preds), rows


def _critic(records, model, samples, max_new_tokens, rows) -> list[int | None]:
    from minirepro.core.pretrained import load_smollm2
    from minirepro.papers.processbench.critic import Critic

    named = model is None or isinstance(model, (str, Path))
    if named and model not in (None, "smollm2"):
        raise ValueError(
            f"the critic runs 'smollm2' (SmolLM2-135M-Instruct) or a Pretrained, got {model!r}"
        )
    critic = Critic(load_smollm2() if named else model)
    try:
        outs = critic.predict(records, samples, max_tokens=max_new_tokens)
    finally:
        critic.close()
    for row, o in zip(rows, outs):
        row |= {"samples": list(o.samples), "critiques": list(o.critiques)}
    return [o.prediction for o in outs]


def _verifier(records, evaluator, model, calibration_subset, rows) -> list[int]:
    from minirepro.papers.processbench.verifier import Verifier, choose_threshold, first_below

    if model is None:
        raise ValueError(
            f"--evaluator {evaluator} needs --model: a verifier folder saved by "
            "`minirepro run processbench` (<run folder>/verifiers/prm-seed0)"
        )
    v = model if isinstance(model, Verifier) else Verifier.load(model)
    want = "process" if evaluator == "prm" else "outcome"
    if v.supervision != want:
        raise ValueError(f"{model} holds a {v.supervision!r} verifier, not {want!r} ({evaluator})")
    scores = v.step_scores(records)
    threshold = v.threshold
    if calibration_subset is not None:
        idx = [i for i, r in enumerate(records) if r.subset == calibration_subset]
        if not idx:
            subsets = sorted({r.subset for r in records})
            raise ValueError(f"no records of subset {calibration_subset!r}; the file has {subsets}")
        threshold = choose_threshold([scores[i] for i in idx], [records[i].label for i in idx])
    if threshold is None:
        raise ValueError(f"{model} has no calibrated threshold; pass a calibration subset")
    for row, s in zip(rows, scores):
        row |= {"step_scores": s, "threshold": threshold}
    return [first_below(s, threshold) for s in scores]


def evaluate_file(
    path: str | Path, evaluator: str, model: str | Path | None = None, *, skip_bad: bool = False,
    limit: int | None = None, **kwargs: Any,
) -> FileResult:  # fmt: skip
    """`load_records` then `evaluate_records`.

    Args:
        path: A ProcessBench JSON or JSONL file.
        evaluator: "critic", "prm" or "outcome".
        model: See `evaluate_records`.
        skip_bad: Skip malformed records (counted) instead of failing.
        limit: Evaluate only the first ``limit`` records of each subset.
        kwargs: Passed to `evaluate_records`.
    """
    if evaluator not in EVALUATORS:  # before reading a large file
        raise ValueError(f"unknown evaluator {evaluator!r}; expected one of {EVALUATORS}")
    loaded = load_records(path, skip_bad=skip_bad)
    records = loaded.records
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        seen: dict[str, int] = {}
        keep = []
        for r in records:
            seen[r.subset] = seen.get(r.subset, 0) + 1
            if seen[r.subset] <= limit:
                keep.append(r)
        records = keep
    report, rows = evaluate_records(records, evaluator, model, **kwargs)
    return FileResult(report, rows, loaded.n_skipped, tuple(loaded.skipped))
