"""Model quality metrics with fixed, documented conventions.

Log loss is binary with the positive class fixed to 1, whatever classes a window holds,
and probabilities are clipped to [LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON] so it is always
finite: a certain and wrong prediction costs -ln(1e-15) = 34.5388. ROC AUC is undefined
(None) for a window with one class.
"""

from __future__ import annotations

import math

import numpy as np

# Clipping constant of log loss, the one scikit-learn used before 1.5; training, the
# registry gate and monitoring all use it, so their numbers are comparable.
LOG_LOSS_EPSILON = 1e-15
# Equal-width probability bins of the expected calibration error.
ECE_BINS = 10


class MetricInputError(ValueError):
    """Labels or probabilities are not valid input for a metric."""


def _validated(y_true, probability) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(y_true, dtype="float64").ravel()
    scores = np.asarray(probability, dtype="float64").ravel()
    if labels.shape != scores.shape:
        raise MetricInputError(f"got {labels.size} labels but {scores.size} probabilities; pass one of each per row")
    if labels.size and not np.isin(labels, (0.0, 1.0)).all():
        bad = labels[~np.isin(labels, (0.0, 1.0))][0]
        raise MetricInputError(f"labels must be 0 or 1, got {float(bad)!r}")
    invalid = np.isnan(scores) | (scores < 0) | (scores > 1)
    if invalid.any():
        raise MetricInputError(
            f"probabilities must lie in [0, 1], got {float(scores[invalid][0])!r} in {int(invalid.sum())} row(s)"
        )
    return labels, scores


def log_loss(y_true, probability) -> float:
    """Return mean binary cross-entropy, or NaN for an empty window."""
    labels, scores = _validated(y_true, probability)
    if labels.size == 0:
        return math.nan
    clipped = np.clip(scores, LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON)
    losses = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    return float(losses.mean())


def roc_auc(y_true, probability) -> float | None:
    """Return ROC AUC, or None when the window lacks one of the two classes."""
    from sklearn.metrics import roc_auc_score

    labels, scores = _validated(y_true, probability)
    if np.unique(labels).size < 2:
        return None
    return float(roc_auc_score(labels, scores))


def pr_auc(y_true, probability) -> float | None:
    """Return the area under the precision-recall curve (average precision), or None
    when the window has no positive."""
    from sklearn.metrics import average_precision_score

    labels, scores = _validated(y_true, probability)
    if labels.size == 0 or labels.sum() == 0:
        return None
    return float(average_precision_score(labels, scores))


def brier_score(y_true, probability) -> float:
    """Return the mean squared difference of probability and label, or NaN when empty."""
    labels, scores = _validated(y_true, probability)
    if labels.size == 0:
        return math.nan
    return float(np.mean((scores - labels) ** 2))


def calibration_bins(y_true, probability, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return, for each non-empty equal-width probability bin, its row count, mean
    probability and observed positive rate. A probability of exactly 1 falls in the last bin."""
    labels, scores = _validated(y_true, probability)
    index = np.minimum((scores * bins).astype("int64"), bins - 1)
    counts = np.bincount(index, minlength=bins)
    filled = counts > 0
    mean_probability = np.bincount(index, weights=scores, minlength=bins)[filled] / counts[filled]
    positive_rate = np.bincount(index, weights=labels, minlength=bins)[filled] / counts[filled]
    return counts[filled], mean_probability, positive_rate


def expected_calibration_error(y_true, probability, bins: int = ECE_BINS) -> float:
    """Return the expected calibration error over equal-width probability bins.

    ECE = sum over bins of (rows in bin / rows) * |positive rate - mean probability|.
    NaN for an empty window.
    """
    counts, mean_probability, positive_rate = calibration_bins(y_true, probability, bins)
    if counts.sum() == 0:
        return math.nan
    return float(np.sum(counts / counts.sum() * np.abs(positive_rate - mean_probability)))


def quality_summary(y_true, probability) -> dict[str, float | None]:
    """Return the quality metrics of one window, keyed by metric name."""
    labels, scores = _validated(y_true, probability)
    return {
        "log_loss": log_loss(labels, scores),
        "roc_auc": roc_auc(labels, scores),
        "pr_auc": pr_auc(labels, scores),
        "brier_score": brier_score(labels, scores),
        "expected_calibration_error": expected_calibration_error(labels, scores),
        "positive_rate": float(labels.mean()) if labels.size else math.nan,
        "mean_probability": float(scores.mean()) if scores.size else math.nan,
        "rows": float(labels.size),
    }
