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


# ---------------------------------------------------------------------------------------
# Kolmogorov-Smirnov test and Jensen-Shannon distance against a stored profile
# ---------------------------------------------------------------------------------------


def _ks_against_scipy(reference, current, ecdf_max_points=drift.ECDF_MAX_POINTS, method="exact"):
    from scipy.stats import ks_2samp

    profile = drift.reference_profile(pd.DataFrame({"x": reference}), ["x"], bins=10, ecdf_max_points=ecdf_max_points)
    [result] = drift.numerical_drift(profile, pd.DataFrame({"x": current}), epsilon=1e-4, min_rows=1)
    expected = ks_2samp(reference[~np.isnan(reference)], current[~np.isnan(current)], method=method)
    return result, expected, profile


@pytest.mark.parametrize(
    "reference, current",
    [
        (np.arange(40, dtype="float64") % 7, (np.arange(55, dtype="float64") % 9)),
        (np.random.default_rng(1).normal(size=3000), np.random.default_rng(2).normal(0.1, 1.2, size=2000)),
        (np.random.default_rng(3).integers(0, 30, 5000).astype("float64"), np.random.default_rng(4).integers(5, 40, 700).astype("float64")),
    ],
    ids=["ties", "continuous", "shifted_support"],
)
def test_ks_matches_scipy_two_sample(reference, current):
    """The stored CDF gives the same statistic and exact p-value as SciPy on the raw rows."""
    result, expected, profile = _ks_against_scipy(reference, current)

    assert profile["features"]["x"]["ecdf"]["exact"] is True
    assert result.ks_status == "ok"
    assert result.ks_method == "exact"
    assert result.ks_statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert result.ks_pvalue == pytest.approx(expected.pvalue, abs=1e-12)


def test_ks_ignores_missing_values():
    reference = np.asarray([1.0, 2.0, np.nan, 3.0, 4.0, np.nan])
    current = np.asarray([np.nan, 2.0, 3.0, 5.0, 6.0])
    result, expected, _ = _ks_against_scipy(reference, current)
    assert result.ks_statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert result.sample_size == 5


def test_ks_identical_windows_no_drift():
    values = np.random.default_rng(5).normal(size=500)
    result, _, _ = _ks_against_scipy(values, values.copy())
    assert result.ks_statistic == 0.0
    assert result.ks_pvalue == 1.0


@pytest.mark.parametrize(
    "reference, current",
    [
        (np.arange(40, dtype="float64") % 7, (np.arange(55, dtype="float64") % 9)),
        (np.random.default_rng(1).normal(size=3000), np.random.default_rng(2).normal(0.1, 1.2, size=2000)),
    ],
    ids=["ties", "continuous"],
)
def test_ks_large_window_matches_scipy_asymptotic(monkeypatch, reference, current):
    """Above KS_EXACT_MAX_ROWS the p-value is SciPy's asymptotic one, from the counts."""
    monkeypatch.setattr(drift, "KS_EXACT_MAX_ROWS", 10)
    result, expected, _ = _ks_against_scipy(reference, current, method="asymp")

    assert result.ks_method == "asymp"
    assert result.ks_statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert result.ks_pvalue == pytest.approx(expected.pvalue, abs=1e-12)


def test_ks_small_window_exact_differs_from_asymptotic():
    """On 12 current values the exact p-value is SciPy's exact one, not the asymptotic one."""
    from scipy.stats import ks_2samp

    reference = np.random.default_rng(20).normal(size=400)
    current = np.random.default_rng(21).normal(0.6, size=12)
    result, expected, _ = _ks_against_scipy(reference, current)
    asymptotic = ks_2samp(reference, current, method="asymp").pvalue

    assert result.ks_method == "exact"
    assert result.ks_pvalue == pytest.approx(expected.pvalue, abs=1e-12)
    assert abs(expected.pvalue - asymptotic) > 1e-4


def test_ks_tiny_pvalue_uses_limit_distribution(monkeypatch):
    """A p-value under KS_TINY_PVALUE stays within that of SciPy's finite-sample value."""
    monkeypatch.setattr(drift, "KS_EXACT_MAX_ROWS", 0)
    reference = np.random.default_rng(6).normal(size=8000)
    current = np.random.default_rng(7).normal(0.5, size=8000)
    result, expected, _ = _ks_against_scipy(reference, current, method="asymp")
    assert result.ks_statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert result.ks_pvalue < drift.KS_TINY_PVALUE
    assert abs(result.ks_pvalue - expected.pvalue) < drift.KS_TINY_PVALUE


def test_ks_reduced_ecdf_within_bound():
    """With more distinct values than stored points the statistic errs by about 1/points."""
    reference = np.random.default_rng(8).normal(size=5000)
    current = np.random.default_rng(9).normal(0.05, size=4000)
    result, expected, profile = _ks_against_scipy(reference, current, ecdf_max_points=100, method="asymp")

    ecdf = profile["features"]["x"]["ecdf"]
    assert result.ks_method == "asymp"
    assert ecdf["exact"] is False
    assert len(ecdf["values"]) <= 100
    assert ecdf["observed"] == 5000
    assert abs(result.ks_statistic - expected.statistic) <= 1 / 100 + 1e-12


