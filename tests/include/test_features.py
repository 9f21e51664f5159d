"""FeatureProcessor: mean imputation and frequency encoding on the hard inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopline.features import MISSING_CATEGORY, FeatureProcessor, FeatureValueError, normalize_category


def test_imputation_all_missing_column_uses_fill_value():
    """Case 01: a numerical column with no observed value keeps its place and gets the fill value."""
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
    """Case 02: a category never seen in training encodes to 0.0 in batch and online paths."""
    train = pd.DataFrame({"city": ["Paris", "Paris", "Lyon", "Nice"]})
    processor = FeatureProcessor(categorical=["city"]).fit(train)
    assert processor.frequencies_ == [{"Paris": 0.5, "Lyon": 0.25, "Nice": 0.25}]
    score = pd.DataFrame({"city": ["Paris", "Brest"]})

    batch = processor.transform(score)
    online = processor.transform_records([{"city": "Paris"}, {"city": "Brest"}])

    np.testing.assert_array_equal(batch[:, 0], [0.5, 0.0])
    np.testing.assert_array_equal(online, batch)
    assert processor.unseen_category_rates(score) == {"city": 0.5}


def test_frequency_missing_spellings_share_one_category():
    """Case 03: None, NaN, empty and "N/A" are one category with its own training share."""
    train = pd.DataFrame({"segment": ["a", "a", "b", None, "a", "b"]})
    processor = FeatureProcessor(categorical=["segment"]).fit(train)

    assert processor.frequencies_[0] == pytest.approx({"a": 0.5, "b": 2 / 6, MISSING_CATEGORY: 1 / 6})
    for spelling in (None, float("nan"), "", "  ", "N/A", "null"):
        assert normalize_category(spelling) == MISSING_CATEGORY
        assert processor.transform_records([{"segment": spelling}])[0, 0] == pytest.approx(0.1667, abs=1e-4)
    batch = processor.transform(pd.DataFrame({"segment": [None, np.nan, "N/A"]}))
    np.testing.assert_allclose(batch[:, 0], [1 / 6] * 3)


def test_frequency_missing_unseen_in_training_is_zero():
    """Case 03: without missing values in training, a missing value is an unseen category."""
    processor = FeatureProcessor(categorical=["segment"]).fit(pd.DataFrame({"segment": ["a", "b"]}))
    assert processor.transform_records([{"segment": None}])[0, 0] == 0.0
    assert processor.transform(pd.DataFrame({"segment": [None]}))[0, 0] == 0.0
    assert processor.unseen_category_rates(pd.DataFrame({"segment": [None, "a"]})) == {"segment": 0.5}


def test_imputation_int_and_missing_values_accepted():
    """Case 18: an integer training column scores a float or missing value with the training mean."""
    train = pd.DataFrame({"age": [30, 40, 50, 60], "income": [1.0, 2.0, 3.0, 4.0]})
    processor = FeatureProcessor(numerical=["age", "income"]).fit(train)

    batch = processor.transform(pd.DataFrame({"age": [35, None], "income": [1.5, 2.5]}))

    np.testing.assert_array_equal(batch, [[35.0, 1.5], [45.0, 2.5]])
    np.testing.assert_array_equal(processor.transform_records([{"age": 35, "income": 1.5}, {"age": None, "income": 2.5}]), batch)


def test_transform_non_numeric_value_names_feature():
    """Case 18: a text value in a numerical feature raises an error naming the feature and value."""
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


# --- one-hot encoding ------------------------------------------------------------------


def test_one_hot_columns_follow_training_categories():
    """Each training category gets a 0/1 column, in sorted order, in place of the feature."""
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "origin": ["LGA", "EWR", "JFK", "EWR"], "carrier": ["AA", "AA", "B6", "UA"]})
    processor = FeatureProcessor(numerical=["x"], categorical=["origin", "carrier"], one_hot=["origin"]).fit(train)

    output = processor.transform(train)

    assert processor.one_hot_categories_ == {"origin": ["EWR", "JFK", "LGA"]}
    assert processor.get_feature_names_out().tolist() == ["x", "origin_EWR", "origin_JFK", "origin_LGA", "carrier"]
    np.testing.assert_array_equal(
        output,
        [[1.0, 0.0, 0.0, 1.0, 0.5], [2.0, 1.0, 0.0, 0.0, 0.5], [3.0, 0.0, 1.0, 0.0, 0.25], [4.0, 1.0, 0.0, 0.0, 0.25]],
    )
    np.testing.assert_array_equal(processor.transform_records(train.to_dict("records")), output)


def test_one_hot_unseen_category_all_zeros_logged(caplog):
    """Case 02, one-hot: Brest was never seen, so its row is all zeros and transform logs it."""
    train = pd.DataFrame({"city": ["Paris", "Paris", "Lyon", "Nice"]})
    processor = FeatureProcessor(categorical=["city"], one_hot=["city"]).fit(train)
    score = pd.DataFrame({"city": ["Paris", "Brest"]})

    with caplog.at_level("WARNING", logger="loopline.features"):
        batch = processor.transform(score)
    online = processor.transform_records([{"city": "Paris"}, {"city": "Brest"}])

    assert processor.get_feature_names_out().tolist() == ["city_Lyon", "city_Nice", "city_Paris"]
    np.testing.assert_array_equal(batch, [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(online, batch)
    assert "one-hot feature 'city': 1 of 2 rows have a category unseen in training (e.g. ['Brest'])" in caplog.text
    assert processor.unseen_category_rates(score) == {"city": 0.5}


def test_one_hot_missing_category_own_column():
    """Case 03, one-hot: every missing spelling sets the __MISSING__ column learned in training."""
    train = pd.DataFrame({"segment": ["a", "a", "b", None, "a", "b"]})
    processor = FeatureProcessor(categorical=["segment"], one_hot=["segment"]).fit(train)
    spellings = [None, float("nan"), "", "  ", "N/A", "null"]

    batch = processor.transform(pd.DataFrame({"segment": pd.Series(spellings, dtype=object)}))
    online = processor.transform_records([{"segment": spelling} for spelling in spellings])

    assert processor.get_feature_names_out().tolist() == ["segment_a", "segment_b", f"segment_{MISSING_CATEGORY}"]
    np.testing.assert_array_equal(batch, [[0.0, 0.0, 1.0]] * len(spellings))
    np.testing.assert_array_equal(online, batch)


def test_one_hot_missing_unseen_in_training_all_zeros():
    """Case 03, one-hot: without missing values in training, a missing value is all zeros."""
    processor = FeatureProcessor(categorical=["segment"], one_hot=["segment"]).fit(pd.DataFrame({"segment": ["a", "b"]}))

    np.testing.assert_array_equal(processor.transform(pd.DataFrame({"segment": [None, "b"]})), [[0.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(processor.transform_records([{"segment": None}, {"segment": "b"}]), [[0.0, 0.0], [0.0, 1.0]])


def test_one_hot_all_missing_column_warns():
    """A one-hot feature with no observed value keeps one missing-indicator column, with a warning."""
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0], "segment": [None, "", np.nan]})
    processor = FeatureProcessor(numerical=["x"], categorical=["segment"], one_hot=["segment"])

    with pytest.warns(UserWarning, match=r"one-hot feature 'segment' has no observed value"):
        output = processor.fit_transform(train)

    assert processor.one_hot_categories_ == {"segment": [MISSING_CATEGORY]}
    np.testing.assert_array_equal(output, [[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    np.testing.assert_array_equal(processor.transform_records([{"x": 1.0, "segment": "seen later"}]), [[1.0, 0.0]])


def test_one_hot_too_many_categories_raises():
    """A one-hot feature with more training categories than the cap fails the fit by name."""
    train = pd.DataFrame({"dest": [f"A{number:02d}" for number in range(25)]})
    processor = FeatureProcessor(categorical=["dest"], one_hot=["dest"], max_one_hot_categories=20)
    with pytest.raises(FeatureValueError, match=r"one-hot feature 'dest' has 25 categories .* max_one_hot_categories=20"):
        processor.fit(train)


def test_one_hot_not_categorical_raises():
    processor = FeatureProcessor(numerical=["x"], categorical=["c"], one_hot=["x"])
    with pytest.raises(FeatureValueError, match=r"one-hot features \['x'\] are not categorical"):
        processor.fit(pd.DataFrame({"x": [1.0], "c": ["a"]}))


def test_one_hot_unfitted_names_raise():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        FeatureProcessor(categorical=["c"], one_hot=["c"]).get_feature_names_out()


@pytest.mark.parametrize("one_hot", [["origin"], ["origin", "carrier", "plane_engine", "plane_manufacturer"]])
def test_one_hot_online_equals_batch_on_real_rows(one_hot):
    """The one-row path returns the batch path's numbers exactly, unseen and missing categories included."""
    import datetime as dt

    from loopline import sources
    from loopline.config import load_config

    feature_set = load_config().feature_set
    train = sources.flight_feed(dt.date(2013, 1, 2))
    score = sources.flight_feed(dt.date(2013, 1, 3)).copy()
    score.loc[score.index[:3], "origin"] = ["SFO", None, ""]
    score.loc[score.index[3], "carrier"] = "ZZ"
    processor = FeatureProcessor(
        numerical=feature_set.numerical, categorical=feature_set.categorical, one_hot=one_hot, max_one_hot_categories=50
    ).fit(train)

    batch = processor.transform(score)
    records = score[feature_set.features].astype(object).where(score[feature_set.features].notna(), None).to_dict("records")
    online = np.vstack([processor.transform_records([record]) for record in records])

    assert batch.shape == (len(score), len(processor.get_feature_names_out()))
    assert not np.isnan(batch).any()
    np.testing.assert_array_equal(online, batch)
    origin = [processor.get_feature_names_out().tolist().index(f"origin_{airport}") for airport in ("EWR", "JFK", "LGA")]
    assert batch[:3][:, origin].tolist() == [[0.0, 0.0, 0.0]] * 3
    assert (batch[3:][:, origin].sum(axis=1) == 1.0).all()


