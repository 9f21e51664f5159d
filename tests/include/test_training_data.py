"""Training guards: empty and single-class windows, too few days, the retrain cadence."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from loopline import training
from loopline.config import load_config

DAYS = [dt.date(2013, 1, 1) + dt.timedelta(days=offset) for offset in range(20)]


def test_check_trainable_single_class_named():
    config = load_config()
    frame = pd.DataFrame({"delayed": [0, 0, 0, 0]})
    with pytest.raises(training.TrainingDataError, match=r"single class \(positives=0, negatives=4\)"):
        training.check_trainable(frame, config, "training", "2024-06-01..2024-06-02")


def test_check_trainable_empty_partition_named():
    config = load_config()
    with pytest.raises(training.TrainingDataError, match=r"is empty \(0 rows\)"):
        training.check_trainable(pd.DataFrame({"delayed": []}), config, "training", "w")


def test_check_trainable_counts_classes():
    config = load_config()
    frame = pd.DataFrame({"delayed": [0, 1] * 300})
    assert training.check_trainable(frame, config, "training", "w") == {"rows": 600, "positives": 300, "negatives": 300}


def test_plan_window_too_few_days_skips():
    config = load_config()
    with pytest.raises(training.TrainingSkipped, match="fewer than training.min_days=14"):
        training.plan_window(config, end=dt.date(2013, 1, 6), available=DAYS)


def test_plan_window_time_ordered_holdout():
    config = load_config()
    window = training.plan_window(config, end=dt.date(2013, 1, 16), available=DAYS)
    assert window.days[0] == dt.date(2013, 1, 1)
    assert window.days[-1] == dt.date(2013, 1, 15)
    assert window.holdout_days == [dt.date(2013, 1, 13), dt.date(2013, 1, 14), dt.date(2013, 1, 15)]
    assert max(window.train_days) < min(window.holdout_days)
    assert training.TrainingWindow.from_dict(window.to_dict()) == window


def test_decide_window_waits_for_cadence(monkeypatch):
    config = load_config()
    monkeypatch.setattr(training, "labelled_days", lambda _config: DAYS)
    with pytest.raises(training.TrainingSkipped, match="retrain_every_days=7"):
        training.decide_window(config, end=dt.date(2013, 1, 18), champion_window_end=dt.date(2013, 1, 16))
    forced = training.decide_window(config, end=dt.date(2013, 1, 18), force=True, champion_window_end=dt.date(2013, 1, 16))
    assert forced.end == dt.date(2013, 1, 18)


def test_candidates_expand_config_grid():
    from loopline import candidates

    config = load_config()
    labels = [candidate.label for candidate in candidates.candidates(config)]
    assert labels[:2] == ["sgd_logistic(alpha=0.0001)", "sgd_logistic(alpha=0.001)"]
    assert len(labels) == sum(len(grid) for grid in config.training.candidates.values())


def test_candidate_invalid_setting_named():
    from loopline import candidates

    with pytest.raises(ValueError, match=r"invalid setting for candidate logistic_regression\(depth=3\)"):
        candidates.build(load_config(), candidates.Candidate("logistic_regression", {"depth": 3}))


def test_select_keeps_lowest_validation_loss():
    """Selection on real rows returns the candidate with the lowest validation log loss."""
    from loopline import candidates, sources

    config = load_config()
    features = config.feature_set.features
    train = pd.concat([sources.flight_feed(dt.date(2013, 1, day)) for day in (2, 3, 4)], ignore_index=True)
    train_labels = pd.concat([sources.label_feed(dt.date(2013, 1, day)) for day in (2, 3, 4)], ignore_index=True)
    validation = sources.flight_feed(dt.date(2013, 1, 5))
    validation_labels = sources.label_feed(dt.date(2013, 1, 5))
    train = train.merge(train_labels, on="flight_id")
    validation = validation.merge(validation_labels, on="flight_id")

    selection = candidates.select(config, train[features], train["delayed"], validation[features], validation["delayed"])

    losses = {result["candidate"]: result["validation_log_loss"] for result in selection.results}
    assert selection.best.label == min(losses, key=losses.get)
    assert len(selection.descent) >= 1
    assert selection.descent[-1]["train_log_loss"] < selection.descent[0]["train_log_loss"]


def test_decide_window_moot_retrain_skipped(monkeypatch):
    """Even a forced retrain skips when the champion already trained on a later window."""
    config = load_config()
    monkeypatch.setattr(training, "labelled_days", lambda _config: DAYS)
    with pytest.raises(training.TrainingSkipped, match="nothing newer to learn from"):
        training.decide_window(config, end=dt.date(2013, 1, 18), force=True, champion_window_end=dt.date(2013, 1, 20))
