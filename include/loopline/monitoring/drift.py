"""Data drift of numerical features: the reference profile and the population stability index.

Reference card for PSI:

* applies to numerical features;
* bins: edges are the reference window's quantiles (``bins`` equal-count bins, duplicate
  edges merged). Bins are right-closed, and the outer bins are open-ended so out-of-range
  current values are counted. Missing values form one more bin of their own;
* PSI = sum over bins of (c - r) * ln(c / r), with c and r the current and reference
  shares; a share of 0 is replaced by ``epsilon`` on both sides (no renormalisation), so
  an empty bin gives a large finite value instead of infinity;
* the threshold bounds the score from above: PSI above it is drift. Identical windows
  give exactly 0.0; an empty current window gives no value ("not computed").

Reference card for categorical drift (``categorical_drift``):

* applies to categorical features, after missing spellings are folded into one category;
* compares category counts over the union of the reference and current categories, so a
  category new in the current window, or gone from it, counts with 0 on the other side;
* reports Pearson's chi-squared statistic and its p-value on the 2 x k contingency table
  (no continuity correction), the PSI over the same categories with the same epsilon,
  and the current rows' share of categories unseen in the reference, naming them;
* also reports the Jensen-Shannon distance over the same categories (see below);
* a p-value below its threshold, a PSI or an unseen share above its threshold is drift.

Reference card for the Kolmogorov-Smirnov test (``numerical_drift``):

* applies to numerical features; missing values are left out on both sides;
* the reference side is the empirical CDF stored in the profile (``ecdf``): every distinct
  observed value of the training window with its cumulative share, so the statistic equals
  the two-sample statistic on the raw training rows. A column with more than
  ``ecdf_max_points`` distinct values stores the CDF at that many evenly spaced order
  statistics instead (``exact: false``), and the statistic may then be low by up to about
  1 / ``ecdf_max_points``;
* D = max over x of |F_ref(x) - F_cur(x)|;
* the p-value is two-sided and exact, as ``scipy.stats.ks_2samp(method="exact")`` computes
  it, when the current window has at most ``KS_EXACT_MAX_ROWS`` observed values and the
  stored CDF is exact: the reference sample is rebuilt from the stored counts, so the
  result equals SciPy's on the raw training rows. Otherwise, and where SciPy's exact
  computation overflows, it is the asymptotic one (Smirnov's distribution with
  n = round(n_ref * n_cur / (n_ref + n_cur)), as ``ks_2samp(method="asymp")`` computes
  it in SciPy 1.17). Where that p-value is below ``KS_TINY_PVALUE`` it comes from
  Kolmogorov's limit distribution, which is faster there and differs by less than that.
  ``NumericalDrift.ks_method`` names the method used;
* the test needs ``ks_min_rows`` observed current values (default ``min_rows``); below
  that its status is "insufficient_data" and there is no value. A constant column on
  either side is a valid sample (D is 0 or the share on one side of the constant);
* the threshold bounds the p-value from below: a p-value under it is drift. No binning, so
  no smoothing.

Reference card for prediction drift (``prediction_drift``):

* applies to the predicted probabilities of the scored day;
* the reference is the profile's ``predictions`` entry: the logged model's probabilities on
  its holdout days, binned and with an empirical CDF exactly as a numerical feature;
* reports PSI, the Jensen-Shannon distance and the KS test with the same definitions as
  for numerical features. A profile without the entry (logged before it existed) gives
  the status "no_reference".

Reference card for the Jensen-Shannon distance:

* applies to numerical features over the PSI bins (missing bin included) and to
  categorical features over the union of categories;
* JS = sqrt((KL(r || m) + KL(c || m)) / 2) with m = (r + c) / 2 and the natural
  logarithm, as ``scipy.spatial.distance.jensenshannon`` computes it, so it lies in
  [0, sqrt(ln 2)] ~ [0, 0.833];
* needs no smoothing: m is positive wherever r or c is, and a zero share contributes 0;
* the threshold bounds the distance from above.

PSI and the Jensen-Shannon distance need ``min_rows`` current rows; below that the status
is "insufficient_data" and there is no value. Each feature is computed on its own, so an
all-missing or constant column gets its own status and leaves the others' values alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

PROFILE_FORMAT = "loopline.reference_profile/1"
# Distinct values stored per numerical feature for the KS test. The 2013 flight features
# have at most a few thousand distinct values each, so their stored CDF is exact.
ECDF_MAX_POINTS = 10_000
# Below this KS p-value (bounded by the Dvoretzky-Kiefer-Wolfowitz inequality) the p-value
# comes from Kolmogorov's limit distribution instead of the finite-sample one.
KS_TINY_PVALUE = 1e-10
# Largest current window (observed values) whose KS p-value is computed exactly. SciPy's
# ks_2samp switches from exact to asymptotic above 10,000 values per sample by default.
# At this size the exact p-value against 200,000 reference values took 0.2 s (SciPy 1.17).
KS_EXACT_MAX_ROWS = 10_000
# Rows counted at a time when a column is compared with the profile (2 MiB of float64).
COUNT_CHUNK_ROWS = 1 << 18


@dataclass(frozen=True)
class DriftResult:
    """One drift statistic for one feature."""

    feature: str
    value: float | None
    status: str  # "ok", or why there is no value
    sample_size: int


def _bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Return the share of values in each right-closed bin, then the missing share."""
    return _ColumnCounts(edges, None).add_all(values).bin_counts / values.size


