"""Calibration of the challenger on real flights: kept only where it lowers log loss."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression

from loopline import calibration, metrics, modeling, sources
from loopline.config import load_config

TRAIN_DAYS = [dt.date(2013, 1, day) for day in (2, 3, 4)]
VALIDATION_DAY = dt.date(2013, 1, 5)
TEST_DAY = dt.date(2013, 1, 6)


def _rows(days: list[dt.date]) -> pd.DataFrame:
    frames = [sources.flight_feed(day).merge(sources.label_feed(day), on="flight_id") for day in days]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def flights():
    return {"train": _rows(TRAIN_DAYS), "validation": _rows([VALIDATION_DAY]), "test": _rows([TEST_DAY])}


def _fitted(classifier, flights):
    """Return the Loopline pipeline with ``classifier``, fitted on the training days."""
    config = load_config()
    pipeline = modeling.build_pipeline(config)
    pipeline.steps[-1] = (modeling.CLASSIFIER_STEP, classifier)
    train = flights["train"]
    return pipeline.fit(train[config.feature_set.features], train["delayed"]), config.feature_set.features


def test_calibrate_fixes_biased_probabilities(flights):
    """Class weights push every probability up; sigmoid calibration pulls them back."""
    pipeline, features = _fitted(LogisticRegression(class_weight="balanced", max_iter=1000), flights)
    validation, test = flights["validation"], flights["test"]

    result = calibration.calibrate(pipeline, validation[features], validation["delayed"])

    assert result.method in calibration.METHODS
    assert result.log_losses[result.method] < result.log_losses["uncalibrated"]
    assert list(result.pipeline.named_steps) == [modeling.FEATURES_STEP, modeling.SCALE_STEP, modeling.CLASSIFIER_STEP]
    # Out of sample too: the next day's log loss drops.
    before = metrics.log_loss(test["delayed"], pipeline.predict_proba(test[features])[:, 1])
    after = metrics.log_loss(test["delayed"], result.pipeline.predict_proba(test[features])[:, 1])
    assert after < before


def test_calibrate_serving_path_matches_predict_proba(flights):
    """The model server's path (transform, scale, positive_probability) gives the same numbers."""
    pipeline, features = _fitted(LogisticRegression(class_weight="balanced", max_iter=1000), flights)
    validation, test = flights["validation"], flights["test"]
    calibrated = calibration.calibrate(pipeline, validation[features], validation["delayed"]).pipeline

    scaled = calibrated[:-1].transform(test[features])

    np.testing.assert_allclose(
        modeling.positive_probability(calibrated, scaled), calibrated.predict_proba(test[features])[:, 1]
    )


def test_calibrated_pipeline_needs_only_trusted_types(flights):
    pipeline, features = _fitted(LogisticRegression(class_weight="balanced", max_iter=1000), flights)
    validation = flights["validation"]
    calibrated = calibration.calibrate(pipeline, validation[features], validation["delayed"]).pipeline

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(calibrated))

    assert set(untrusted) <= set(modeling.SKOPS_TRUSTED_TYPES)


def test_calibrate_keeps_model_unless_lower(flights):
    """Whatever the method, the choice is the lowest validation log loss, the model on a tie."""
    pipeline, features = _fitted(LogisticRegression(C=1.0, max_iter=1000), flights)
    validation = flights["validation"]

    result = calibration.calibrate(pipeline, validation[features], validation["delayed"])

    assert set(result.log_losses) == {"uncalibrated", *calibration.METHODS}
    if result.method == calibration.NO_CALIBRATION:
        assert result.pipeline is pipeline
        assert all(loss >= result.log_losses["uncalibrated"] for loss in result.log_losses.values())
    else:
        assert result.log_losses[result.method] == min(result.log_losses.values())
        assert result.log_losses[result.method] < result.log_losses["uncalibrated"]


def test_calibrate_same_data_same_result(flights):
    pipeline, features = _fitted(LogisticRegression(class_weight="balanced", max_iter=1000), flights)
    validation, test = flights["validation"], flights["test"]

    first = calibration.calibrate(pipeline, validation[features], validation["delayed"])
    second = calibration.calibrate(pipeline, validation[features], validation["delayed"])

    assert first.log_losses == second.log_losses
    np.testing.assert_array_equal(
        first.pipeline.predict_proba(test[features]), second.pipeline.predict_proba(test[features])
    )


def test_calibrate_single_class_half_skips(flights):
    """A calibrator needs both classes; with one class in a half the model stays as it is."""
    pipeline, features = _fitted(LogisticRegression(max_iter=1000), flights)
    validation = flights["validation"].sort_values("delayed", kind="stable")

    result = calibration.calibrate(pipeline, validation[features], validation["delayed"])

    assert result.method == calibration.NO_CALIBRATION
    assert result.pipeline is pipeline
    assert set(result.log_losses) == {"uncalibrated"}
    assert "single class" in result.note
