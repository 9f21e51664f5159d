"""Missing rate per feature, against the reference profile's missing rate.

Reference card:

* applies to every feature of the reference profile, numerical and categorical;
* a numerical value is missing when it is null or does not parse as a number. A
  categorical value is missing when it is null or one of the missing spellings
  (``features.MISSING_SPELLINGS``), which fold into ``__MISSING__``;
* ``missing_rate`` is the current window's share of missing values; ``missing_rate_change``
  is that share minus the reference's, so a positive value means more missing values than
  in training. The threshold bounds the change from above;
* the reference rate is the profile's ``missing_rates`` entry where it has one. Otherwise
  it is the missing bin's share (numerical) or the ``__MISSING__`` category's share
  (categorical) of the training window, which every profile stores. A feature absent from
  the profile, or with no training rows, gives the change the status "no_reference";
* both need ``min_rows`` current rows; below that the status is "insufficient_data".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from loopline.features import MISSING_CATEGORY, normalize_category
from loopline.monitoring.values import MetricValue


@dataclass(frozen=True)
class MissingRate:
    """The missing rate of one feature in the current window and in the reference."""

    feature: str
    status: str  # of the current rate: "ok", or why there is no value
    sample_size: int
    rate: float | None = None
    reference_rate: float | None = None
    # "ok" when the reference rate is known, otherwise why not.
    reference_status: str = "ok"

    @property
    def change(self) -> float | None:
        if self.rate is None or self.reference_rate is None:
            return None
        return self.rate - self.reference_rate

    @property
    def change_status(self) -> str:
        return self.status if self.status != "ok" else self.reference_status


def missing_rates(profile: dict, frame: pd.DataFrame, numerical: list[str], categorical: list[str], min_rows: int) -> list[MissingRate]:
    """Return the current and reference missing rate of every numerical and categorical feature."""
    results = []
    for name in [*numerical, *categorical]:
        reference_rate = reference_missing_rate(profile, name)
        reference_status = "ok" if reference_rate is not None else "no_reference"
        if name not in frame.columns:
            results.append(MissingRate(name, "missing_column", 0, reference_rate=reference_rate, reference_status=reference_status))
            continue
        rows = len(frame)
        if rows == 0:
            results.append(MissingRate(name, "empty_window", 0, reference_rate=reference_rate, reference_status=reference_status))
            continue
        if rows < min_rows:
            results.append(MissingRate(name, "insufficient_data", rows, reference_rate=reference_rate, reference_status=reference_status))
            continue
        missing = _missing_mask(frame[name], categorical=name in categorical)
        results.append(MissingRate(name, "ok", rows, float(missing.mean()), reference_rate, reference_status))
    return results


def reference_missing_rate(profile: dict, name: str) -> float | None:
    """Return the training window's missing rate of feature ``name``, or None when unknown."""
    explicit = profile.get("missing_rates", {})
    if name in explicit and explicit[name] is not None:
        return float(explicit[name])
    numerical = profile.get("features", {}).get(name)
    if numerical is not None:
        return float(numerical["shares"][-1]) if numerical["rows"] else None
    counts = profile.get("categorical", {}).get(name)
    if counts:
        return counts.get(MISSING_CATEGORY, 0) / sum(counts.values())
    return None


def _missing_mask(column: pd.Series, categorical: bool) -> np.ndarray:
    if categorical:
        return (column.map(normalize_category) == MISSING_CATEGORY).to_numpy(dtype=bool)
    return pd.to_numeric(column, errors="coerce").isna().to_numpy(dtype=bool)


def missing_rate_values(
    profile: dict, frame: pd.DataFrame, numerical: list[str], categorical: list[str], min_rows: int
) -> list[MetricValue]:
    """Return the ``missing_rate`` and ``missing_rate_change`` metrics of every feature."""
    values = []
    for result in missing_rates(profile, frame, numerical, categorical, min_rows):
        values.append(MetricValue("missing_rate", result.feature, result.rate, result.status, result.sample_size))
        values.append(MetricValue("missing_rate_change", result.feature, result.change, result.change_status, result.sample_size))
    return values
