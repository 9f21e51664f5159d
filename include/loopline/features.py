"""Feature computation fitted on the training window and carried inside the model.

``FeatureProcessor`` is a scikit-learn transformer with three parts:

* numerical features: missing values are replaced by the training-window mean. A feature
  with no observed value in the training window gets the configured fill value instead of
  being dropped, with a warning naming it, so the output always has every configured
  column in the configured order;
* categorical features: a category is encoded as its share of the training rows. Every
  spelling of a missing value (None, NaN, empty, "N/A", ...) is one category,
  ``__MISSING__``, with its own share; a category never seen in training encodes to 0.0;
* one-hot features, a subset of the categorical ones: one 0/1 column per category seen in
  training, in sorted order, named ``<feature>_<category>``. ``__MISSING__`` is the last
  such category when training had missing values. A category never seen in training, or a
  missing value when training had none, encodes to all zeros; ``transform`` logs how many
  rows did. A feature with more than ``max_one_hot_categories`` training categories
  raises at fit, because its width would grow with every new category.

Output columns: the numerical features, then each categorical feature in its configured
order, as one frequency column or as its one-hot block.

``transform`` (DataFrame, batch) and ``transform_records`` (plain dicts, online serving)
apply the same fitted state and return the same numbers.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

logger = logging.getLogger(__name__)

MISSING_CATEGORY = "__MISSING__"
# Strings that mean "no value" in the feeds and requests Loopline reads (compared after
# stripping whitespace and case-folding).
MISSING_SPELLINGS = frozenset({"", "nan", "none", "null", "na", "n/a"})
# Default cap on the training categories of a one-hot feature. Beyond a few dozen columns
# per feature a linear model fits noise on rare categories; frequency encoding keeps one.
DEFAULT_MAX_ONE_HOT_CATEGORIES = 20
# Unseen categories quoted per feature in the log line of ``transform``.
MAX_LOGGED_CATEGORIES = 5


class FeatureValueError(ValueError):
    """A feature value cannot be used: wrong type or a missing column."""


def normalize_category(value: Any) -> str:
    """Map a raw categorical value to its category string, folding missing spellings."""
    if value is None:
        return MISSING_CATEGORY
    if isinstance(value, float) and math.isnan(value):
        return MISSING_CATEGORY
    if value is pd.NA or value is pd.NaT:
        return MISSING_CATEGORY
    text = str(value).strip()
    if text.casefold() in MISSING_SPELLINGS:
        return MISSING_CATEGORY
    return text


def _numeric_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    column = frame[name]
    if pd.api.types.is_bool_dtype(column):
        raise FeatureValueError(f"feature {name!r} contains booleans; send numbers for numerical features")
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype="float64", na_value=np.nan)

    converted = pd.to_numeric(column, errors="coerce")
    bad = converted.isna() & column.notna() & ~column.map(_is_missing_text)
    if bad.any():
        example = column[bad].iloc[0]
        raise FeatureValueError(
            f"feature {name!r} must be numeric, got {example!r} ({type(example).__name__}) "
            f"in {int(bad.sum())} row(s); send a number or null"
        )
    return converted.to_numpy(dtype="float64", na_value=np.nan)


def _is_missing_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip().casefold() in MISSING_SPELLINGS


def _to_float(name: str, value: Any) -> float:
    if value is None or _is_missing_text(value):
        return math.nan
    if isinstance(value, bool):
        raise FeatureValueError(f"feature {name!r} got a boolean {value!r}; send a number or null")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise FeatureValueError(
            f"feature {name!r} must be numeric, got {value!r} ({type(value).__name__}); send a number or null"
        ) from None


class FeatureProcessor(TransformerMixin, BaseEstimator):
    """Mean imputation for numerical, frequency or one-hot encoding for categorical features.

    Parameters
    ----------
    numerical, categorical:
        Feature names, in output order (see the module docstring for the columns).
    fill_value:
        Imputation value for a numerical feature with no observed value in the training
        window (the mean is undefined there).
    one_hot:
        Categorical features encoded as one 0/1 column per training category instead of
        their training share.
    max_one_hot_categories:
        ``fit`` raises ``FeatureValueError`` when a one-hot feature has more categories
        than this in the training window.
    """

    def __init__(
        self,
        numerical: Iterable[str] = (),
        categorical: Iterable[str] = (),
        fill_value: float = 0.0,
        one_hot: Iterable[str] = (),
        max_one_hot_categories: int = DEFAULT_MAX_ONE_HOT_CATEGORIES,
    ):
        self.numerical = numerical
        self.categorical = categorical
        self.fill_value = fill_value
        self.one_hot = one_hot
        self.max_one_hot_categories = max_one_hot_categories

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Models logged before one-hot encoding existed lack these attributes; they
        # frequency-encode every categorical feature, as they did when they were trained.
        defaults = {"one_hot": (), "max_one_hot_categories": DEFAULT_MAX_ONE_HOT_CATEGORIES}
        if "means_" in state:
            defaults["one_hot_categories_"] = {}
        super().__setstate__({**defaults, **state})

    def fit(self, X: pd.DataFrame, y: Any = None) -> FeatureProcessor:
        numerical = list(self.numerical)
        categorical = list(self.categorical)
        one_hot = list(self.one_hot)
        _require_columns(X, numerical + categorical)
        not_categorical = [name for name in one_hot if name not in categorical]
        if not_categorical:
            raise FeatureValueError(
                f"one-hot features {not_categorical} are not categorical features {categorical}; "
                "list them under categorical too"
            )
        if len(X) == 0:
            raise FeatureValueError("cannot fit features on 0 rows; the training window is empty")

        means = []
        all_missing = []
        for name in numerical:
            values = _numeric_column(X, name)
            observed = values[~np.isnan(values)]
            if observed.size == 0:
                all_missing.append(name)
                means.append(float(self.fill_value))
            else:
                means.append(float(observed.mean()))
        if all_missing:
            warnings.warn(
                f"numerical features {all_missing} have no observed value in the training window; "
                f"their mean is undefined, so they are imputed with fill_value={self.fill_value}",
                UserWarning,
                stacklevel=2,
            )

        frequencies = []
        for name in categorical:
            categories = X[name].map(normalize_category)
            shares = categories.value_counts(normalize=True, sort=False)
            frequencies.append({str(key): float(share) for key, share in shares.items()})

        self.means_ = np.asarray(means, dtype="float64")
        self.all_missing_features_ = all_missing
        self.frequencies_ = frequencies
        self.one_hot_categories_ = self._fit_one_hot(one_hot, categorical, frequencies)
        self.feature_names_in_ = np.asarray(numerical + categorical, dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        return self

    def _fit_one_hot(
        self, one_hot: list[str], categorical: list[str], frequencies: list[dict[str, float]]
    ) -> dict[str, list[str]]:
        """Return the training categories of each one-hot feature: sorted, ``__MISSING__`` last."""
        categories = {}
        for name in one_hot:
            shares = frequencies[categorical.index(name)]
            seen = sorted(category for category in shares if category != MISSING_CATEGORY)
            if MISSING_CATEGORY in shares:
                seen.append(MISSING_CATEGORY)
            if len(seen) > self.max_one_hot_categories:
                raise FeatureValueError(
                    f"one-hot feature {name!r} has {len(seen)} categories in the training window, more than "
                    f"max_one_hot_categories={self.max_one_hot_categories}; frequency-encode it (remove it "
                    "from feature_set.one_hot) or raise feature_set.max_one_hot_categories"
                )
            if seen == [MISSING_CATEGORY]:
                warnings.warn(
                    f"one-hot feature {name!r} has no observed value in the training window; it encodes "
                    f"to the single column {name}_{MISSING_CATEGORY}, 1 for a missing value and 0 otherwise",
                    UserWarning,
                    stacklevel=3,
                )
            categories[name] = seen
        return categories

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """Return the feature matrix of ``X`` as float64, shape (rows, output columns)."""
        check_is_fitted(self, "means_")
        numerical = list(self.numerical)
        categorical = list(self.categorical)
        _require_columns(X, numerical + categorical)

        # Column-major, so each feature is written to contiguous memory. Row-major writes of
        # one column stride across every row, and took most of the time at 1M rows.
        output = np.empty((len(X), self._output_width()), dtype="float64", order="F")
        for index, name in enumerate(numerical):
            values = _numeric_column(X, name)
            output[:, index] = values
            output[np.isnan(values), index] = self.means_[index]
        position = len(numerical)
        for offset, name in enumerate(categorical):
            categories = self.one_hot_categories_.get(name)
            if categories is None:
                output[:, position] = _lookup_categories(X[name], self.frequencies_[offset], 0.0)
                position += 1
                continue
            block = output[:, position : position + len(categories)]
            _write_one_hot(block, X[name], name, categories)
            position += len(categories)
        return output

    def transform_records(self, records: list[Mapping[str, Any]]) -> np.ndarray:
        """Apply the fitted state to plain records without pandas (the online path)."""
        check_is_fitted(self, "means_")
        numerical = list(self.numerical)
        categorical = list(self.categorical)
        # Per categorical feature: its offset, name, first output column, and the one-hot
        # position of each training category (None for a frequency-encoded feature).
        layout = []
        position = len(numerical)
        for offset, name in enumerate(categorical):
            categories = self.one_hot_categories_.get(name)
            if categories is None:
                layout.append((offset, name, position, None))
                position += 1
            else:
                layout.append((offset, name, position, {category: index for index, category in enumerate(categories)}))
                position += len(categories)

        output = np.zeros((len(records), position), dtype="float64")
        for row, record in enumerate(records):
            missing = [name for name in numerical + categorical if name not in record]
            if missing:
                raise FeatureValueError(f"record {row} is missing features {missing}; send every feature")
            for index, name in enumerate(numerical):
                value = _to_float(name, record[name])
                output[row, index] = self.means_[index] if math.isnan(value) else value
            for offset, name, start, one_hot_index in layout:
                category = normalize_category(record[name])
                if one_hot_index is None:
                    output[row, start] = self.frequencies_[offset].get(category, 0.0)
                elif category in one_hot_index:
                    output[row, start + one_hot_index[category]] = 1.0
        return output

    def unseen_category_rates(self, X: pd.DataFrame) -> dict[str, float]:
        """Return, per categorical feature, the share of rows whose category was not in training."""
        check_is_fitted(self, "means_")
        rates = {}
        for offset, name in enumerate(self.categorical):
            if len(X) == 0:
                rates[name] = 0.0
                continue
            known = self.frequencies_[offset]
            categories = X[name].map(normalize_category)
            rates[name] = float((~categories.isin(list(known))).mean())
        return rates

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Return the output column names: features, and ``<feature>_<category>`` for one-hot blocks."""
        check_is_fitted(self, "means_")
        names = list(self.numerical)
        for name in self.categorical:
            categories = self.one_hot_categories_.get(name)
            if categories is None:
                names.append(name)
            else:
                names.extend(f"{name}_{category}" for category in categories)
        return np.asarray(names, dtype=object)

    def _output_width(self) -> int:
        one_hot_columns = sum(len(categories) for categories in self.one_hot_categories_.values())
        return len(self.numerical) + len(self.categorical) - len(self.one_hot_categories_) + one_hot_columns


