"""Log loss and ROC AUC conventions on one-class windows and certain predictions."""

from __future__ import annotations

import math

import pytest

from loopline import metrics


def test_log_loss_one_class_certain_and_wrong():
    """Probability 0 for three positives costs -ln(1e-15) each, never ~0 or an error."""
    assert metrics.log_loss([1, 1, 1], [0.0, 0.0, 0.0]) == pytest.approx(34.5388, abs=1e-4)


def test_log_loss_all_negative_window():
    assert metrics.log_loss([0, 0, 0, 0], [0.1, 0.2, 0.05, 0.3]) == pytest.approx(0.1841, abs=1e-4)


def test_log_loss_exact_zero_and_one_stay_finite():
    assert metrics.log_loss([0, 1], [1.0, 1.0]) == pytest.approx(17.2698, abs=1e-4)
    assert metrics.log_loss([0, 1, 1, 0], [0, 1, 0.8, 0.3]) == pytest.approx(0.14495, abs=1e-5)


def test_log_loss_integer_probabilities_accepted():
    """Probabilities given as an integer array are clipped like floats, never a type error."""
    import numpy as np

    assert metrics.log_loss(np.array([0, 1]), np.array([0, 1], dtype="int64")) == pytest.approx(1e-15, abs=1e-14)
    assert metrics.log_loss(np.array([0, 1]), np.array([1, 1], dtype="int64")) == pytest.approx(17.2698, abs=1e-4)


def test_log_loss_empty_window_is_nan():
    assert math.isnan(metrics.log_loss([], []))


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.5])
def test_log_loss_invalid_probability_raises(bad):
    with pytest.raises(metrics.MetricInputError, match="probabilities must lie in"):
        metrics.log_loss([0, 1], [0.5, bad])


def test_log_loss_invalid_label_raises():
    with pytest.raises(metrics.MetricInputError, match="labels must be 0 or 1, got 2.0"):
        metrics.log_loss([0, 2], [0.5, 0.5])


def test_roc_auc_one_class_is_undefined():
    assert metrics.roc_auc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert metrics.roc_auc([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0


def test_pr_auc_no_positive_is_undefined():
    assert metrics.pr_auc([0, 0], [0.1, 0.2]) is None
    assert metrics.pr_auc([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0


def test_brier_score_values():
    assert metrics.brier_score([0, 1], [0.0, 1.0]) == 0.0
    assert metrics.brier_score([0, 1], [0.5, 0.5]) == pytest.approx(0.25)


def test_expected_calibration_error_values():
    """Two bins: 0.1 predicted for 1 of 2 positives, 0.95 for 2 of 2 positives."""
    # Bin 1 (0.1): mean label 0.5, gap 0.4; bin 9 (0.95 and 1.0): mean label 1, gap 0.025.
    value = metrics.expected_calibration_error([0, 1, 1, 1], [0.1, 0.1, 0.95, 1.0])
    assert value == pytest.approx(0.5 * 0.4 + 0.5 * 0.025)
    assert metrics.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
