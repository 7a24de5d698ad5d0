"""Tiny step verifiers: the core decoder with a per-step score head, trained with process
labels (a PRM) or with outcome labels only (an outcome verifier).

A record is encoded as ``<bos> problem <sep> step_0 <step> step_1 <step> ...``; the head
reads the decoder's final hidden state at each ``<step>`` token and gives the logit of
"everything up to here is right" (Math-Shepherd's step tag; the reference's TRL PRMs score
the last token of each step the same way). The decoder is causal, so a step's score sees
the problem and the steps so far, never later ones.

Supervision (`step_targets`):

- "process" (PRM): steps before the label are good (1), the labelled step is bad (0),
  later steps are not trained on (PRM800K stops at the first error); all good for -1;
- "outcome" (ORM): every step gets the solution's ``final_answer_correct`` — all a
  verifier trained from final answers can know.

Both are evaluated the ProcessBench way for PRMs: the prediction is the first step whose
score falls below a threshold (-1 if none), the threshold chosen by F1 on a calibration
subset (`choose_threshold`; the paper calibrates on GSM8K).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.tokenizer import WordTokenizer, load_tokenizer
from minirepro.core.train import TrainConfig, train
from minirepro.papers.processbench.metric import f1_score
from minirepro.papers.processbench.records import Record

__all__ = [
    "SEP",
    "STEP",
    "StepScorer",
    "Verifier",
    "VerifierConfig",
    "build_tokenizer",
    "choose_threshold",
    "encode_record",
    "first_below",
    "step_targets",
    "train_verifier",
]

SEP, STEP = "<sep>", "<step>"
IGNORE = -100.0
Supervision = Literal["process", "outcome"]


def build_tokenizer(records: Sequence[Record]) -> WordTokenizer:
    """A word tokenizer (punctuation split off) over the records' texts, with ``<sep>`` and
    ``<step>``; unknown words of other records map to ``<unk>``."""
    texts = [t for r in records for t in (r.problem, *r.steps)]
    return WordTokenizer.from_texts(texts, specials=[SEP, STEP], split_punct=True)


def encode_record(tok: WordTokenizer, record: Record) -> tuple[list[int], list[int]]:
    """Token ids of a record and the position of each step's ``<step>`` token.

    Returns:
        ``(ids, positions)``: ids of ``<bos> problem <sep> step_0 <step> ...`` and
        ``len(record.steps)`` indices into them.
    """
    ids = [tok.bos_id, *tok.encode(record.problem), tok.token_to_id(SEP)]
    positions = []
    step_id = tok.token_to_id(STEP)
    for s in record.steps:
        ids += [*tok.encode(s), step_id]
        positions.append(len(ids) - 1)
    return ids, positions


def step_targets(record: Record, supervision: Supervision) -> list[float]:
    """Per-step training targets: 1 good, 0 bad, `IGNORE` (-100) not trained on."""
    n = len(record.steps)
    if supervision == "outcome":
        return [float(record.final_answer_correct)] * n
    if supervision != "process":
        raise ValueError(f"supervision must be 'process' or 'outcome', got {supervision!r}")
    if record.label == -1:
        return [1.0] * n
    return [1.0] * record.label + [0.0] + [IGNORE] * (n - record.label - 1)


class StepScorer(nn.Module):
    """The core decoder with a linear score head on its final hidden states.

    Args:
        cfg: The decoder's shape.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.decoder = Transformer(cfg)
        self.head = nn.Linear(cfg.d_model, 1)

    def forward(self, idx: Tensor) -> Tensor:
        """Score logits (B, S) for token ids idx (B, S); read them at ``<step>`` tokens."""
        h = self.decoder(idx, return_hidden=True)  # (B, S, d_model)
        return self.head(h).squeeze(-1)  # (B, S)


@dataclass
class VerifierConfig:
    """A verifier's shape and training.

    Attributes:
        d_model, n_layer, n_head: The decoder.
        steps, batch_size, lr, warmup_steps, weight_decay: Training (core trainer).
        precision: "fp32", "bf16" or "auto" (`minirepro.core.precision`).
    """

    d_model: int = 128
    n_layer: int = 3
    n_head: int = 4
    steps: int = 600
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    precision: str = "auto"


