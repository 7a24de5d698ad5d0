"""Features (resampling) and the classifiers' cross-validation."""

import numpy as np
import pytest
import torch

from minirepro.papers.lrp4rag import (
    LSTMClassifier,
    cross_validate,
    matrix_features,
    resample_1d,
    resample_2d,
    token_means,
)


def test_resampling_is_bin_averaging():
    x = torch.arange(12.0)
    torch.testing.assert_close(resample_1d(x, 4), torch.tensor([1.0, 4.0, 7.0, 10.0]))
    torch.testing.assert_close(
        resample_1d(torch.tensor([1.0, 3.0]), 4), torch.tensor([1.0, 1, 3, 3])
    )
    m = torch.arange(24.0).reshape(4, 6)
    torch.testing.assert_close(resample_2d(m, (2, 3)), m.reshape(2, 2, 3, 2).mean((1, 3)))
    torch.testing.assert_close(resample_1d(x, 12), x)
    assert token_means(m).tolist() == m.mean(1).tolist()


def test_matrix_features_shapes_and_bad_input():
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(n, p, generator=g) for n, p in [(3, 40), (17, 55), (250, 30)]]
    assert matrix_features(mats, 220).shape == (3, 220)
    assert matrix_features(mats, grid=(8, 16)).shape == (3, 8, 16)
    with pytest.raises(ValueError, match="non-empty 2-D"):
        token_means(torch.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        resample_1d([1.0, float("nan")], 3)
    with pytest.raises(ValueError, match="no relevance"):
        matrix_features([])


def _separable(n=60, seed=0):
    """Hallucinated rows have a dip at the end, as a swapped entity gives."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(0.0, 1.0, (n, 20)).astype(np.float32)
    X[:, -5:] -= 2.5 * y[:, None]
    return X, y


@pytest.mark.parametrize("name", ["svm", "rf", "mlp", "logreg"])
def test_classifiers_learn_a_separable_signal(name):
    X, y = _separable()
    sc = cross_validate(X, y, name, 5, seed=0)
    assert sc.roc_auc > 0.9 and sc.accuracy > 0.8, sc
    noise = cross_validate(np.random.default_rng(1).normal(size=X.shape), y, name, 5, seed=0)
    assert noise.roc_auc < 0.8  # and nothing from noise


def test_lstm_learns_and_cv_checks_its_input():
    X, y = _separable()
    sc = cross_validate(X.reshape(-1, 4, 5), y, "lstm", 5, seed=0, groups=np.arange(60) // 2)
    assert sc.roc_auc > 0.9, sc
    with pytest.raises(ValueError, match=r"\(N, rows, cols\)"):
        LSTMClassifier().fit(X, y)
    with pytest.raises(ValueError, match="unknown classifier"):
        cross_validate(X, y, "xgboost")
    with pytest.raises(ValueError, match="samples of each class"):
        cross_validate(X[:6], y[:6], "svm")
