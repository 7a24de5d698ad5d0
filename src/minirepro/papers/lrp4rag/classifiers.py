"""The four hallucination classifiers of LRP4RAG and their k-fold evaluation.

SVM (rbf), random forest and MLP come from scikit-learn and read the resampled per-token
vector; the LSTM (torch) reads the 2-D resampled matrix row by row. `cross_validate` runs
stratified k-fold (grouped by source when groups are given, so responses to the same
passage never sit on both sides of a split) and averages accuracy, precision, recall, F1 and
ROC-AUC over the folds, the hallucinated class being positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import nn

from minirepro.core.threads import num_threads

__all__ = ["CLASSIFIERS", "LSTMClassifier", "Scores", "cross_validate", "make_classifier"]

CLASSIFIERS = ("svm", "rf", "mlp", "lstm", "logreg")


class _LSTMNet(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_layer: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_in, hidden, n_layer, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x)  # h: (n_layer, B, hidden)
        return self.head(h[-1])[:, 0]  # (B,) logit of "hallucinated"


class LSTMClassifier(ClassifierMixin, BaseEstimator):
    """An LSTM over the rows of a (rows, cols) relevance grid; scikit-learn interface.

    The reference's LSTM (2 layers, 256 units, 800 inputs) reads a 300 × 800 grid; the
    default here is smaller for a CPU. Inputs are standardised with the training set's
    per-column mean and std. Training is full-batch Adam on binary cross-entropy.

    Args:
        hidden: LSTM units.
        n_layer: LSTM layers.
        epochs: full-batch steps.
        lr: Adam learning rate.
        seed: seed of the initial weights.
    """

    def __init__(
        self, hidden: int = 32, n_layer: int = 1, epochs: int = 150, lr: float = 1e-2, seed: int = 0
    ) -> None:
        self.hidden, self.n_layer, self.epochs, self.lr, self.seed = (
            hidden,
            n_layer,
            epochs,
            lr,
            seed,
        )

    def _x(self, X: np.ndarray) -> torch.Tensor:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 3:
            raise ValueError(f"LSTMClassifier needs (N, rows, cols) inputs, got shape {X.shape}")
        return torch.from_numpy((X - self.mean_) / self.std_)

    def fit(self, X: np.ndarray, y: np.ndarray) -> LSTMClassifier:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 3:
            raise ValueError(f"LSTMClassifier needs (N, rows, cols) inputs, got shape {X.shape}")
        self.classes_ = np.array([0, 1])
        self.mean_ = X.mean((0, 1), keepdims=True)
        self.std_ = X.std((0, 1), keepdims=True) + 1e-8
        g = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
            self.net_ = _LSTMNet(X.shape[2], self.hidden, self.n_layer)
        opt = torch.optim.Adam(self.net_.parameters(), lr=self.lr)
        xt, yt = self._x(X), torch.as_tensor(np.asarray(y), dtype=torch.float32)
        for _ in range(self.epochs):
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(self.net_(xt), yt)
            loss.backward()
            opt.step()
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            p = torch.sigmoid(self.net_(self._x(X))).numpy()
        return np.stack([1 - p, p], 1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] > 0.5).astype(int)


def make_classifier(name: str, seed: int = 0):
    """A fresh, unfitted classifier.

    Args:
        name: "svm" (rbf kernel), "rf" (random forest), "mlp", "lstm", or "logreg" (for
            one-number baselines).
        seed: its random state.
    """
    if name == "svm":
        return make_pipeline(StandardScaler(), SVC(kernel="rbf", C=10.0))
    if name == "rf":
        return RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    if name == "mlp":
        return make_pipeline(
            StandardScaler(),
            MLPClassifier((64,), alpha=1e-2, max_iter=1000, random_state=seed),
        )
    if name == "lstm":
        return LSTMClassifier(seed=seed)
    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression())
    raise ValueError(f"unknown classifier {name!r}; choose one of {CLASSIFIERS}")


@dataclass
class Scores:
    """Mean over the folds of each metric (hallucinated = positive class)."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    roc_auc: float


def _score(model, X: np.ndarray) -> np.ndarray:
    if hasattr(model, "decision_function"):
        return model.decision_function(X)
    return model.predict_proba(X)[:, 1]


def cross_validate(
    X: np.ndarray,
    y: np.ndarray,
    name: str,
    n_splits: int = 5,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> Scores:
    """Stratified (grouped) k-fold evaluation of classifier `name` on features X.

    Args:
        X: (N, F) features, or (N, rows, cols) for "lstm".
        y: (N,) labels, 1 = hallucinated.
        name: a name `make_classifier` knows.
        n_splits: folds ("5-fold cross-validation").
        seed: shuffles the folds and seeds the classifier.
        groups: (N,) source ids; responses of one source stay in one fold.
    """
    X, y = np.asarray(X), np.asarray(y).astype(int)
    if len(X) != len(y):
        raise ValueError(f"{len(X)} feature rows but {len(y)} labels")
    counts = np.bincount(y, minlength=2)
    if counts.min() < n_splits:
        raise ValueError(
            f"{n_splits}-fold CV needs >= {n_splits} samples of each class, got {counts.tolist()}"
        )
    if groups is None:
        folds = StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(X, y)
    else:
        folds = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(X, y, groups)
    rows = []
    # One torch and one BLAS thread: these models are tiny, and on a loaded 2-core machine a
    # second thread made a 150-step LSTM fit take minutes instead of a second (NOTES.md).
    with num_threads(1, blas=True):
        for train, test in folds:
            rows.append(_fold(name, seed, X, y, train, test))
    return Scores(*(float(v) for v in np.nanmean(np.array(rows), 0)))


def _fold(name: str, seed: int, X, y, train, test) -> list[float]:
    """Fit on one fold's training part; the five metrics on its test part."""
    model = make_classifier(name, seed).fit(X[train], y[train])
    pred = model.predict(X[test])
    both = len(set(y[test])) == 2
    return [
        accuracy_score(y[test], pred),
        precision_score(y[test], pred, zero_division=0),
        recall_score(y[test], pred, zero_division=0),
        f1_score(y[test], pred, zero_division=0),
        roc_auc_score(y[test], _score(model, X[test])) if both else np.nan,
    ]
