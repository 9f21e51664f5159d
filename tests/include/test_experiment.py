"""The retraining experiment on a short real window: schedules, files and recomputed values."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from loopline import experiment, metrics
from loopline.config import load_config

START = dt.date(2013, 4, 1)
END = dt.date(2013, 4, 16)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    config = load_config()
    # One small boosting setting keeps the fits short.
    training = config.training.model_copy(
        update={"candidates": {"hist_gradient_boosting": [{"learning_rate": 0.1, "max_iter": 30, "max_leaf_nodes": 15}]}}
    )
    config = config.model_copy(update={"training": training})
    out = tmp_path_factory.mktemp("experiment")
    summary = experiment.run(config, out, START, END, window_days=21, command="loopline experiment --test")
    return config, out, summary


def test_experiment_writes_table_plot_and_daily_values(outcome):
    _, out, summary = outcome

    assert (out / "experiment.png").stat().st_size > 10_000
    table = (out / "experiment.md").read_text()
    for name in experiment.STRATEGIES:
        assert f"| {name} |" in table
    assert "`loopline experiment --test`" in table
    daily = pd.read_csv(out / "daily_log_loss.csv", index_col="day")
    assert list(daily.columns) == list(experiment.STRATEGIES)
    assert len(daily) == 16
    assert np.isfinite(daily.to_numpy()).all()
    assert json.loads((out / "experiment.json").read_text())["days_scored"] == 16
    assert summary["days_scored"] == 16


def test_experiment_schedules_retrain_on_their_days(outcome):
    _, _, summary = outcome
    by_name = {item["name"]: item for item in summary["strategies"]}

    assert by_name["static"]["retrains"] == 0
    assert by_name["monthly"]["retrains"] == 0
    assert by_name["weekly"]["retrain_days"] == ["2013-04-08", "2013-04-15"]
    assert by_name["weekly"]["retrains"] == 2


def test_experiment_static_log_loss_recomputed(outcome, tmp_path):
    """The static strategy's first day equals the product's log loss of a model fitted on the window."""
    config, out, _ = outcome
    replay = experiment.Replay(config, 21, START - dt.timedelta(days=21), START)
    model = replay.model_for(START)
    day = replay.days[START]
    expected = metrics.log_loss(day[config.feature_set.label].to_numpy(), model.predict_proba(day[config.feature_set.features])[:, 1])
    daily = pd.read_csv(out / "daily_log_loss.csv", index_col="day")

    assert daily.loc["2013-04-01", "static"] == pytest.approx(expected, abs=1e-5)
    assert daily.loc["2013-04-01", "weekly"] == daily.loc["2013-04-01", "static"]


def test_experiment_rejects_start_without_history():
    with pytest.raises(ValueError, match="first possible start is 2013-04-01"):
        experiment.run(load_config(), None, dt.date(2013, 2, 1), END, window_days=90)
