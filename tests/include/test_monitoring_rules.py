"""Threshold rules never fire on missing values; retrain requests respect the cooldown."""

from __future__ import annotations

import datetime as dt

import pytest

from loopline.config import RuleConfig
from loopline.monitoring import checks, store


@pytest.mark.parametrize(
    ("value", "fires"),
    [(0.7, True), (0.6, False), (0.5, False), (None, False), (float("nan"), False), (float("inf"), False)],
)
def test_crosses_above_threshold(value, fires):
    rule = RuleConfig(name="quality", metric="log_loss", threshold=0.6, direction="above")
    assert checks.crosses(rule, value) is fires


def test_crosses_below_threshold():
    rule = RuleConfig(name="auc", metric="log_loss", threshold=0.6, direction="below")
    assert checks.crosses(rule, 0.5) is True
    assert checks.crosses(rule, 0.7) is False


def test_retrain_cooldown_in_data_days(tmp_path):
    from loopline.config import load_config

    config = load_config()
    engine = store.get_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")
    alerts = [{"rule": "quality_log_loss", "metric": "log_loss", "feature": None, "value": 0.7, "threshold": 0.6, "action": "retrain"}]
    day = dt.date(2013, 1, 20)

    first = checks._retrain_decision(config, day, alerts, engine)
    assert first["due"] is True
    assert store.record_retrain_request(engine, day, first["rules"], first["reason"], checks.request_id_for(day)) is True
    # The same request again (a retried task) is recognised, not stored twice.
    assert store.record_retrain_request(engine, day, first["rules"], first["reason"], checks.request_id_for(day)) is False

    later = checks._retrain_decision(config, day + dt.timedelta(days=3), alerts, engine)
    assert later["due"] is False
    assert "cooldown" in later["suppressed"]
    # Once the cooldown has passed and the first retrain has an outcome, a breach requests again.
    after_day = day + dt.timedelta(days=config.monitoring.retrain_cooldown_days)
    from loopline.monitoring import breaker

    breaker.record_outcome(engine, "retrain__2013-01-20", "retrain__2013-01-20", "monitoring", "promoted", day + dt.timedelta(days=1), "promoted", "2")
    after = checks._retrain_decision(config, after_day, alerts, engine)
    assert after["due"] is True