def test_one_hot_pickle_and_old_models():
    """A pickled processor keeps its one-hot state; one pickled before one-hot existed frequency-encodes."""
    import pickle

    train = pd.DataFrame({"c": ["a", "b", "b"]})
    processor = FeatureProcessor(categorical=["c"], one_hot=["c"]).fit(train)
    restored = pickle.loads(pickle.dumps(processor))
    np.testing.assert_array_equal(restored.transform(train), processor.transform(train))

    old = FeatureProcessor(categorical=["c"]).fit(train)
    for name in ("one_hot", "max_one_hot_categories", "one_hot_categories_"):
        del old.__dict__[name]
    loaded = pickle.loads(pickle.dumps(old))
    np.testing.assert_allclose(loaded.transform(train)[:, 0], [1 / 3, 2 / 3, 2 / 3])
    assert loaded.get_feature_names_out().tolist() == ["c"]


# --- missing rates of the reference profile ---------------------------------------------


def test_missing_rates_count_every_spelling():
    """Null, NaN and missing spellings all count as missing, numerical and categorical alike."""
    from loopline.features import missing_rates

    frame = pd.DataFrame(
        {
            "age": pd.Series([1, None, "N/A", 4], dtype=object),
            "income": [1.0, np.nan, np.nan, np.nan],
            "plan": ["a", "", None, "null"],
            "city": ["x", "y", "z", "w"],
        }
    )
    assert missing_rates(frame, ["age", "income"], ["plan", "city"]) == {"age": 0.5, "income": 0.75, "plan": 0.75, "city": 0.0}
    assert missing_rates(frame.iloc[:0], ["income"], ["plan"]) == {"income": 0.0, "plan": 0.0}