class _ColumnCounts:
    """Counts of one numerical column per PSI bin and per stored CDF support point.

    Values are counted in chunks of ``COUNT_CHUNK_ROWS``, so the temporary arrays stay a
    few MiB whatever the window size.
    """

    def __init__(self, edges: np.ndarray, support: np.ndarray | None):
        self.edges = edges
        self.support = support
        # Bins from searchsorted(side="left"), then the missing values.
        self.bin_counts = np.zeros(edges.size + 2, dtype="int64")
        size = 0 if support is None else support.size
        # at_point[j] counts values equal to support[j]; below_point[j] those strictly
        # between support[j-1] and support[j] (below support[0] for j = 0).
        self.at_point = np.zeros(size, dtype="int64")
        self.below_point = np.zeros(size, dtype="int64")
        self.observed = 0

    def add_all(self, values: np.ndarray) -> _ColumnCounts:
        for start in range(0, values.size, COUNT_CHUNK_ROWS):
            self._add(values[start : start + COUNT_CHUNK_ROWS])
        return self

    def _add(self, chunk: np.ndarray) -> None:
        missing = np.isnan(chunk)
        observed = chunk[~missing]
        self.observed += observed.size
        # searchsorted(side="left") puts x in bin i when edges[i-1] < x <= edges[i].
        self.bin_counts[:-1] += np.bincount(np.searchsorted(self.edges, observed, side="left"), minlength=self.edges.size + 1)
        self.bin_counts[-1] += int(missing.sum())
        if self.support is None or self.support.size == 0:
            return

        size = self.support.size
        position = np.searchsorted(self.support, observed, side="left")
        hit = position < size
        hit[hit] = self.support[position[hit]] == observed[hit]
        self.at_point += np.bincount(position[hit], minlength=size)[:size]
        # Values above the last support point get position == size and are dropped here;
        # the KS statistic finds them as 1 - F_cur(last point).
        self.below_point += np.bincount(position[~hit], minlength=size + 1)[:size]


def reference_profile(
    frame: pd.DataFrame,
    numerical: list[str],
    bins: int,
    categorical: list[str] = (),
    ecdf_max_points: int = ECDF_MAX_POINTS,
) -> dict:
    """Return the binned distribution and empirical CDF of each numerical feature and the
    category counts of each categorical feature in the training window."""
    features = {}
    for name in numerical:
        values = _numeric_values(frame[name])
        observed = np.sort(values[~np.isnan(values)])
        if observed.size == 0:
            edges = np.asarray([], dtype="float64")
        else:
            quantiles = np.linspace(0, 1, bins + 1)[1:-1]
            edges = np.unique(np.quantile(observed, quantiles))
        shares = _bin_shares(values, edges) if values.size else np.zeros(edges.size + 2)
        features[name] = {
            "edges": edges.tolist(),
            "shares": shares.tolist(),
            "rows": int(values.size),
            "ecdf": _ecdf(observed, ecdf_max_points),
        }
    categories = {name: _category_counts(frame[name]) for name in categorical}
    return {"format": PROFILE_FORMAT, "bins": bins, "features": features, "categorical": categories}


def _numeric_values(column: pd.Series) -> np.ndarray:
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _ecdf(observed_sorted: np.ndarray, max_points: int) -> dict:
    """Return the empirical CDF of sorted observed values: support points and F at each."""
    size = observed_sorted.size
    values, counts = np.unique(observed_sorted, return_counts=True)
    exact = values.size <= max_points
    if exact:
        cumulative = np.cumsum(counts) / size
    else:
        positions = np.unique(np.linspace(0, size - 1, max_points).round().astype("int64"))
        values = np.unique(observed_sorted[positions])
        cumulative = np.searchsorted(observed_sorted, values, side="right") / size
    return {"values": values.tolist(), "cumulative": cumulative.tolist(), "observed": int(size), "exact": bool(exact)}


