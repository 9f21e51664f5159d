"""Retrain outcomes and the circuit breaker that stops a retrain loop.

Every training run writes its outcome to the ``training_outcomes`` table in its last task
(``record_outcome`` in the training DAG), whether it promoted a model, was rejected by the
gate, skipped or failed. That task runs under the scheduler and under ``dag.test`` alike,
so monitoring learns the results of its retrains from its own store, with no call to the
Airflow API.

The breaker counts the monitoring retrains that did not promote a model, newest first,
until the latest promotion (by any training run) or the latest operator reset. At
``monitoring.breaker_max_failed_retrains`` it is open: monitoring requests no retrain and
raises a critical alert on every checked day until a training run promotes a champion or
``loopline breaker reset`` runs. Only outcomes whose training window ended by the checked
day count, so a rerun of a past day sees what the first run saw.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loopline.monitoring import store

logger = logging.getLogger(__name__)

OUTCOMES = ("promoted", "rejected", "skipped", "failed")
# The rule name of the alerts and the incident that the open breaker raises.
BREAKER_RULE = "retrain_circuit_breaker"


@dataclass(frozen=True)
class BreakerState:
    """The breaker as of one data day: open or not, and the failed retrains that count."""

    is_open: bool
    failed_retrains: int
    max_failed_retrains: int
    # The outcomes that count, newest first: (request id, outcome, detail).
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    def reason(self) -> str:
        """Return why the breaker is open, naming each failed retrain."""
        listed = "; ".join(f"{request} {outcome}: {detail[:150]}" for request, outcome, detail in self.failures)
        return (
            f"circuit breaker open: the last {self.failed_retrains} retrains requested by monitoring did not promote "
            f"a model (limit {self.max_failed_retrains}): {listed}. Monitoring requests no retrain until a training "
            "run promotes a champion or an operator runs `loopline breaker reset --reason ...`"
        )


def record_outcome(
    engine: Engine,
    dag_run_id: str,
    request_id: str | None,
    cause: str,
    outcome: str,
    window_end: dt.date,
    detail: str,
    model_version: str | None = None,
) -> None:
    """Store the outcome of one training run, replacing an earlier one of the same run."""
    if outcome not in OUTCOMES:
        raise ValueError(f"invalid training outcome {outcome!r}; use one of {list(OUTCOMES)}")
    row = {
        "dag_run_id": dag_run_id,
        "request_id": request_id,
        "cause": cause,
        "outcome": outcome,
        "model_version": model_version,
        "window_end": window_end.isoformat(),
        "detail": detail[:1024],
        "created_at": store.utcnow(),
    }
    with engine.begin() as connection:
        connection.execute(store.training_outcomes.delete().where(store.training_outcomes.c.dag_run_id == dag_run_id))
        connection.execute(store.training_outcomes.insert().values(**row))
    logger.info("training run %s (request %s): %s, %s", dag_run_id, request_id or "-", outcome, detail[:200])


def classify_run(gate: dict[str, Any] | None, skip_reason: str | None, error: str | None) -> tuple[str, str, str | None]:
    """Return the outcome, a detail and the model version of a training run from its tasks' results.

    ``gate`` is what the registry gate returned, ``skip_reason`` why planning skipped, and
    ``error`` why training failed; each is None when that did not happen.
    """
    if gate:
        outcome = "promoted" if gate.get("promoted") else "rejected"
        return outcome, f"version {gate.get('version')}: {gate.get('decision', '')}", str(gate.get("version"))
    if skip_reason:
        return "skipped", skip_reason, None
    return "failed", error or "a task of the training run failed before the registry gate; see its log", None


def record_run(
    engine: Engine,
    dag_run_id: str,
    conf: dict[str, Any],
    plan: dict[str, Any] | None,
    gate: dict[str, Any] | None,
    skip_reason: str | None,
    error: str | None,
) -> tuple[str, str, str | None]:
    """Classify a finished training run and store its outcome when monitoring needs it.

    Monitoring reads the outcomes of its own retrains (``conf`` carries their
    ``request_id``) and every promotion. Other skipped, failed or rejected runs are not stored.
    """
    outcome, detail, version = classify_run(gate, skip_reason, error)
    request_id = conf.get("request_id")
    window_end = conf.get("window_end") or (plan["window"]["end"] if plan else None)
    if window_end and (request_id or outcome in ("promoted", "rejected")):
        if plan:
            cause = plan["cause"]
        else:
            cause = "monitoring" if request_id else "scheduled"
        record_outcome(engine, dag_run_id, request_id, cause, outcome, dt.date.fromisoformat(window_end), detail, version)
    return outcome, detail, version


def outcome_of_request(engine: Engine, request_id: str, day: dt.date) -> dict[str, Any] | None:
    """Return the outcome of the retrain ``request_id`` known by data day ``day``, or None."""
    table = store.training_outcomes
    query = (
        sa.select(table)
        .where(table.c.request_id == request_id, table.c.window_end <= day.isoformat())
        .order_by(table.c.id.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    return dict(row) if row else None


def latest_reset(engine: Engine) -> dict[str, Any] | None:
    query = sa.select(store.breaker_resets).order_by(store.breaker_resets.c.id.desc()).limit(1)
    with engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    return dict(row) if row else None


def state(engine: Engine, day: dt.date, max_failed_retrains: int) -> BreakerState:
    """Return the breaker as of data day ``day``."""
    reset = latest_reset(engine)
    after = reset["after_outcome_id"] if reset else 0
    table = store.training_outcomes
    query = (
        sa.select(table)
        .where(table.c.window_end <= day.isoformat(), table.c.id > after)
        .order_by(table.c.window_end.desc(), table.c.id.desc())
    )
    failures = []
    with engine.connect() as connection:
        for row in connection.execute(query).mappings():
            if row["outcome"] == "promoted":
                break
            # A scheduled run that the gate rejected is the loop working as intended.
            if row["request_id"] is None:
                continue
            failures.append((row["request_id"], row["outcome"], row["detail"]))
    return BreakerState(len(failures) >= max_failed_retrains, len(failures), max_failed_retrains, failures)


def pending_request(engine: Engine, day: dt.date) -> dict[str, Any] | None:
    """Return the newest retrain request before ``day`` whose training has recorded no outcome.

    Requests up to the latest breaker reset do not count, so a reset also clears a
    training run that never ran.
    """
    reset = latest_reset(engine)
    after = reset["after_request_id"] if reset else 0
    requests, outcomes = store.retrain_requests, store.training_outcomes
    query = (
        sa.select(requests)
        .where(
            requests.c.partition_date < day.isoformat(),
            requests.c.id > after,
            ~sa.exists().where(outcomes.c.request_id == requests.c.dag_run_id),
        )
        .order_by(requests.c.partition_date.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    return dict(row) if row else None


def reset(engine: Engine, reason: str) -> dict[str, Any]:
    """Close the breaker by hand: earlier outcomes and unfinished requests stop counting."""
    if not reason.strip():
        raise ValueError("a breaker reset needs a reason; pass --reason with why retraining may resume")
    with engine.begin() as connection:
        after_outcome = connection.execute(sa.select(sa.func.max(store.training_outcomes.c.id))).scalar_one() or 0
        after_request = connection.execute(sa.select(sa.func.max(store.retrain_requests.c.id))).scalar_one() or 0
        connection.execute(
            store.breaker_resets.insert().values(
                after_outcome_id=after_outcome, after_request_id=after_request, reason=reason[:512], created_at=store.utcnow()
            )
        )
    logger.warning("circuit breaker reset by an operator (outcomes up to id %s no longer count): %s", after_outcome, reason)
    return {"after_outcome_id": after_outcome, "after_request_id": after_request, "reason": reason}
