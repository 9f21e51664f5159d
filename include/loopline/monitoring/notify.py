"""Alert delivery: the task log, a webhook and e-mail.

Every alert of a day goes to the log (and is already in the ``alerts`` table). The webhook
and e-mail channels, when configured under ``monitoring.notify``, receive only the alerts
that opened an incident that day, so a problem that breaches for ten days notifies once.
The breaker's alert opens its own incident and is sent the same way.

A channel that fails (refused connection, timeout, HTTP error status, SMTP error, a missing
secret) is logged and recorded in the ``notifications`` table with status "failed". The
failure is not raised, so monitoring goes on. A rerun of a day sends again only through the channels whose
earlier delivery of that day failed.

Secrets come from environment variables named in the config: the webhook's bearer token
(``token_env``) and the SMTP login (``username_env``, ``password_env``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import smtplib
from email.message import EmailMessage
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loopline.config import EmailConfig, LooplineConfig, WebhookConfig
from loopline.monitoring import store

logger = logging.getLogger(__name__)

CHANNELS = ("log", "webhook", "email")


class NotificationError(RuntimeError):
    """A channel could not deliver; the message names the channel, the target and the cause."""


def alert_payload(alert: dict[str, Any], day: dt.date) -> dict[str, Any]:
    """Return the JSON object that describes one alert to a webhook or an e-mail."""
    return {
        "source": "loopline",
        "date": day.isoformat(),
        "rule": alert["rule"],
        "metric": alert["metric"],
        "feature": alert["feature"],
        "value": alert["value"],
        "threshold": alert["threshold"],
        "severity": alert["severity"],
        "action": alert["action"],
        "incident_id": alert["incident_id"],
        "model_version": alert["model_version"],
        "message": alert.get("message"),
    }


def day_alerts(engine: Engine, day: dt.date, new_incidents_only: bool) -> list[dict[str, Any]]:
    """Return the stored alerts of ``day``, optionally only those that opened their incident that day."""
    alerts, incidents = store.alerts, store.incidents
    query = sa.select(alerts).where(alerts.c.partition_date == day.isoformat()).order_by(alerts.c.id)
    if new_incidents_only:
        query = query.join(incidents, incidents.c.id == alerts.c.incident_id).where(
            incidents.c.opened_date == day.isoformat()
        )
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def deliver(config: LooplineConfig, engine: Engine, day: dt.date, channel: str) -> dict[str, Any]:
    """Send the alerts of ``day`` through ``channel`` and record the result; never raises on a failed send."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown notification channel {channel!r}; use one of {list(CHANNELS)}")
    if channel == "log":
        alerts = day_alerts(engine, day, new_incidents_only=False)
        for alert in alerts:
            logger.warning("alert on %s: %s", day, alert_payload(alert, day))
        return {"channel": "log", "alerts": len(alerts), "status": "sent"}

    settings = getattr(config.monitoring.notify, channel)
    if settings is None:
        return {"channel": channel, "alerts": 0, "status": "not_configured"}
    if _already_sent(engine, day, channel):
        logger.info("the %s notification of %s was sent by an earlier run; not sending again", channel, day)
        return {"channel": channel, "alerts": 0, "status": "already_sent"}

    payloads = [alert_payload(alert, day) for alert in day_alerts(engine, day, new_incidents_only=True)]
    if not payloads:
        return {"channel": channel, "alerts": 0, "status": "nothing_new"}

    error = None
    try:
        if channel == "webhook":
            post_webhook(settings, payloads)
        else:
            send_email(settings, day, payloads)
    except NotificationError as failure:
        error = str(failure)
        logger.error("%s notification of %d alert(s) on %s failed: %s", channel, len(payloads), day, error)
    status = "failed" if error else "sent"
    _record(engine, day, channel, len(payloads), status, error)
    if not error:
        logger.info("sent %d alert(s) of %s by %s", len(payloads), day, channel)
    return {"channel": channel, "alerts": len(payloads), "status": status, "error": error}


