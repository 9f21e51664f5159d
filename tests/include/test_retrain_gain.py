"""The retrain-gain metric: when it is due, the model it reads, and its value on real days."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from loopline import candidates
from loopline.monitoring import retrain_gain
from loopline.monitoring import store as monitoring_store

DAYS = [dt.date(2013, 1, 1) + dt.timedelta(days=offset) for offset in range(22)]
CHAMPION_END = dt.date(2013, 1, 12)
CHECK_DAY = dt.date(2013, 1, 21)


def test_candidate_of_reads_the_logged_label():
    candidate = candidates.Candidate("hist_gradient_boosting", {"learning_rate": 0.05, "max_iter": 150, "max_leaf_nodes": 15})
    assert retrain_gain.candidate_of(candidate.label) == candidate
    assert retrain_gain.candidate_of("logistic_regression()") == candidates.Candidate("logistic_regression", {})
    with pytest.raises(ValueError, match=r"cannot read the model family from 'boosting'"):
        retrain_gain.candidate_of("boosting")


def test_due_every_n_days_and_never_in_cooldown(tmp_path):
    from loopline.config import load_config, with_policy

    config = with_policy(load_config(), {"retrain_gain_every_days": 7, "retrain_cooldown_days": 10}, "test")
    engine = monitoring_store.get_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")
    day = dt.date(2013, 3, 1)
    assert retrain_gain.due(config, engine, day) is None

    row = {"metric": "retrain_gain", "feature": None, "value": 0.002, "status": "ok", "sample_size": 900, "model_version": "1", "reference": None, "policy_version": "p"}
    monitoring_store.replace_monitoring_results(engine, day, [row], [])
    # A rerun of the same day reads only earlier days, so it is due again.
    assert retrain_gain.due(config, engine, day) is None
    assert "computed on 2013-03-01, every 7 days" in retrain_gain.due(config, engine, day + dt.timedelta(days=6))
    assert retrain_gain.due(config, engine, day + dt.timedelta(days=7)) is None

    monitoring_store.record_retrain_request(engine, dt.date(2013, 3, 5), ["retrain_pays"], "gain", "retrain__2013-03-05")
    assert "within the 10-day cooldown" in retrain_gain.due(config, engine, dt.date(2013, 3, 14))
    assert retrain_gain.due(config, engine, dt.date(2013, 3, 15)) is None


@pytest.fixture(scope="module")
def gain_env(tmp_path_factory, state_home, land_days):
    """22 days of real partitions, labels and batch predictions of a champion trained to 2013-01-12."""
    with state_home(tmp_path_factory.mktemp("gain")):
        from loopline import registry, scoring, training
        from loopline.config import load_config, with_policy

        base = load_config()
        tiny = base.training.model_copy(
            update={
                "window_days": 8,
                "min_days": 4,
                "holdout_days": 1,
                "validation_days": 1,
                "candidates": {"hist_gradient_boosting": [{"learning_rate": 0.1, "max_iter": 40, "max_leaf_nodes": 15}]},
            }
        )
        policy = {
            "policy_version": "test-gain",
            "retrain_gain_every_days": 7,
            "rules": [{"name": "retrain_pays", "metric": "retrain_gain", "threshold": -1.0, "action": "retrain"}],
        }
        config = with_policy(base.model_copy(update={"training": tiny}), policy, "test")
        land_days(config, DAYS)

        window = training.plan_window(config, end=CHAMPION_END)
        trained = training.train(config, window, {"test": "retrain_gain"})
        assert registry.register_and_gate(config, trained, "first", "manual")["promoted"] is True
        for day in DAYS[DAYS.index(CHAMPION_END) :]:
            scoring.score_day(config, day)
        yield config


def test_gain_under_stamped_policy(gain_env):
    """Monitoring under the default config applies the gain policy stamped at promotion."""
    from loopline import metrics, store, training
    from loopline.config import load_config
    from loopline.monitoring import checks

    config = gain_env
    default = load_config().model_copy(update={"training": config.training})
    summary = checks.run_checks(default, CHECK_DAY)
    engine = monitoring_store.get_engine()
    with engine.connect() as connection:
        rows = connection.execute(
            monitoring_store.metric_values.select().where(monitoring_store.metric_values.c.partition_date == CHECK_DAY.isoformat())
        ).mappings().all()
    gain_rows = [row for row in rows if row["metric"] == "retrain_gain"]
    assert len(gain_rows) == 1
    assert gain_rows[0]["status"] == "ok"
    assert {row["policy_version"] for row in rows} == {"test-gain"}

    # The same value from scratch: the champion's stored predictions of 2013-01-14..20
    # against the boosting model refitted on the window that ends on 2013-01-14.
    first = CHECK_DAY - dt.timedelta(days=7)
    feature_set = config.feature_set
    shadow_window = training.plan_window(config, end=first)
    assert shadow_window.days[-1] == dt.date(2013, 1, 13)
    frame = training.training_set(config, list(shadow_window.days), training.label_cutoff(config, first))
    shadow = candidates.build(config, candidates.candidates(config)[0]).fit(frame[feature_set.features], frame[feature_set.label])
    days = [first + dt.timedelta(days=offset) for offset in range(7)]
    recent = store.read_days(store.feature_dataset(feature_set.name, feature_set.version), days)
    labels = store.read_days(store.LABELS, days)[[feature_set.entity_key, feature_set.label]]
    predictions = store.read_days(store.PREDICTIONS, days)[["flight_id", "probability"]]
    joined = recent.merge(labels, on=feature_set.entity_key).merge(predictions, on="flight_id")
    champion = metrics.log_loss(joined[feature_set.label].to_numpy(), joined["probability"].to_numpy())
    challenger = metrics.log_loss(joined[feature_set.label].to_numpy(), shadow.predict_proba(joined[feature_set.features])[:, 1])

    assert gain_rows[0]["sample_size"] == len(joined)
    assert np.isclose(gain_rows[0]["value"], (champion - challenger) / champion, rtol=0, atol=1e-9)
    # The threshold of -1 fires on any finite gain, so a retrain is requested.
    assert summary["retrain"]["rules"] == ["retrain_pays"]

    # The next day the gain is not due again, and no value is stored for it.
    checks.run_checks(default, CHECK_DAY + dt.timedelta(days=1))
    with engine.connect() as connection:
        status = connection.execute(
            monitoring_store.metric_values.select().where(
                monitoring_store.metric_values.c.partition_date == (CHECK_DAY + dt.timedelta(days=1)).isoformat(),
                monitoring_store.metric_values.c.metric == "retrain_gain",
            )
        ).mappings().one()
    assert status["status"] == "not_due"
    assert status["value"] is None
