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
* a p-value below its threshold, a PSI or an unseen share above its threshold is drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

PROFILE_FORMAT = "loopline.reference_profile/1"


@dataclass(frozen=True)
class DriftResult:
    """One drift statistic for one feature."""

    feature: str
    value: float | None
    status: str  # "ok", or why there is no value
    sample_size: int


def _bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Return the share of values in each right-closed bin, then the missing share."""
    missing = np.isnan(values)
    observed = values[~missing]
    # searchsorted(side="left") puts x in bin i when edges[i-1] < x <= edges[i].
    counts = np.bincount(np.searchsorted(edges, observed, side="left"), minlength=edges.size + 1)
    counts = np.append(counts, missing.sum())
    return counts / values.size


def reference_profile(frame: pd.DataFrame, numerical: list[str], bins: int, categorical: list[str] = ()) -> dict:
    """Return the binned distribution of each numerical feature and the category counts of
    each categorical feature in the training window."""
    features = {}
    for name in numerical:
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        observed = values[~np.isnan(values)]
        if observed.size == 0:
            edges = np.asarray([], dtype="float64")
        else:
            quantiles = np.linspace(0, 1, bins + 1)[1:-1]
            edges = np.unique(np.quantile(observed, quantiles))
        shares = _bin_shares(values, edges) if values.size else np.zeros(edges.size + 2)
        features[name] = {"edges": edges.tolist(), "shares": shares.tolist(), "rows": int(values.size)}
    categories = {name: _category_counts(frame[name]) for name in categorical}
    return {"format": PROFILE_FORMAT, "bins": bins, "features": features, "categorical": categories}


def _category_counts(values: pd.Series) -> dict[str, int]:
    from loopline.features import normalize_category

    counts = values.map(normalize_category).value_counts(sort=False)
    return {str(category): int(count) for category, count in sorted(counts.items())}


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
    results = []
    for name, reference in profile["features"].items():
        if name not in frame.columns:
            results.append(DriftResult(name, None, "missing_column", 0))
            continue
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        if values.size == 0:
            results.append(DriftResult(name, None, "empty_window", 0))
            continue
        if values.size < min_rows:
            results.append(DriftResult(name, None, "insufficient_data", int(values.size)))
            continue
        if reference["rows"] == 0:
            results.append(DriftResult(name, None, "empty_reference", int(values.size)))
            continue
        current = _bin_shares(values, np.asarray(reference["edges"], dtype="float64"))
        value = psi(reference["shares"], current, epsilon)
        status = "ok" if math.isfinite(value) else "not_finite"
        results.append(DriftResult(name, value if status == "ok" else None, status, int(values.size)))
    return results