def missing_rates(frame: pd.DataFrame, numerical: Iterable[str], categorical: Iterable[str]) -> dict[str, float]:
    """Return each feature's share of missing values in ``frame``, as the processor counts them.

    A numerical value is missing when it is null or a missing spelling ("", "N/A", ...); a
    categorical one when it normalises to ``__MISSING__``. An empty frame gives 0.0.
    """
    rates = {}
    for name in numerical:
        values = frame[name]
        missing = values.isna()
        if not pd.api.types.is_numeric_dtype(values):
            missing |= values.map(_is_missing_text).astype(bool)
        rates[name] = float(missing.mean()) if len(frame) else 0.0
    for name in categorical:
        missing = _lookup_categories(frame[name], {MISSING_CATEGORY: 1.0}, 0.0)
        rates[name] = float(missing.mean()) if len(frame) else 0.0
    return rates


def _write_one_hot(block: np.ndarray, column: pd.Series, name: str, categories: list[str]) -> None:
    """Write the one-hot block of ``column`` into ``block`` and log rows of unseen categories."""
    index = {category: position for position, category in enumerate(categories)}
    codes = _lookup_categories(column, index, -1.0).astype("int64")
    block[:] = 0.0
    known = codes >= 0
    block[np.flatnonzero(known), codes[known]] = 1.0

    unseen = int((~known).sum())
    if unseen:
        examples = sorted({normalize_category(value) for value in column[~known].unique()[:MAX_LOGGED_CATEGORIES]})
        logger.warning(
            "one-hot feature %r: %d of %d rows have a category unseen in training (e.g. %s) and encode to all zeros",
            name,
            unseen,
            len(column),
            examples,
        )


def _lookup_categories(column: pd.Series, table: Mapping[str, float], default: float) -> np.ndarray:
    """Return each row's value in ``table`` by its normalised category, ``default`` for others."""
    if _is_string_column(column):
        # Normalising each distinct value once and indexing by code is several times
        # faster than a Python call per row; missing values get code -1.
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
        lookup = np.empty(len(uniques) + 1, dtype="float64")
        for index, value in enumerate(uniques):
            lookup[index] = table.get(normalize_category(value), default)
        lookup[-1] = table.get(MISSING_CATEGORY, default)
        return lookup[codes]
    # Object columns of mixed types keep the row-wise path: hashing would merge values
    # that compare equal but normalise to different categories (1 and 1.0).
    return column.map(normalize_category).map(table).fillna(default).to_numpy(dtype="float64")


def _is_string_column(column: pd.Series) -> bool:
    """Return True for a string dtype, or an object column holding only strings and missing values."""
    if isinstance(column.dtype, pd.StringDtype):
        return True
    return column.dtype == object and pd.api.types.infer_dtype(column, skipna=True) in ("string", "empty")


def _require_columns(frame: pd.DataFrame, names: list[str]) -> None:
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise FeatureValueError(f"input is missing feature columns {missing}; every configured feature is required")
