"""The feedback edge of the loop: what a day's fired rules lead to.

``process_day`` runs after the day's rules are evaluated and before its alerts are stored:

1. the circuit breaker (``monitoring.breaker``) adds a critical alert while it is open;
2. every alert is linked to its incident (``monitoring.incidents``);
3. rules with action ``retrain`` lead to one retrain request, unless the breaker is open,
   an earlier retrain has recorded no outcome yet, or one was requested within
   ``monitoring.retrain_cooldown_days`` (all counted in data days);
4. a rule with action ``rollback`` moves ``@champion`` back to the version it replaced
   when the champion that scored the day was promoted fewer than
   ``monitoring.rollback_window_days`` data days ago. A champion's promotion day is the
   end of its training window, the first day it can score.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from loopline.config import LooplineConfig
from loopline.monitoring import breaker, incidents
from loopline.monitoring import store as monitoring_store

logger = logging.getLogger(__name__)


@dataclass
class DayFeedback:
    alerts: list[dict[str, Any]]
    incidents: dict[str, Any]
    breaker: breaker.BreakerState
    retrain: dict[str, Any] | None
    rollback: dict[str, Any] | None


def request_id_for(day: dt.date) -> str:
    """Return the run id of the training run that monitoring triggers for ``day``.

    One id per data day makes the trigger idempotent: a retried or cleared monitoring task
    finds the run it already created instead of starting another.
    """
    return f"retrain__{day.isoformat()}"


def process_day(config: LooplineConfig, engine: Engine, day: dt.date, alert_rows: list[dict[str, Any]]) -> DayFeedback:
    """Add the breaker's alert, link alerts to incidents, decide on retraining and rollback."""
    monitoring = config.monitoring
    state = breaker.state(engine, day, monitoring.breaker_max_failed_retrains)
    alerts = [{"message": None, **row} for row in alert_rows]
    if state.is_open:
        alerts.append(breaker_alert(config, state))

    changes = incidents.sync_day(engine, day, alerts, state, monitoring.incident_quiet_days)
    retrain = retrain_decision(config, day, alerts, engine, state)
    rollback = apply_rollback(config, engine, day, alerts)
    return DayFeedback(alerts, changes, state, retrain, rollback)


def breaker_alert(config: LooplineConfig, state: breaker.BreakerState) -> dict[str, Any]:
    return {
        "rule": breaker.BREAKER_RULE,
        "metric": "failed_retrains",
        "feature": None,
        "value": float(state.failed_retrains),
        "threshold": float(state.max_failed_retrains),
        "severity": "critical",
        "action": "alert",
        "model_version": None,
        "policy_version": config.monitoring.policy_version,
        "message": state.reason()[:1024],
    }


def retrain_decision(
    config: LooplineConfig, day: dt.date, alert_rows: list[dict[str, Any]], engine: Engine, state: breaker.BreakerState | None = None
) -> dict[str, Any] | None:
    """Return the retrain request of ``day``, with ``due`` False and the reason when it is suppressed."""
    retrain_alerts = [row for row in alert_rows if row["action"] == "retrain"]
    if not retrain_alerts:
        return None

    reason = "; ".join(
        f"{row['rule']}: {row['metric']}{'[' + row['feature'] + ']' if row['feature'] else ''}="
        f"{row['value']:.4f} > {row['threshold']}"
        for row in retrain_alerts
    )
    incident_ids = sorted({row["incident_id"] for row in retrain_alerts if row.get("incident_id") is not None})
    request_id = request_id_for(day)
    decision = {
        "rules": sorted({row["rule"] for row in retrain_alerts}),
        "reason": reason[:500],
        "window_end": (day + dt.timedelta(days=1)).isoformat(),
        "incidents": incident_ids[:10],
        "request_id": request_id,
    }

    # A rerun of a day that already requested its retrain requests it again, so the trigger
    # finds the run it created the first time.
    if monitoring_store.retrain_request(engine, request_id) is not None:
        decision["due"] = True
        return decision

    suppressed = _suppression(config, day, engine, state)
    if suppressed:
        decision["due"] = False
        decision["suppressed"] = suppressed
        logger.info("retrain for %s suppressed by %s", day, suppressed)
        return decision
    decision["due"] = True
    return decision