def _category_counts(values: pd.Series) -> dict[str, int]:
    """Count rows per category, with every missing spelling folded into one category."""
    from loopline.features import _is_string_column, normalize_category

    # Normalising each distinct raw value once, not each row, keeps the Python work
    # proportional to the distinct values. Mixed-type object columns take the row-wise
    # path, because hashing would merge values that compare equal but normalise apart (1
    # and 1.0).
    if _is_string_column(values):
        raw_counts = values.value_counts(dropna=False, sort=False)
        counts: dict[str, int] = {}
        for raw, count in raw_counts.items():
            category = normalize_category(raw)
            counts[category] = counts.get(category, 0) + int(count)
    else:
        counts = {str(key): int(count) for key, count in values.map(normalize_category).value_counts(sort=False).items()}
    return {str(category): count for category, count in sorted(counts.items())}


@dataclass(frozen=True)
class CategoricalDrift:
    """Drift of one categorical feature over the union of reference and current categories."""

    feature: str
    status: str  # "ok", or why there is no value
    sample_size: int
    chi2_statistic: float | None = None
    chi2_pvalue: float | None = None
    psi: float | None = None
    unseen_rate: float | None = None
    new_categories: dict[str, float] | None = None
    js_distance: float | None = None


def categorical_drift(reference_counts: dict[str, int], current: pd.Series, epsilon: float, min_rows: int, feature: str = "") -> CategoricalDrift:
    """Return chi-squared, PSI and the unseen share of ``current`` against reference counts."""
    from scipy.stats import chi2_contingency

    current_counts = _category_counts(current)
    rows = int(sum(current_counts.values()))
    if rows == 0:
        return CategoricalDrift(feature, "empty_window", 0)
    if rows < min_rows:
        return CategoricalDrift(feature, "insufficient_data", rows)
    if not reference_counts:
        return CategoricalDrift(feature, "empty_reference", rows)

    categories = sorted(set(reference_counts) | set(current_counts))
    reference = np.asarray([reference_counts.get(name, 0) for name in categories], dtype="float64")
    observed = np.asarray([current_counts.get(name, 0) for name in categories], dtype="float64")
    if len(categories) == 1:
        # One category on both sides: the distributions are identical.
        statistic, pvalue = 0.0, 1.0
    else:
        statistic, pvalue, _, _ = chi2_contingency(np.vstack([reference, observed]), correction=False)

    new = {name: current_counts[name] / rows for name in current_counts if name not in reference_counts}
    return CategoricalDrift(
        feature,
        "ok",
        rows,
        chi2_statistic=float(statistic),
        chi2_pvalue=float(pvalue),
        psi=psi(reference / reference.sum(), observed / rows, epsilon),
        unseen_rate=float(sum(new.values())),
        new_categories=dict(sorted(new.items(), key=lambda item: -item[1])),
        js_distance=js_distance(reference / reference.sum(), observed / rows),
    )


def psi(reference_shares, current_shares, epsilon: float) -> float:
    """Return the PSI of two share vectors over the same bins."""
    reference = np.asarray(reference_shares, dtype="float64")
    current = np.asarray(current_shares, dtype="float64")
    if np.array_equal(reference, current):
        return 0.0
    reference = np.where(reference == 0, epsilon, reference)
    current = np.where(current == 0, epsilon, current)
    return float(np.sum((current - reference) * np.log(current / reference)))


def feature_psi(profile: dict, frame: pd.DataFrame, epsilon: float, min_rows: int) -> list[DriftResult]:
    """Return the PSI of every profiled feature of ``frame`` against the reference profile."""
    return [
        DriftResult(result.feature, result.psi, result.status, result.sample_size)
        for result in numerical_drift(profile, frame, epsilon, min_rows, ks=False)
    ]


def js_distance(reference_shares, current_shares) -> float:
    """Return the Jensen-Shannon distance (natural logarithm) of two share vectors over the same bins."""
    from scipy.spatial.distance import jensenshannon

    reference = np.asarray(reference_shares, dtype="float64")
    current = np.asarray(current_shares, dtype="float64")
    if np.array_equal(reference, current):
        return 0.0
    return float(jensenshannon(reference, current))


