"""Incidents, retrain requests and the circuit breaker, on SQLite and PostgreSQL.

Each test drives ``feedback.process_day`` day by day the way ``checks.run_checks`` does:
the day's fired rules go in, the alerts are stored with their incident ids, and a due
retrain is recorded. Training outcomes are written as the training DAG's record_outcome
task writes them.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from loopline.monitoring import breaker, feedback, incidents, store

START = dt.date(2013, 2, 1)


def _day(offset: int) -> dt.date:
    return START + dt.timedelta(days=offset)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path, postgres_database):
    """An empty monitoring store on SQLite, or on a fresh PostgreSQL database on loopback."""
    if request.param == "sqlite":
        yield store.get_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")
        return
    with postgres_database("loopline_incidents") as url:
        yield store.get_engine(url)
        store.get_engine(url).dispose()
        store.get_engine.cache_clear()


@pytest.fixture
def config():
    from loopline.config import load_config

    loaded = load_config()
    monitoring = loaded.monitoring.model_copy(
        update={"retrain_cooldown_days": 2, "breaker_max_failed_retrains": 2, "incident_quiet_days": 3}
    )
    return loaded.model_copy(update={"monitoring": monitoring})


def _drift_alert(value: float = 0.4, feature: str = "distance", rule: str = "feature_drift", action: str = "retrain") -> dict:
    return {
        "rule": rule,
        "metric": "psi",
        "feature": feature,
        "value": value,
        "threshold": 0.25,
        "severity": "warning",
        "action": action,
        "model_version": "1",
        "policy_version": "test",
    }


def _check(config, engine, day, alerts):
    """Run the feedback step of one monitoring run and store what it decided."""
    result = feedback.process_day(config, engine, day, alerts)
    store.replace_monitoring_results(engine, day, [], result.alerts)
    if result.retrain and result.retrain["due"]:
        feedback.record_request(engine, day, result.retrain)
    return result


def _rows(engine, table):
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(sa.select(table).order_by(table.c.id)).mappings()]


def test_five_breaches_one_retrain(config, engine):
    """Case 28: drift stays above 0.25 for 5 checks while retraining has not finished: one
    training run is requested, every breach is still stored as an alert of one incident."""
    decisions = [_check(config, engine, _day(offset), [_drift_alert(0.3 + offset / 100)]).retrain for offset in range(5)]

    requests = _rows(engine, store.retrain_requests)
    assert [row["dag_run_id"] for row in requests] == ["retrain__2013-02-01"]
    assert [decision["due"] for decision in decisions] == [True, False, False, False, False]
    # Days 2 and 3 are inside the 2-day cooldown; later days wait for the first retrain's outcome.
    assert "cooldown" in decisions[1]["suppressed"]
    assert "has recorded no outcome yet" in decisions[4]["suppressed"]

    opened = _rows(engine, store.incidents)
    assert len(opened) == 1
    assert opened[0]["status"] == "open"
    assert opened[0]["retrain_run_id"] == "retrain__2013-02-01"
    assert requests[0]["incident_ids"] == str(opened[0]["id"])
    alerts = _rows(engine, store.alerts)
    assert len(alerts) == 5
    assert {row["incident_id"] for row in alerts} == {opened[0]["id"]}


def test_rerun_of_day_replaces_not_duplicates(config, engine):
    """Case 28: rerunning a day that requested a retrain requests the same run id again, so the
    trigger finds the existing child. Incidents and alerts are the same as after the first run."""
    for offset in range(3):
        _check(config, engine, _day(offset), [_drift_alert(), _drift_alert(0.3, "plane_age")])
    before = (_rows(engine, store.incidents), len(_rows(engine, store.alerts)))

    rerun = _check(config, engine, _day(0), [_drift_alert(), _drift_alert(0.3, "plane_age")])
    assert rerun.retrain["due"] is True
    assert rerun.retrain["request_id"] == "retrain__2013-02-01"
    _check(config, engine, _day(2), [_drift_alert(), _drift_alert(0.3, "plane_age")])

    assert _rows(engine, store.incidents) == before[0]
    assert len(_rows(engine, store.alerts)) == before[1] == 6
    assert len(_rows(engine, store.retrain_requests)) == 1


def test_rerun_without_breach_removes_incident(config, engine):
    """A rerun of the day that opened an incident, where the rule no longer fires, removes it."""
    _check(config, engine, _day(0), [_drift_alert(action="alert")])
    assert len(_rows(engine, store.incidents)) == 1
    _check(config, engine, _day(0), [])
    assert _rows(engine, store.incidents) == []
    assert _rows(engine, store.alerts) == []


def test_alert_only_incident_closes_when_quiet(config, engine):
    """An alert-only incident closes after monitoring.incident_quiet_days days without a breach."""
    alert = _drift_alert(action="alert", rule="new_categories")
    for offset in range(2):
        _check(config, engine, _day(offset), [alert])
    for offset in range(2, 5):
        _check(config, engine, _day(offset), [])

    (incident,) = _rows(engine, store.incidents)
    assert incident["status"] == "closed"
    # Last breach on 02-02; the third quiet day is 02-05.
    assert incident["closed_date"] == "2013-02-05"
    assert "no breach since 2013-02-02" in incident["closed_reason"]

    # A breach after closing opens a new incident instead of reviving the old one.
    _check(config, engine, _day(5), [alert])
    assert [row["status"] for row in _rows(engine, store.incidents)] == ["closed", "open"]


def test_incident_closes_when_retrain_promotes(config, engine):
    """A retrain incident closes on the first checked day after its retrain recorded a promotion."""
    _check(config, engine, _day(0), [_drift_alert()])
    breaker.record_outcome(engine, "retrain__2013-02-01", "retrain__2013-02-01", "monitoring", "promoted", _day(1), "promoted", "2")
    result = _check(config, engine, _day(1), [])

    (incident,) = _rows(engine, store.incidents)
    assert result.incidents["closed"] == [incident["id"]]
    assert incident["closed_date"] == "2013-02-02"
    assert incident["closed_reason"] == "retrain retrain__2013-02-01 promoted version 2"


def test_failed_retrains_open_breaker(config, engine):
    """Case 28: a failed or skipped retrain does not loop. After 2 in a row the breaker opens and
    raises a critical alert naming them, and only a promotion or a reset closes it."""
    drift = [_drift_alert()]
    _check(config, engine, _day(0), drift)
    breaker.record_outcome(engine, "retrain__2013-02-01", "retrain__2013-02-01", "monitoring", "failed", _day(1), "training set has a single class")
    _check(config, engine, _day(1), drift)
    second = _check(config, engine, _day(2), drift)
    assert second.retrain["due"] is True
    breaker.record_outcome(engine, "retrain__2013-02-03", "retrain__2013-02-03", "monitoring", "skipped", _day(3), "nothing newer to learn from")

    opened = _check(config, engine, _day(3), drift)
    assert opened.breaker.is_open is True
    assert opened.breaker.failed_retrains == 2
    assert opened.retrain["due"] is False
    assert opened.retrain["suppressed"].startswith("circuit breaker open")
    breaker_alerts = [row for row in opened.alerts if row["rule"] == breaker.BREAKER_RULE]
    assert len(breaker_alerts) == 1
    assert breaker_alerts[0]["severity"] == "critical"
    assert breaker_alerts[0]["value"] == 2.0
    assert "retrain__2013-02-03 skipped" in breaker_alerts[0]["message"]
    assert "retrain__2013-02-01 failed" in breaker_alerts[0]["message"]

    # Still open days later: no retrain, the breaker's alerts link to one incident.
    for offset in (4, 5, 6):
        assert _check(config, engine, _day(offset), drift).retrain["due"] is False
    assert [row["dag_run_id"] for row in _rows(engine, store.retrain_requests)] == ["retrain__2013-02-01", "retrain__2013-02-03"]
    stored = [row for row in _rows(engine, store.alerts) if row["rule"] == breaker.BREAKER_RULE]
    assert len(stored) == 4
    assert len({row["incident_id"] for row in stored}) == 1

    # A scheduled training run that the gate rejects changes nothing.
    breaker.record_outcome(engine, "scheduled__1", None, "scheduled", "rejected", _day(6), "kept as challenger", "3")
    assert breaker.state(engine, _day(7), 2).is_open is True

    breaker.reset(engine, "fixed the training config")
    after_reset = _check(config, engine, _day(7), drift)
    assert after_reset.breaker.is_open is False
    assert after_reset.retrain["due"] is True
    breaker_incident = next(row for row in _rows(engine, store.incidents) if row["rule"] == breaker.BREAKER_RULE)
    assert breaker_incident["status"] == "closed"
    assert breaker_incident["closed_date"] == "2013-02-08"


def test_promotion_closes_breaker(config, engine):
    """Any promoted training run, such as the weekly one, closes an open breaker."""
    for request in ("retrain__a", "retrain__b"):
        breaker.record_outcome(engine, request, request, "monitoring", "rejected", _day(0), "kept as challenger", "2")
    assert breaker.state(engine, _day(0), 2).is_open is True
    # Outcomes count from the end of their training window, so a rerun of an earlier day is unchanged.
    assert breaker.state(engine, _day(-1), 2).is_open is False
    breaker.record_outcome(engine, "scheduled__2", None, "scheduled", "promoted", _day(1), "promoted", "4")
    assert breaker.state(engine, _day(0), 2).is_open is True
    assert breaker.state(engine, _day(1), 2).is_open is False


def test_outcome_rerun_replaces(engine):
    """A rerun of a training run replaces its outcome; an unknown outcome is rejected."""
    breaker.record_outcome(engine, "retrain__x", "retrain__x", "monitoring", "failed", _day(0), "first try")
    breaker.record_outcome(engine, "retrain__x", "retrain__x", "monitoring", "promoted", _day(0), "second try", "5")
    (row,) = _rows(engine, store.training_outcomes)
    assert row["outcome"] == "promoted"
    with pytest.raises(ValueError, match="invalid training outcome 'crashed'"):
        breaker.record_outcome(engine, "retrain__y", None, "manual", "crashed", _day(0), "x")
    with pytest.raises(ValueError, match="needs a reason"):
        breaker.reset(engine, " ")


def test_classify_run_outcomes():
    """The training DAG's task results map to one outcome each."""
    assert breaker.classify_run({"promoted": True, "version": "3", "decision": "promoted: ..."}, None, None)[0] == "promoted"
    assert breaker.classify_run({"promoted": False, "version": "3", "decision": "kept"}, None, None)[:2] == ("rejected", "version 3: kept")
    assert breaker.classify_run(None, "nothing newer", None) == ("skipped", "nothing newer", None)
    assert breaker.classify_run(None, None, "single class") == ("failed", "single class", None)
    assert breaker.classify_run(None, None, None)[0] == "failed"


