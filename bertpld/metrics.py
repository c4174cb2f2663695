"""GLUE metrics, written out so that their definitions are visible (tests pin them to sklearn/scipy).

All functions take 1-D arrays (predictions first, then references) and return a Python float.
"""

from __future__ import annotations

import math

import numpy as np


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    preds, labels = _pair(preds, labels)
    return float(np.mean(preds == labels))


def f1(preds: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of the `positive` class; 0 when there are no true positives (as sklearn)."""
    preds, labels = _pair(preds, labels)
    tp = float(np.sum((preds == positive) & (labels == positive)))
    fp = float(np.sum((preds == positive) & (labels != positive)))
    fn = float(np.sum((preds != positive) & (labels == positive)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews(preds: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation, multiclass form (Gorodkin 2004); 0 when undefined (as sklearn)."""
    preds, labels = _pair(preds, labels)
    classes = np.union1d(preds, labels)
    # confusion matrix C[true, pred]
    c = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(c, (np.searchsorted(classes, labels), np.searchsorted(classes, preds)), 1)
    t, p = c.sum(axis=1), c.sum(axis=0)
    n, correct = c.sum(), np.trace(c)
    cov_ytyp = correct * n - t @ p
    cov_ypyp = n * n - p @ p
    cov_ytyt = n * n - t @ t
    denom = math.sqrt(cov_ytyt * cov_ypyp)
    return 0.0 if denom == 0 else float(cov_ytyp / denom)


def pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    x, y = _pair(preds, labels, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return float("nan") if denom == 0 else float(x @ y) / denom


def spearman(preds: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation of the ranks, ties given their average rank (as scipy)."""
    x, y = _pair(preds, labels, dtype=np.float64)
    return pearson(_rank(x), _rank(y))


METRICS = {"acc": accuracy, "f1": f1, "mcc": matthews, "pearson": pearson, "spearman": spearman}
"""Metric name (as used in results.json) -> function(preds, labels)."""


def compute(names: tuple[str, ...] | list[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: METRICS[name](preds, labels) for name in names}


def _rank(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # boundaries of runs of equal values; each run gets the mean of its 1-based positions
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], len(a)]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _pair(preds, labels, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    preds, labels = np.asarray(preds, dtype=dtype).ravel(), np.asarray(labels, dtype=dtype).ravel()
    assert preds.shape == labels.shape and preds.size > 0, "metrics need equal, non-empty arrays"
    return preds, labels
