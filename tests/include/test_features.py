"""FeatureProcessor: mean imputation and frequency encoding on the hard inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopline.features import MISSING_CATEGORY, FeatureProcessor, FeatureValueError, normalize_category


def test_imputation_all_missing_column_uses_fill_value():
    """A numerical column with no observed value keeps its place and gets the fill value."""
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [np.nan, np.nan, np.nan]})
    processor = FeatureProcessor(numerical=["a", "b"], fill_value=0.0)

    with pytest.warns(UserWarning, match=r"\['b'\].*fill_value=0.0"):
        output = processor.fit_transform(frame)

    assert output.shape == (3, 2)
    np.testing.assert_array_equal(output, [[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    assert processor.means_.tolist() == [2.0, 0.0]
    assert processor.all_missing_features_ == ["b"]
    np.testing.assert_array_equal(processor.transform_records([{"a": None, "b": None}]), [[2.0, 0.0]])


def test_frequency_unseen_category_is_zero():
    """A category never seen in training encodes to 0.0 in batch and online paths."""
    train = pd.DataFrame({"city": ["Paris", "Paris", "Lyon", "Nice"]})
    processor = FeatureProcessor(categorical=["city"]).fit(train)
    score = pd.DataFrame({"city": ["Paris", "Brest"]})

    batch = processor.transform(score)
    online = processor.transform_records([{"city": "Paris"}, {"city": "Brest"}])

    np.testing.assert_array_equal(batch[:, 0], [0.5, 0.0])
    np.testing.assert_array_equal(online, batch)
    assert processor.unseen_category_rates(score) == {"city": 0.5}


def test_frequency_missing_spellings_share_one_category():
    """None, NaN, empty and "N/A" are one category with its own training share."""
    train = pd.DataFrame({"segment": ["a", "a", "b", None, "a", "b"]})
    processor = FeatureProcessor(categorical=["segment"]).fit(train)

    assert processor.frequencies_[0] == pytest.approx({"a": 0.5, "b": 2 / 6, MISSING_CATEGORY: 1 / 6})
    for spelling in (None, float("nan"), "", "  ", "N/A", "null"):
        assert normalize_category(spelling) == MISSING_CATEGORY
        assert processor.transform_records([{"segment": spelling}])[0, 0] == pytest.approx(0.1667, abs=1e-4)
    batch = processor.transform(pd.DataFrame({"segment": [None, np.nan, "N/A"]}))
    np.testing.assert_allclose(batch[:, 0], [1 / 6] * 3)


def test_frequency_missing_unseen_in_training_is_zero():
    """Without missing values in training, a missing value is an unseen category."""
    processor = FeatureProcessor(categorical=["segment"]).fit(pd.DataFrame({"segment": ["a", "b"]}))
    assert processor.transform_records([{"segment": None}])[0, 0] == 0.0


def test_imputation_int_and_missing_values_accepted():
    """An integer training column scores a float or missing value with the training mean."""
    train = pd.DataFrame({"age": [30, 40, 50, 60], "income": [1.0, 2.0, 3.0, 4.0]})
    processor = FeatureProcessor(numerical=["age", "income"]).fit(train)

    batch = processor.transform(pd.DataFrame({"age": [35, None], "income": [1.5, 2.5]}))

    np.testing.assert_array_equal(batch, [[35.0, 1.5], [45.0, 2.5]])
    np.testing.assert_array_equal(processor.transform_records([{"age": 35, "income": 1.5}, {"age": None, "income": 2.5}]), batch)


def test_transform_non_numeric_value_names_feature():
    """A text value in a numerical feature raises an error naming the feature and value."""
    processor = FeatureProcessor(numerical=["age"]).fit(pd.DataFrame({"age": [1.0, 2.0]}))
    with pytest.raises(FeatureValueError, match=r"feature 'age' must be numeric, got 'abc'"):
        processor.transform(pd.DataFrame({"age": ["abc", "3"]}))
    with pytest.raises(FeatureValueError, match=r"feature 'age' must be numeric, got 'abc'"):
        processor.transform_records([{"age": "abc"}])


def test_transform_missing_column_is_named():
    processor = FeatureProcessor(numerical=["a"], categorical=["c"]).fit(pd.DataFrame({"a": [1.0], "c": ["x"]}))
    with pytest.raises(FeatureValueError, match=r"missing feature columns \['c'\]"):
        processor.transform(pd.DataFrame({"a": [1.0]}))
    with pytest.raises(FeatureValueError, match=r"record 0 is missing features \['c'\]"):
        processor.transform_records([{"a": 1.0}])


def test_fit_empty_window_raises():
    with pytest.raises(FeatureValueError, match="0 rows"):
        FeatureProcessor(numerical=["a"]).fit(pd.DataFrame({"a": pd.Series([], dtype="float64")}))


def test_online_path_equals_batch_on_real_rows():
    """The pandas-free online path returns the batch path's numbers on real flights."""
    import datetime as dt

    from loopline import sources
    from loopline.config import load_config

    feature_set = load_config().feature_set
    train = sources.flight_feed(dt.date(2013, 1, 2))
    score = sources.flight_feed(dt.date(2013, 1, 3))
    processor = FeatureProcessor(numerical=feature_set.numerical, categorical=feature_set.categorical).fit(train)

    batch = processor.transform(score)
    online = processor.transform_records(score[feature_set.features].to_dict("records"))

    assert batch.shape == (len(score), len(feature_set.features))
    assert not np.isnan(batch).any()
    np.testing.assert_array_equal(online, batch)


@pytest.mark.parametrize("dtype", ["str", "string", object])
def test_frequency_string_dtypes_match_records_path(dtype):
    """Every string dtype encodes like the one-record path, missing spellings and unseen categories included."""
    train = pd.DataFrame({"x": [1.0] * 6, "c": pd.Series(["a", "a", "b", None, "N/A", " b"], dtype=dtype)})
    processor = FeatureProcessor(numerical=["x"], categorical=["c"]).fit(train)
    current = pd.DataFrame({"x": [1.0] * 6, "c": pd.Series(["a", "b ", "", None, "z", "b"], dtype=dtype)})

    batch = processor.transform(current)
    records = processor.transform_records(current.astype(object).where(current.notna(), None).to_dict("records"))

    np.testing.assert_array_equal(batch, records)
    assert batch[:, 1].tolist() == [2 / 6, 2 / 6, 2 / 6, 2 / 6, 0.0, 2 / 6]


def test_frequency_mixed_object_values_stay_apart():
    """1 and 1.0 hash alike but are the categories "1" and "1.0"."""
    train = pd.DataFrame({"c": pd.Series([1, 1, 1.0, "x"], dtype=object)})
    processor = FeatureProcessor(categorical=["c"]).fit(train)
    encoded = processor.transform(pd.DataFrame({"c": pd.Series([1, 1.0, "x"], dtype=object)}))
    assert encoded[:, 0].tolist() == [0.5, 0.25, 0.25]