def test_added_columns_on_old_store(tmp_path):
    """A store created before incidents existed gets the new alert columns on open."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.create_engine(url)
    with old.begin() as connection:
        connection.execute(sa.text(
            "CREATE TABLE alerts (id INTEGER PRIMARY KEY, partition_date VARCHAR(10), rule VARCHAR(64), metric VARCHAR(32), "
            "feature VARCHAR(64), value FLOAT, threshold FLOAT, severity VARCHAR(16), action VARCHAR(16), "
            "model_version VARCHAR(32), policy_version VARCHAR(32), created_at DATETIME)"
        ))
    old.dispose()
    engine = store.get_engine(url)
    columns = {column["name"] for column in sa.inspect(engine).get_columns("alerts")}
    assert {"incident_id", "message"} <= columns
    assert incidents.list_incidents(engine) == []


def test_breaker_commands_status_and_reset(user_home, capsys):
    """`loopline breaker status` names the failed retrains; `reset` closes the breaker."""
    from loopline import cli

    engine = store.get_engine()
    for request in ("retrain__2013-02-01", "retrain__2013-02-03"):
        breaker.record_outcome(engine, request, request, "monitoring", "failed", _day(3), "single class")

    assert cli.main(["breaker", "status", "--date", "2013-02-04"]) == 0
    output = capsys.readouterr().out
    assert output.startswith("2013-02-04: circuit breaker open: the last 2 retrains")
    assert "retrain__2013-02-03 failed: single class" in output

    assert cli.main(["breaker", "reset", "--reason", "fixed the label feed"]) == 0
    capsys.readouterr()
    assert cli.main(["breaker", "status", "--date", "2013-02-04"]) == 0
    assert capsys.readouterr().out.strip() == "2013-02-04: closed (0 of 2 failed retrains in a row)"

    assert cli.main(["incidents"]) == 0
    assert capsys.readouterr().out.strip() == "no open incidents"