def ks_two_sample(ecdf: dict, current: np.ndarray) -> tuple[float, float]:
    """Return the two-sample KS statistic and p-value of ``current`` against a stored
    empirical CDF; missing values are left out, and the p-value is exact for a small window."""
    support = np.asarray(ecdf["values"], dtype="float64")
    values = np.asarray(current, dtype="float64")
    counts = _ColumnCounts(np.asarray([], dtype="float64"), support).add_all(values)
    statistic, pvalue, _ = _ks_test(ecdf, counts, values)
    return statistic, pvalue


def _ks_test(ecdf: dict, counts: _ColumnCounts, values: np.ndarray) -> tuple[float, float, str]:
    """Return the KS statistic, its p-value and the method ("exact" or "asymp")."""
    if counts.observed <= KS_EXACT_MAX_ROWS:
        reference = _reference_sample(ecdf)
        if reference is not None:
            exact = _ks_exact(reference, values[~np.isnan(values)])
            if exact is not None:
                return exact
    statistic, pvalue = _ks_from_counts(ecdf, counts)
    return statistic, pvalue, "asymp"


def _reference_sample(ecdf: dict) -> np.ndarray | None:
    """Rebuild the training sample from an exact stored CDF, or None for a reduced one."""
    if not ecdf.get("exact", False):
        return None
    cumulative = np.asarray(ecdf["cumulative"], dtype="float64")
    counts = np.round(np.diff(cumulative, prepend=0.0) * ecdf["observed"]).astype("int64")
    if counts.sum() != ecdf["observed"] or (counts <= 0).any():
        # Floating-point shares that do not round back to whole counts: the rebuilt sample
        # would not be the training sample, so the asymptotic p-value is used instead.
        return None
    return np.repeat(np.asarray(ecdf["values"], dtype="float64"), counts)


def _ks_exact(reference: np.ndarray, current: np.ndarray) -> tuple[float, float, str] | None:
    """Return SciPy's exact two-sample KS test, or None where SciPy gives up on it."""
    import warnings

    from scipy.stats import ks_2samp

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        result = ks_2samp(reference, current, method="exact")
    if any(issubclass(warning.category, RuntimeWarning) for warning in caught):
        # SciPy switched to the asymptotic method because the exact one overflowed.
        return None
    return float(result.statistic), float(np.clip(result.pvalue, 0.0, 1.0)), "exact"


def _ks_from_counts(ecdf: dict, counts: _ColumnCounts) -> tuple[float, float]:
    """Return the KS statistic and p-value from the current counts per support point.

    Between two support points of the reference its CDF is flat and the current CDF only
    rises, so the largest gap lies at a support point. It is either just before the point
    (current values strictly below) or at it (current values up to and including it).
    So the counts per support point, found by binary search, suffice, with no sort of the
    current window.
    """
    from scipy.stats import kstwo, kstwobign

    reference_cdf = np.asarray(ecdf["cumulative"], dtype="float64")
    size = counts.observed
    up_to = np.cumsum(counts.at_point + counts.below_point)
    cumulative_at = up_to / size
    cumulative_before = (up_to - counts.at_point) / size
    reference_before = np.concatenate(([0.0], reference_cdf[:-1]))

    statistic = max(
        float(np.max(np.abs(reference_cdf - cumulative_at))),
        float(np.max(np.abs(reference_before - cumulative_before))),
        # Past the last support point the reference CDF is 1.
        float(1.0 - cumulative_at[-1]),
    )
    reference_size, current_size = sorted([float(ecdf["observed"]), float(size)], reverse=True)
    effective = np.round(reference_size * current_size / (reference_size + current_size))
    if 2.0 * math.exp(-2.0 * effective * statistic**2) < KS_TINY_PVALUE:
        # The Dvoretzky-Kiefer-Wolfowitz bound puts the p-value below KS_TINY_PVALUE, and
        # kstwo.sf takes about 0.3 s there for n near 10**6 (SciPy 1.17), so the limit
        # distribution gives it. Both are below the bound, so they differ by less than it.
        pvalue = float(kstwobign.sf(math.sqrt(effective) * statistic))
    else:
        pvalue = float(kstwo.sf(statistic, effective))
    return statistic, float(np.clip(pvalue, 0.0, 1.0))


@dataclass(frozen=True)
class NumericalDrift:
    """PSI, Jensen-Shannon distance and KS test of one numerical feature."""

    feature: str
    status: str  # of PSI and JS: "ok", or why there is no value
    sample_size: int
    psi: float | None = None
    js_distance: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    # "ok" when the KS test ran, otherwise why not (an older profile without a stored CDF,
    # too few observed values).
    ks_status: str = "ok"
    # "exact" or "asymp" when the KS test ran.
    ks_method: str | None = None