def post_webhook(settings: WebhookConfig, payloads: list[dict[str, Any]]) -> None:
    """POST each payload as JSON to the webhook URL; raise ``NotificationError`` on the first failure."""
    import httpx

    headers = {}
    if settings.token_env:
        token = os.environ.get(settings.token_env)
        if not token:
            raise NotificationError(f"webhook token variable {settings.token_env} is not set; export it or remove token_env")
        headers["Authorization"] = f"Bearer {token}"
    target = _without_query(settings.url)
    try:
        with httpx.Client(timeout=settings.timeout_seconds) as client:
            for payload in payloads:
                response = client.post(settings.url, json=payload, headers=headers)
                if response.status_code >= 300:
                    raise NotificationError(f"webhook {target} returned HTTP {response.status_code} for incident {payload['incident_id']}")
    except httpx.HTTPError as error:
        raise NotificationError(f"webhook {target} failed: {type(error).__name__}: {error}") from None


def send_email(settings: EmailConfig, day: dt.date, payloads: list[dict[str, Any]]) -> None:
    """Send one message listing the alerts; raise ``NotificationError`` when SMTP fails."""
    message = EmailMessage()
    rules = sorted({payload["rule"] for payload in payloads})
    worst = max(payloads, key=lambda payload: ("info", "warning", "critical").index(payload["severity"]))["severity"]
    message["Subject"] = f"[Loopline {worst}] {len(payloads)} new incident(s) on {day}: {', '.join(rules)}"
    message["From"] = settings.sender
    message["To"] = ", ".join(settings.recipients)
    lines = [f"Monitoring of {day} opened {len(payloads)} incident(s):", ""]
    for payload in payloads:
        feature = f"[{payload['feature']}]" if payload["feature"] else ""
        lines.append(
            f"- incident {payload['incident_id']}: rule {payload['rule']} ({payload['severity']}), "
            f"{payload['metric']}{feature} = {payload['value']:.4f}, threshold {payload['threshold']}, "
            f"action {payload['action']}, model version {payload['model_version']}"
        )
        if payload["message"]:
            lines.append(f"  {payload['message']}")
    message.set_content("\n".join(lines) + "\n")

    username = os.environ.get(settings.username_env) if settings.username_env else None
    password = os.environ.get(settings.password_env) if settings.password_env else None
    if settings.username_env and not (username and password):
        raise NotificationError(
            f"SMTP login variables {settings.username_env} and {settings.password_env} must both be set; export them "
            "or remove username_env"
        )
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.timeout_seconds) as smtp:
            if settings.starttls:
                smtp.starttls()
            if username:
                smtp.login(username, password)
            smtp.send_message(message)
    except (smtplib.SMTPException, OSError) as error:
        raise NotificationError(
            f"SMTP server {settings.smtp_host}:{settings.smtp_port} failed: {type(error).__name__}: {error}"
        ) from None


def _without_query(url: str) -> str:
    """Return the URL without its query string, which may carry a token, for logs."""
    return url.split("?", 1)[0]


def _already_sent(engine: Engine, day: dt.date, channel: str) -> bool:
    table = store.notifications
    query = sa.select(table.c.id).where(
        table.c.partition_date == day.isoformat(), table.c.channel == channel, table.c.status == "sent"
    )
    with engine.connect() as connection:
        return connection.execute(query).first() is not None


def _record(engine: Engine, day: dt.date, channel: str, count: int, status: str, error: str | None) -> None:
    table = store.notifications
    with engine.begin() as connection:
        connection.execute(table.delete().where(table.c.partition_date == day.isoformat(), table.c.channel == channel))
        connection.execute(
            table.insert().values(
                partition_date=day.isoformat(),
                channel=channel,
                alerts=count,
                status=status,
                error=error[:512] if error else None,
                created_at=store.utcnow(),
            )
        )


def failed_deliveries(engine: Engine) -> int:
    """Return how many day-and-channel deliveries failed and were not sent by a later rerun."""
    table = store.notifications
    query = sa.select(sa.func.count()).select_from(table).where(table.c.status == "failed")
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())