def _suppression(config: LooplineConfig, day: dt.date, engine: Engine, state: breaker.BreakerState | None) -> str | None:
    monitoring = config.monitoring
    state = state or breaker.state(engine, day, monitoring.breaker_max_failed_retrains)
    if state.is_open:
        return state.reason()

    latest = monitoring_store.latest_retrain_request(engine, before=day)
    if latest is not None:
        since = (day - dt.date.fromisoformat(latest["partition_date"])).days
        if since < monitoring.retrain_cooldown_days:
            return (
                f"cooldown: a retrain was requested on {latest['partition_date']} ({since} day(s) earlier, "
                f"cooldown {monitoring.retrain_cooldown_days} days)"
            )

    pending = breaker.pending_request(engine, day)
    if pending is not None:
        return (
            f"retrain {pending['dag_run_id']}, requested on {pending['partition_date']}, has recorded no outcome yet "
            "(queued, running, or it never ran); once it ends the next breach may request again. If it will never "
            "run, `loopline breaker reset --reason ...` clears it"
        )
    return None


def record_request(engine: Engine, day: dt.date, decision: dict[str, Any]) -> dict[str, Any]:
    """Store the due retrain request of ``day`` and return the training run's conf."""
    request_id = decision["request_id"]
    monitoring_store.record_retrain_request(engine, day, decision["rules"], decision["reason"], request_id, decision["incidents"])
    return {
        "reason": decision["reason"],
        "rules": decision["rules"],
        "window_end": decision["window_end"],
        "data_day": day.isoformat(),
        "incident": decision["incidents"][0] if decision["incidents"] else None,
        "incidents": decision["incidents"],
        "request_id": request_id,
    }


def apply_rollback(config: LooplineConfig, engine: Engine, day: dt.date, alert_rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Roll a fresh champion back when a rule with action ``rollback`` fired on the day it scored."""
    fired = [row for row in alert_rows if row["action"] == "rollback"]
    if not fired:
        return None

    from loopline import registry, tracking

    alert = fired[0]
    client = tracking.configure()
    champion = registry.champion_version(client, config.model_name)
    if champion is None or str(champion.version) != str(alert["model_version"]):
        current = champion.version if champion is not None else "none"
        logger.info(
            "rule %s fired on version %s, which no longer holds @champion (now %s); nothing to roll back",
            alert["rule"], alert["model_version"], current,
        )
        return {"rolled_back": False, "why": f"version {alert['model_version']} is no longer the champion (now {current})"}

    promoted_on = registry.window_end_of(champion)
    age = (day - promoted_on).days if promoted_on else None
    window = config.monitoring.rollback_window_days
    if age is None or age >= window:
        logger.warning(
            "rule %s fired on champion version %s, promoted %s data days ago, outside the %d-day rollback window; alert only",
            alert["rule"], champion.version, age, window,
        )
        return {"rolled_back": False, "why": f"outside the rollback window ({age} >= {window} days)"}

    feature = f"[{alert['feature']}]" if alert["feature"] else ""
    reason = (
        f"monitoring rule {alert['rule']}: {alert['metric']}{feature}={alert['value']:.4f} breaks threshold "
        f"{alert['threshold']} on {day}, {age} data day(s) after version {champion.version} was promoted; "
        f"incident {alert.get('incident_id')}"
    )
    evidence = {
        "rule": alert["rule"],
        "metric": alert["metric"],
        "feature": alert["feature"],
        "value": alert["value"],
        "threshold": alert["threshold"],
        "incident": alert.get("incident_id"),
        "data_day": day.isoformat(),
    }
    try:
        result = registry.rollback(config, reason, cause="monitoring", evidence=evidence)
    except registry.RegistryError as error:
        logger.error("rollback requested by rule %s on %s failed: %s", alert["rule"], day, error)
        return {"rolled_back": False, "why": str(error)[:300]}

    if alert.get("incident_id") is not None:
        incidents.set_action_taken(engine, alert["incident_id"], f"rollback {result['from_version']} -> {result['to_version']}")
    return {"rolled_back": True, **result}
