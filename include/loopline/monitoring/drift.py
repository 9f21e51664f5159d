"""Data drift of numerical features: the reference profile and the population stability index.

Reference card for PSI:

* applies to numerical features;
* bins: edges are the reference window's quantiles (``bins`` equal-count bins, duplicate
  edges merged), right-closed, with open-ended outer bins so out-of-range current values
  are counted; missing values form one more bin of their own;
* PSI = sum over bins of (c - r) * ln(c / r), with c and r the current and reference
  shares; a share of 0 is replaced by ``epsilon`` on both sides (no renormalisation), so
  an empty bin gives a large finite value instead of infinity;
* the threshold bounds the score from above: PSI above it is drift. Identical windows
  give exactly 0.0; an empty current window gives no value ("not computed").
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


def reference_profile(frame: pd.DataFrame, numerical: list[str], bins: int) -> dict:
    """Return the binned distribution of each numerical feature in the training window."""
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
    return {"format": PROFILE_FORMAT, "bins": bins, "features": features}


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