def numerical_drift(
    profile: dict,
    frame: pd.DataFrame,
    epsilon: float,
    min_rows: int,
    ks_min_rows: int | None = None,
    ks: bool = True,
) -> list[NumericalDrift]:
    """Return PSI, Jensen-Shannon distance and the KS test of every profiled numerical feature.

    ``ks_min_rows`` is the number of observed current values the KS test needs (default
    ``min_rows``); ``ks=False`` leaves the test out.
    """
    ks_min_rows = min_rows if ks_min_rows is None else ks_min_rows
    return [
        _numerical_drift_of(name, reference, frame, epsilon, min_rows, ks_min_rows if ks else None)
        for name, reference in profile["features"].items()
    ]


def _numerical_drift_of(
    name: str, reference: dict, frame: pd.DataFrame, epsilon: float, min_rows: int, ks_min_rows: int | None
) -> NumericalDrift:
    if name not in frame.columns:
        return NumericalDrift(name, "missing_column", 0, ks_status="missing_column")
    values = _numeric_values(frame[name])
    if values.size == 0:
        return NumericalDrift(name, "empty_window", 0, ks_status="empty_window")
    if reference["rows"] == 0:
        return NumericalDrift(name, "empty_reference", int(values.size), ks_status="empty_reference")

    ecdf = reference.get("ecdf") if ks_min_rows is not None else None
    support = np.asarray(ecdf["values"], dtype="float64") if ecdf else None
    counts = _ColumnCounts(np.asarray(reference["edges"], dtype="float64"), support).add_all(values)
    if ks_min_rows is None:
        statistic, pvalue, ks_status, method = None, None, "not_computed", None
    else:
        statistic, pvalue, ks_status, method = _ks_or_reason(ecdf, counts, values, ks_min_rows)
    ks_fields = {"ks_statistic": statistic, "ks_pvalue": pvalue, "ks_status": ks_status, "ks_method": method}
    if values.size < min_rows:
        return NumericalDrift(name, "insufficient_data", int(values.size), **ks_fields)

    current = counts.bin_counts / values.size
    psi_value = psi(reference["shares"], current, epsilon)
    status = "ok" if math.isfinite(psi_value) else "not_finite"
    return NumericalDrift(
        name,
        status,
        int(values.size),
        psi=psi_value if status == "ok" else None,
        js_distance=js_distance(reference["shares"], current),
        **ks_fields,
    )


def _ks_or_reason(
    ecdf: dict | None, counts: _ColumnCounts, values: np.ndarray, min_rows: int
) -> tuple[float | None, float | None, str, str | None]:
    if ecdf is None:
        return None, None, "no_reference_ecdf", None
    if ecdf["observed"] == 0:
        return None, None, "empty_reference", None
    if counts.observed == 0 or counts.observed < min_rows:
        return None, None, "insufficient_data", None
    statistic, pvalue, method = _ks_test(ecdf, counts, values)
    return statistic, pvalue, "ok", method


# Name under which prediction drift is computed; the metric rows carry no feature.
PREDICTION_COLUMN = "probability"


def prediction_reference(probabilities, bins: int, ecdf_max_points: int = ECDF_MAX_POINTS) -> dict:
    """Return the bins, shares and empirical CDF of a model's predicted probabilities."""
    frame = pd.DataFrame({PREDICTION_COLUMN: np.asarray(probabilities, dtype="float64")})
    profile = reference_profile(frame, [PREDICTION_COLUMN], bins, ecdf_max_points=ecdf_max_points)
    return profile["features"][PREDICTION_COLUMN]


def prediction_drift(
    profile: dict, probabilities, epsilon: float, min_rows: int, ks_min_rows: int | None = None
) -> NumericalDrift:
    """Return PSI, Jensen-Shannon distance and the KS test of the day's predicted
    probabilities against the profile's reference predictions."""
    values = np.asarray(probabilities, dtype="float64")
    reference = profile.get("predictions")
    if reference is None:
        return NumericalDrift(PREDICTION_COLUMN, "no_reference", int(values.size), ks_status="no_reference")
    ks_min_rows = min_rows if ks_min_rows is None else ks_min_rows
    frame = pd.DataFrame({PREDICTION_COLUMN: values})
    return _numerical_drift_of(PREDICTION_COLUMN, reference, frame, epsilon, min_rows, ks_min_rows)