def _pad(rows: Sequence[Sequence[float]], fill: float, dtype: torch.dtype) -> Tensor:
    n = max(len(r) for r in rows)
    return torch.tensor([list(r) + [fill] * (n - len(r)) for r in rows], dtype=dtype)


@dataclass
class Verifier:
    """A trained step verifier with its tokenizer.

    Attributes:
        model: The `StepScorer`.
        tokenizer: Its word tokenizer.
        supervision: "process" (PRM) or "outcome".
        threshold: The calibrated threshold (`calibrate`), or None.
    """

    model: StepScorer
    tokenizer: WordTokenizer
    supervision: str
    threshold: float | None = None

    @torch.inference_mode()
    def step_scores(self, records: Sequence[Record], batch_size: int = 64) -> list[list[float]]:
        """P(good so far) at each step of each record: (N,) lists of len(steps)."""
        self.model.eval()
        max_len = self.model.decoder.cfg.max_seq_len
        out: list[list[float]] = []
        for b in range(0, len(records), batch_size):
            enc = [encode_record(self.tokenizer, r) for r in records[b : b + batch_size]]
            for r, (ids, _) in zip(records[b : b + batch_size], enc):
                if len(ids) > max_len:
                    raise ValueError(
                        f"record {r.id!r}: {len(ids)} tokens exceed the verifier's "
                        f"max_seq_len {max_len}"
                    )
            x = _pad([ids for ids, _ in enc], self.tokenizer.pad_id, torch.long)
            probs = torch.sigmoid(self.model(x).float())  # (B, S)
            out += [probs[i, pos].tolist() for i, (_, pos) in enumerate(enc)]
        return out

    def calibrate(self, records: Sequence[Record]) -> float:
        """Choose and keep the threshold with the best F1 on ``records``."""
        self.threshold = choose_threshold(self.step_scores(records), [r.label for r in records])
        return self.threshold

    def predict(self, records: Sequence[Record], threshold: float | None = None) -> list[int]:
        """First step below the threshold per record (-1 if none)."""
        t = threshold if threshold is not None else self.threshold
        if t is None:
            raise ValueError("no threshold: call calibrate(records) or pass threshold=")
        return [first_below(s, t) for s in self.step_scores(records)]

    def save(self, folder: str | Path) -> Path:
        """Write model.safetensors, config.json (shape, supervision, threshold), tokenizer."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(folder / "model.safetensors"))
        meta = {
            "model": self.model.decoder.cfg.to_dict(),
            "supervision": self.supervision,
            "threshold": self.threshold,
        }
        (folder / "config.json").write_text(json.dumps(meta, indent=1))
        self.tokenizer.save(folder / "tokenizer.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Verifier:
        """Read a verifier written by `save`."""
        from safetensors.torch import load_model

        folder = Path(folder)
        files = [folder / n for n in ("model.safetensors", "config.json", "tokenizer.json")]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not a saved verifier (missing {', '.join(missing)}); "
                "`minirepro run processbench` saves them under <run folder>/verifiers/"
            )
        meta = json.loads(files[1].read_text())
        model = StepScorer(ModelConfig(**meta["model"]))
        load_model(model, str(files[0]))
        return cls(model.eval(), load_tokenizer(files[2]), meta["supervision"], meta["threshold"])


def train_verifier(
    records: Sequence[Record],
    supervision: Supervision,
    cfg: VerifierConfig,
    seed: int,
    tokenizer: WordTokenizer | None = None,
    max_seq_len: int | None = None,
) -> tuple[Verifier, list[dict[str, float]]]:
    """Train a step verifier on labelled records with the core trainer.

    Args:
        records: Training records (labels used as `step_targets` says).
        supervision: "process" or "outcome".
        cfg: Shape and training.
        seed: Model initialisation and batch order.
        tokenizer: Default: `build_tokenizer(records)`.
        max_seq_len: Longest input the model accepts (default: the longest record).

    Returns:
        The verifier and the trainer's metrics history.
    """
    tok = tokenizer or build_tokenizer(records)
    enc = [encode_record(tok, r) for r in records]
    targets = [step_targets(r, supervision) for r in records]
    longest = max(len(ids) for ids, _ in enc)
    x = _pad([ids for ids, _ in enc], tok.pad_id, torch.long)  # (N, S)
    y = torch.full(x.shape, IGNORE)  # (N, S): a target at each <step>
    for i, ((_, pos), t) in enumerate(zip(enc, targets)):
        y[i, pos] = torch.tensor(t)
    mcfg = ModelConfig(
        vocab_size=tok.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
        d_model=cfg.d_model, max_seq_len=max(max_seq_len or 0, longest),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = StepScorer(mcfg)
    tcfg = TrainConfig(
        steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, seed=seed, log_every=max(1, cfg.steps // 10),
        precision=cfg.precision,
    )  # fmt: skip

    def get_batch(i: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, len(records), (cfg.batch_size,), generator=g)
        xb, yb = x[idx], y[idx]
        width = int((xb != tok.pad_id).sum(1).max())  # trim the common padding
        return xb[:, :width], yb[:, :width]

    state = train(model, tcfg, get_batch, loss_fn=_step_loss)
    return Verifier(model.eval(), tok, supervision), state.history


def _step_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Binary cross-entropy at the labelled ``<step>`` positions."""
    x, y = batch
    logits = model(x).float()  # (B, S)
    keep = y != IGNORE
    return F.binary_cross_entropy_with_logits(logits[keep], y[keep])


