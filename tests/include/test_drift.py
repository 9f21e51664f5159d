"""PSI: smoothing of empty bins, identical windows, empty windows, open outer bins."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopline.monitoring import drift


def _profile(edges, values):
    shares = drift._bin_shares(np.asarray(values, dtype="float64"), np.asarray(edges, dtype="float64"))
    return {"features": {"x": {"edges": edges, "shares": shares.tolist(), "rows": len(values)}}}


def test_psi_empty_bins_are_smoothed():
    """Two empty current bins give a large finite PSI (4.30 with epsilon 1e-4)."""
    profile = _profile([2.5, 5.5, 8.5], list(range(1, 11)))
    current = pd.DataFrame({"x": [1, 2, 2, 3, 3, 4, 4, 5, 5, 5]})

    [result] = drift.feature_psi(profile, current, epsilon=1e-4, min_rows=1)

    assert result.status == "ok"
    assert result.value == pytest.approx(4.30, abs=0.005)


def test_psi_identical_windows_is_zero():
    values = list(range(1, 11))
    [result] = drift.feature_psi(_profile([2.5, 5.5, 8.5], values), pd.DataFrame({"x": values}), 1e-4, 1)
    assert result.value == 0.0


def test_psi_empty_window_not_computed():
    profile = _profile([2.5, 5.5, 8.5], list(range(1, 11)))
    [result] = drift.feature_psi(profile, pd.DataFrame({"x": pd.Series([], dtype="float64")}), 1e-4, 1)
    assert result.value is None
    assert result.status == "empty_window"


def test_psi_below_min_rows_is_insufficient():
    profile = _profile([2.5, 5.5, 8.5], list(range(1, 11)))
    [result] = drift.feature_psi(profile, pd.DataFrame({"x": [1.0, 2.0]}), 1e-4, min_rows=10)
    assert result.status == "insufficient_data"
    assert result.value is None


def test_reference_profile_outer_bins_count_out_of_range():
    """Values beyond the reference range land in the open outer bins, not dropped."""
    profile = drift.reference_profile(pd.DataFrame({"x": np.arange(100, dtype="float64")}), ["x"], bins=4)
    edges = np.asarray(profile["features"]["x"]["edges"])
    shares = drift._bin_shares(np.asarray([-1000.0, 1000.0, np.nan]), edges)
    assert shares.sum() == pytest.approx(1.0)
    assert shares[0] == pytest.approx(1 / 3)
    assert shares[-2] == pytest.approx(1 / 3)
    assert shares[-1] == pytest.approx(1 / 3)


def test_reference_profile_all_missing_column():
    """An all-missing training column has no edges and does not break the others."""
    frame = pd.DataFrame({"x": [np.nan, np.nan], "y": [1.0, 2.0]})
    profile = drift.reference_profile(frame, ["x", "y"], bins=4)
    assert profile["features"]["x"]["edges"] == []
    assert profile["features"]["x"]["shares"] == [0.0, 1.0]
    results = drift.feature_psi(profile, pd.DataFrame({"x": [np.nan, 1.0], "y": [1.0, 2.0]}), 1e-4, 1)
    assert all(result.status == "ok" for result in results)


def test_categorical_drift_new_category_named():
    """A category only in the current window counts over the union, never a shape error."""
    reference = {"card": 50, "cash": 50}
    current = pd.Series(["card"] * 30 + ["cash"] * 30 + ["wallet"] * 40)

    result = drift.categorical_drift(reference, current, epsilon=1e-4, min_rows=1, feature="payment")

    assert result.status == "ok"
    assert result.chi2_statistic == pytest.approx(50.0)
    assert result.chi2_pvalue == pytest.approx(1.3888e-11, rel=1e-3)
    assert result.psi == pytest.approx(3.52, abs=0.005)
    assert result.unseen_rate == pytest.approx(0.4)
    assert result.new_categories == {"wallet": pytest.approx(0.4)}


def test_categorical_drift_vanished_category_symmetric():
    """A category gone from the current window is drift too, with no new category."""
    result = drift.categorical_drift({"card": 50, "cash": 50}, pd.Series(["card"] * 30), 1e-4, 1)
    assert result.chi2_pvalue < 1e-5
    assert result.unseen_rate == 0.0
    assert result.new_categories == {}


def test_categorical_drift_missing_values_are_a_category():
    reference = {"a": 5, "__MISSING__": 5}
    result = drift.categorical_drift(reference, pd.Series(["a"] * 5 + [None] * 3 + ["N/A"] * 2), 1e-4, 1)
    assert result.chi2_statistic == pytest.approx(0.0)
    assert result.psi == 0.0
    assert result.unseen_rate == 0.0


def test_categorical_drift_empty_window_not_computed():
    result = drift.categorical_drift({"a": 1}, pd.Series([], dtype="object"), 1e-4, 1)
    assert result.status == "empty_window"
    assert result.chi2_pvalue is None
