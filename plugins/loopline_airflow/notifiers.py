"""Airflow notifiers that deliver the alerts of a monitoring run's data day.

Each notifier sends through one channel of ``loopline.monitoring.notify``: the task log,
a webhook or e-mail. They work as task callbacks (``on_success_callback=[...]``) and as
plain calls inside a task, which is how the monitoring DAG's ``send_alerts`` uses them.
A failed delivery is logged and recorded by ``notify.deliver``; it never fails the task.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseNotifier

from loopline_airflow import config, interval_day

logger = logging.getLogger(__name__)


class LooplineAlertNotifier(BaseNotifier):
    """Deliver the data day's alerts through ``channel`` ("log", "webhook" or "email")."""

    def __init__(self, channel: str) -> None:
        super().__init__()
        self.channel = channel
        self.result: dict[str, Any] | None = None

    def notify(self, context: dict[str, Any]) -> None:
        from loopline.monitoring import notify, store

        self.result = notify.deliver(config(), store.get_engine(), interval_day(context), self.channel)


def alert_notifiers() -> list[LooplineAlertNotifier]:
    """Return a notifier for the log and for each channel configured under ``monitoring.notify``."""
    settings = config().monitoring.notify
    channels = ["log"] + [name for name in ("webhook", "email") if getattr(settings, name) is not None]
    return [LooplineAlertNotifier(channel) for channel in channels]