# ----- thresholding ---------------------------------------------------------------------------
def first_below(scores: Sequence[float], threshold: float) -> int:
    """Index of the first score below ``threshold``; -1 if none (the PRM's prediction)."""
    return next((i for i, s in enumerate(scores) if s < threshold), -1)


def choose_threshold(scores: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    """The threshold with the best ProcessBench F1 of `first_below` on these records.

    Every threshold between two neighbouring distinct scores gives the same predictions, so
    the candidates are the distinct scores (and one above all); of the best candidate's
    interval (previous distinct score, candidate] the midpoint is returned, which keeps
    the same predictions here and is the least fragile on new data. Ties go to the lowest.

    Args:
        scores: (N,) per-step scores of each record (higher = better).
        labels: (N,) labels.
    """
    if len(scores) != len(labels) or not scores:
        raise ValueError(
            f"need aligned non-empty scores and labels, got {len(scores)}, {len(labels)}"
        )
    if any(len(s) == 0 for s in scores):
        raise ValueError("every record needs at least one step score")
    values = np.unique(np.concatenate([np.asarray(s, dtype=float) for s in scores]))
    cands = np.append(values, values[-1] + 1.0)  # (T,)
    # prediction == label <=> t in (s_label, min of earlier scores]; -1 <=> t <= min of all
    lo = np.empty(len(scores))
    hi = np.empty(len(scores))
    for i, (s, y) in enumerate(zip(scores, labels)):
        s = np.asarray(s, dtype=float)
        if y == -1:
            lo[i], hi[i] = -np.inf, s.min()
        else:
            lo[i], hi[i] = s[y], (s[:y].min() if y > 0 else np.inf)
    match = (cands[:, None] > lo[None]) & (cands[:, None] <= hi[None])  # (T, N)
    err = np.asarray(labels) != -1
    acc_e = match[:, err].mean(1) if err.any() else np.full(len(cands), math.nan)
    acc_c = match[:, ~err].mean(1) if (~err).any() else np.full(len(cands), math.nan)
    f1 = np.array([f1_score(a, c) for a, c in zip(acc_e, acc_c)])
    best = int(np.nanargmax(f1)) if not np.isnan(f1).all() else 0
    below = cands[best - 1] if best > 0 else cands[0] - 1.0
    return float((below + cands[best]) / 2)
