"""Incidents: one open problem per (rule, feature), however many days it breaches.

The first breach of a rule on a feature (or on the model, for model-level metrics) opens an
incident. While it is open, later breaches of the same rule on the same feature link to it:
each is still stored as an alert row, with the incident's id. An incident closes, on the
first checked data day where one of these holds:

* ``retrain promoted``: the latest retrain it requested recorded the outcome "promoted",
  so a champion trained after the breach is in;
* ``breaker closed``: for the circuit breaker's own incident, the breaker is closed again;
* ``quiet``: the rule has not fired on that feature for ``monitoring.incident_quiet_days``
  data days. This is how alert-only and rollback incidents close, and retrain incidents
  whose metric recovered without a new champion.

Every date is a data day, and ``sync_day`` first undoes what an earlier run of the same day
did (closings on that day, incidents opened that day that no breach opens again). A rerun
or backfill of a day therefore gives the same incidents as the first run.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from loopline.monitoring import breaker, store

logger = logging.getLogger(__name__)


def feature_key(feature: str | None) -> str:
    return feature or ""


def sync_day(
    engine: Engine,
    day: dt.date,
    alert_rows: list[dict[str, Any]],
    breaker_state: breaker.BreakerState,
    quiet_days: int,
) -> dict[str, Any]:
    """Close what is resolved by ``day``, then link each alert of ``day`` to its incident.

    Sets ``incident_id`` on every alert row in place. Returns the ids of the incidents
    opened and closed on ``day``.
    """
    table = store.incidents
    iso = day.isoformat()
    with engine.begin() as connection:
        # A rerun of the day starts from the state before the first run of the day.
        connection.execute(
            table.update()
            .where(table.c.closed_date == iso)
            .values(status="open", closed_date=None, closed_reason=None)
        )
        closed = _close_resolved(connection, engine, day, breaker_state, quiet_days)

        opened, linked = [], set()
        for row in alert_rows:
            incident_id, is_new = _incident_for(connection, row, day)
            row["incident_id"] = incident_id
            linked.add(incident_id)
            if is_new and incident_id not in opened:
                opened.append(incident_id)

        # Incidents that an earlier run of this day opened and no breach of this run opens.
        stale = connection.execute(
            sa.select(table.c.id).where(table.c.opened_date == iso, table.c.id.notin_(linked or {-1}))
        ).scalars().all()
        if stale:
            # NOTE: alerts of later days that linked to a removed incident keep its id until
            # those days are rerun too, as a backfill over the range does.
            connection.execute(table.delete().where(table.c.id.in_(stale)))
            logger.info("removed incidents %s that an earlier run of %s opened and this run does not", stale, day)

    for incident_id in opened:
        logger.warning("incident %s opened on %s", incident_id, day)
    return {"opened": opened, "closed": closed}


def _incident_for(connection: Connection, alert: Mapping[str, Any], day: dt.date) -> tuple[int, bool]:
    """Return the id of the incident the alert belongs to, opening one if none is open, and whether it is new."""
    table = store.incidents
    iso = day.isoformat()
    key = feature_key(alert["feature"])
    open_as_of_day = sa.or_(table.c.closed_date.is_(None), table.c.closed_date > iso)
    row = connection.execute(
        sa.select(table.c.id, table.c.opened_date)
        .where(table.c.rule == alert["rule"], table.c.feature_key == key, table.c.opened_date <= iso, open_as_of_day)
        .order_by(table.c.opened_date.desc())
        .limit(1)
    ).first()
    if row is not None:
        return int(row.id), row.opened_date == iso

    result = connection.execute(
        table.insert().values(
            rule=alert["rule"],
            feature_key=key,
            metric=alert["metric"],
            severity=alert["severity"],
            action=alert["action"],
            opened_date=iso,
            status="open",
            created_at=store.utcnow(),
        )
    )
    return int(result.inserted_primary_key[0]), True


def _close_resolved(
    connection: Connection, engine: Engine, day: dt.date, breaker_state: breaker.BreakerState, quiet_days: int
) -> list[int]:
    table = store.incidents
    iso = day.isoformat()
    still_open = connection.execute(
        sa.select(table).where(table.c.closed_date.is_(None), table.c.opened_date < iso)
    ).mappings().all()

    closed = []
    for incident in still_open:
        reason = _closing_reason(connection, engine, incident, day, breaker_state, quiet_days)
        if reason is None:
            continue
        connection.execute(
            table.update().where(table.c.id == incident["id"]).values(status="closed", closed_date=iso, closed_reason=reason[:512])
        )
        closed.append(int(incident["id"]))
        logger.info("incident %s (%s on %s) closed on %s: %s", incident["id"], incident["rule"], incident["feature_key"] or "the model", day, reason)
    return closed


def _closing_reason(connection, engine, incident, day: dt.date, breaker_state, quiet_days: int) -> str | None:
    if incident["retrain_run_id"]:
        # The outcome table is read on its own connection; on SQLite that sees the committed rows.
        outcome = breaker.outcome_of_request(engine, incident["retrain_run_id"], day)
        if outcome is not None and outcome["outcome"] == "promoted":
            return f"retrain {incident['retrain_run_id']} promoted version {outcome['model_version']}"

    if incident["rule"] == breaker.BREAKER_RULE and not breaker_state.is_open:
        return "circuit breaker closed: a training run promoted a champion or an operator reset the breaker"

    alerts = store.alerts
    last = connection.execute(
        sa.select(sa.func.max(alerts.c.partition_date)).where(
            alerts.c.incident_id == incident["id"], alerts.c.partition_date < day.isoformat()
        )
    ).scalar_one()
    last_breach = dt.date.fromisoformat(last or incident["opened_date"])
    quiet = (day - last_breach).days
    if quiet >= quiet_days:
        return f"no breach since {last_breach} ({quiet} data days, monitoring.incident_quiet_days={quiet_days})"
    return None


def set_action_taken(engine: Engine, incident_id: int, text: str) -> None:
    with engine.begin() as connection:
        connection.execute(store.incidents.update().where(store.incidents.c.id == incident_id).values(action_taken=text[:256]))


def list_incidents(engine: Engine, status: str | None = None) -> list[dict[str, Any]]:
    """Return incidents, newest first, optionally only those with ``status`` "open" or "closed"."""
    query = sa.select(store.incidents).order_by(store.incidents.c.opened_date.desc(), store.incidents.c.id.desc())
    if status is not None:
        query = query.where(store.incidents.c.status == status)
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]