def test_ks_below_min_rows_is_insufficient():
    """Observed values count toward min_rows for KS; PSI counts every row."""
    profile = drift.reference_profile(pd.DataFrame({"x": np.arange(100, dtype="float64")}), ["x"], bins=4)
    current = pd.DataFrame({"x": [1.0, 2.0] + [np.nan] * 8})

    [result] = drift.numerical_drift(profile, current, epsilon=1e-4, min_rows=5)

    assert result.status == "ok"
    assert result.psi is not None
    assert result.ks_status == "insufficient_data"
    assert result.ks_statistic is None
    assert result.ks_pvalue is None


def test_ks_profile_without_ecdf_not_computed():
    """Profiles logged before the CDF was stored still give PSI and JS."""
    profile = _profile([2.5, 5.5, 8.5], list(range(1, 11)))
    [result] = drift.numerical_drift(profile, pd.DataFrame({"x": list(range(1, 11))}), 1e-4, 1)
    assert result.ks_status == "no_reference_ecdf"
    assert result.ks_pvalue is None
    assert result.psi == 0.0
    assert result.js_distance == 0.0


def test_js_distance_matches_scipy_over_psi_bins():
    from scipy.spatial.distance import jensenshannon

    profile = _profile([2.5, 5.5, 8.5], list(range(1, 11)))
    current_values = [1, 2, 2, 3, 3, 4, 4, 5, 5, 5]
    [result] = drift.numerical_drift(profile, pd.DataFrame({"x": current_values}), 1e-4, 1)

    current_shares = drift._bin_shares(np.asarray(current_values, dtype="float64"), np.asarray([2.5, 5.5, 8.5]))
    expected = jensenshannon(profile["features"]["x"]["shares"], current_shares)
    assert result.js_distance == pytest.approx(expected, abs=1e-12)


