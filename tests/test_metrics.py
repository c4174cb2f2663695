import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from bertpld import metrics


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    labels = rng.integers(0, 2, n)
    preds = np.where(rng.random(n) < 0.7, labels, 1 - labels)
    assert metrics.accuracy(preds, labels) == pytest.approx(skm.accuracy_score(labels, preds))
    assert metrics.f1(preds, labels) == pytest.approx(skm.f1_score(labels, preds))
    assert metrics.matthews(preds, labels) == pytest.approx(skm.matthews_corrcoef(labels, preds))


@pytest.mark.parametrize("seed", range(3))
def test_matthews_multiclass_matches_sklearn(seed):
    rng = np.random.default_rng(100 + seed)
    labels, preds = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert metrics.matthews(preds, labels) == pytest.approx(skm.matthews_corrcoef(labels, preds))


def test_degenerate_cases_match_sklearn():
    labels = np.array([0, 1, 1, 0])
    allzero = np.zeros(4, dtype=int)
    assert metrics.matthews(allzero, labels) == skm.matthews_corrcoef(labels, allzero) == 0.0
    assert metrics.f1(allzero, labels) == skm.f1_score(labels, allzero, zero_division=0) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 5, 150)
    x = y + rng.normal(0, 1.5, 150)
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    # STS-B gold scores have many ties: the average-rank rule matters
    yt, xt = np.round(y), np.round(x * 2) / 2
    assert metrics.spearman(xt, yt) == pytest.approx(stats.spearmanr(xt, yt)[0])


def test_compute_by_name():
    out = metrics.compute(("f1", "acc"), np.array([1, 0, 1]), np.array([1, 1, 1]))
    assert out == pytest.approx({"f1": 0.8, "acc": 2 / 3})