def test_js_distance_disjoint_is_maximal():
    """Disjoint distributions reach sqrt(ln 2) without smoothing."""
    assert drift.js_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(np.sqrt(np.log(2)), abs=1e-12)
    assert drift.js_distance([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_categorical_drift_js_distance():
    from scipy.spatial.distance import jensenshannon

    result = drift.categorical_drift({"card": 50, "cash": 50}, pd.Series(["card"] * 30 + ["cash"] * 30 + ["wallet"] * 40), 1e-4, 1)
    # Categories in sorted order: card, cash, wallet.
    assert result.js_distance == pytest.approx(jensenshannon([0.5, 0.5, 0.0], [0.3, 0.3, 0.4]), abs=1e-12)


def test_categorical_counts_string_and_object_agree():
    """The per-distinct-value path for strings counts like the row-wise path."""
    raw = ["a", " a", None, "N/A", "", "b", np.nan, "b"]
    as_string = drift._category_counts(pd.Series(raw, dtype="str"))
    as_object = drift._category_counts(pd.Series(raw, dtype=object))
    mixed = drift._category_counts(pd.Series([1, 1.0, "1", None], dtype=object))

    assert as_string == {"__MISSING__": 4, "a": 2, "b": 2}
    assert as_object == as_string
    assert mixed == {"1": 2, "1.0": 1, "__MISSING__": 1}


def test_counts_across_chunks_match_one_pass(monkeypatch):
    """Counting in chunks gives the same PSI shares and KS as SciPy on the whole column."""
    # The asymptotic path takes the KS statistic from the counts.
    monkeypatch.setattr(drift, "KS_EXACT_MAX_ROWS", 0)
    reference = np.random.default_rng(12).integers(0, 50, 3000).astype("float64")
    current = np.random.default_rng(13).integers(3, 60, 2500).astype("float64")
    current[::7] = np.nan
    result_whole, expected, profile = _ks_against_scipy(reference, current, method="asymp")

    monkeypatch.setattr(drift, "COUNT_CHUNK_ROWS", 64)
    [result_chunked] = drift.numerical_drift(profile, pd.DataFrame({"x": current}), epsilon=1e-4, min_rows=1)

    assert result_chunked.ks_statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert result_chunked.ks_pvalue == pytest.approx(expected.pvalue, abs=1e-12)
    assert result_chunked.psi == result_whole.psi
    assert result_chunked.js_distance == result_whole.js_distance


# ---------------------------------------------------------------------------------------
# Minimum sample size, constant and all-missing columns, prediction drift
# ---------------------------------------------------------------------------------------


def test_ks_min_rows_separate_from_psi():
    """KS has its own minimum: it runs on 12 values while PSI waits for min_rows."""
    profile = drift.reference_profile(pd.DataFrame({"x": np.arange(100, dtype="float64")}), ["x"], bins=4)
    current = pd.DataFrame({"x": np.arange(12, dtype="float64") * 3})

    [small] = drift.numerical_drift(profile, current, epsilon=1e-4, min_rows=50, ks_min_rows=10)
    [too_small] = drift.numerical_drift(profile, current, epsilon=1e-4, min_rows=50, ks_min_rows=13)

    assert small.status == "insufficient_data"
    assert small.psi is None
    assert small.ks_status == "ok"
    assert small.ks_method == "exact"
    assert 0 < small.ks_pvalue <= 1
    assert too_small.ks_status == "insufficient_data"
    assert too_small.ks_pvalue is None
    assert too_small.ks_statistic is None


def test_numerical_drift_constant_and_missing_columns_isolated():
    """Constant and all-missing columns get defined results; the other feature's values do not change."""
    rng = np.random.default_rng(30)
    reference = pd.DataFrame(
        {
            "normal": rng.normal(size=500),
            "constant": np.full(500, 4.0),
            "all_missing": np.full(500, np.nan),
            "constant_now": rng.normal(size=500),
        }
    )
    profile = drift.reference_profile(reference, list(reference.columns), bins=10)
    current = pd.DataFrame(
        {
            "normal": rng.normal(0.3, size=300),
            "constant": np.full(300, 4.0),
            "all_missing": np.full(300, np.nan),
            "constant_now": np.full(300, 0.0),
        }
    )

    results = {result.feature: result for result in drift.numerical_drift(profile, current, 1e-4, min_rows=50)}
    alone = drift.numerical_drift({"features": {"normal": profile["features"]["normal"]}}, current[["normal"]], 1e-4, 50)[0]

    assert results["normal"] == alone
    # Same constant on both sides: no drift on any statistic.
    assert results["constant"].psi == 0.0
    assert results["constant"].js_distance == 0.0
    assert results["constant"].ks_statistic == 0.0
    assert results["constant"].ks_pvalue == 1.0
    # All missing on both sides: PSI and JS compare the missing bins; KS has no sample.
    assert results["all_missing"].psi == 0.0
    assert results["all_missing"].ks_status == "empty_reference"
    assert results["all_missing"].ks_pvalue is None
    # A column that became constant is drift with finite values.
    assert results["constant_now"].status == "ok"
    assert np.isfinite(results["constant_now"].psi)
    assert results["constant_now"].psi > 1
    assert results["constant_now"].ks_pvalue < 1e-10
    for result in results.values():
        for value in (result.psi, result.js_distance, result.ks_pvalue):
            assert value is None or np.isfinite(value)


def test_numerical_drift_missing_now_has_no_ks():
    """A column that is all missing today has PSI (the missing bin) but no KS value."""
    profile = drift.reference_profile(pd.DataFrame({"x": np.arange(100, dtype="float64")}), ["x"], bins=4)
    [result] = drift.numerical_drift(profile, pd.DataFrame({"x": np.full(60, np.nan)}), 1e-4, min_rows=50)

    assert result.status == "ok"
    assert result.psi > 1
    assert result.ks_status == "insufficient_data"
    assert result.ks_pvalue is None


def test_prediction_drift_against_holdout_reference():
    """The day's probabilities compare with the holdout's; a shift shows on every statistic."""
    from scipy.stats import ks_2samp

    holdout = np.random.default_rng(40).beta(2, 5, size=900)
    same_model_day = np.random.default_rng(41).beta(2, 5, size=800)
    shifted_day = np.random.default_rng(42).beta(4, 4, size=800)
    profile = {"features": {}, "predictions": drift.prediction_reference(holdout, bins=10)}

    same = drift.prediction_drift(profile, same_model_day, 1e-4, min_rows=200)
    shifted = drift.prediction_drift(profile, shifted_day, 1e-4, min_rows=200)

    assert same.status == "ok"
    assert same.ks_pvalue == pytest.approx(ks_2samp(holdout, same_model_day, method="exact").pvalue, abs=1e-12)
    assert same.ks_pvalue > 0.01
    assert same.psi < 0.1
    assert shifted.psi > 0.25
    assert shifted.ks_pvalue < 1e-10
    assert shifted.js_distance > same.js_distance


def test_prediction_drift_old_profile_no_reference():
    """A profile logged before reference predictions existed gives no_reference, no value."""
    profile = drift.reference_profile(pd.DataFrame({"x": np.arange(10, dtype="float64")}), ["x"], bins=4)
    result = drift.prediction_drift(profile, np.full(300, 0.2), 1e-4, min_rows=200)

    assert result.status == "no_reference"
    assert result.ks_status == "no_reference"
    assert result.psi is None
    assert result.ks_pvalue is None
    assert result.sample_size == 300


def test_reference_sample_needs_exact_ecdf():
    """A reduced CDF cannot rebuild the training sample, so KS falls back to asymptotic."""
    values = np.random.default_rng(50).normal(size=300)
    exact = drift.reference_profile(pd.DataFrame({"x": values}), ["x"], bins=4)["features"]["x"]["ecdf"]
    reduced = drift.reference_profile(pd.DataFrame({"x": values}), ["x"], bins=4, ecdf_max_points=20)["features"]["x"]["ecdf"]

    assert np.array_equal(np.sort(drift._reference_sample(exact)), np.sort(values))
    assert drift._reference_sample(reduced) is None
