"""Airflow integration for Loopline: context helpers, the shared asset and sensors.

This layer translates Airflow's run context (data interval, params, asset events, conf)
into plain arguments for the ``loopline`` library, which never imports Airflow. Importing
this module is cheap: heavy libraries load inside the functions that need them.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from typing import Any

from airflow.sdk import Asset, BaseSensorOperator

logger = logging.getLogger(__name__)

# skops looks up each saved object's module by reading attributes of every module in
# sys.modules. On Airflow's modules that trips one DeprecatedImportWarning per deprecated
# name, about 20,000 lines per demo in the task logs, none about Loopline's code.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"skops\.io\._utils")

# Updated by the data pipeline after each day's features are written; its event extra
# carries the partition date and row counts. The training DAG is scheduled on it.
FEATURES_ASSET = Asset(name="loopline_flight_features", uri="loopline://feature-store/flights/v1", group="feature-store")
# Updated by every registry gate decision. Batch scoring reads the model with the @champion alias.
CHAMPION_ASSET = Asset(name="loopline_champion_model", uri="loopline://registry/champion", group="registry")
# Updated by batch scoring; monitoring reads the day's predictions from the monitoring store.
PREDICTIONS_ASSET = Asset(name="loopline_batch_predictions", uri="loopline://monitoring-store/predictions", group="monitoring")

# The first flight date of the bundled data set; no labels exist before it.
FIRST_LABEL_DAY = dt.date(2013, 1, 1)

DEFAULT_ARGS = {
    "owner": "loopline",
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=30),
}

# Training tasks run on their own Celery queue and pool. Where separate workers serve the
# default and training queues, light tasks do not wait behind a training job. The
# LocalExecutor ignores the queue. scripts/services.sh creates the pool
# with LOOPLINE_TRAINING_POOL_SLOTS slots (default 1).
TRAINING_QUEUE = "training"
TRAINING_POOL = "training"
# A training task outlives a few minutes' outage of the MLflow server. With a multiplier
# of 2, Airflow 3.3 waits between d and 2d before retry n, where d = 30 s * 2**(n - 1),
# so the three retries span at least 3.5 minutes.
TRAINING_TASK_ARGS = {
    "queue": TRAINING_QUEUE,
    "pool": TRAINING_POOL,
    "retries": 3,
    "retry_delay": dt.timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=5),
}


def interval_day(context: dict[str, Any]) -> dt.date:
    """Return the UTC date that names the run's data interval (never the wall clock)."""
    start = context.get("data_interval_start")
    if start is None:
        raise ValueError(
            f"run {context['dag_run'].run_id} has no data interval (an asset-triggered or manual run "
            "without a logical date); trigger it with a logical date"
        )
    return start.astimezone(dt.timezone.utc).date()


def run_tags(context: dict[str, Any], window: str | None = None) -> dict[str, str]:
    """Return the MLflow tags that tie a run to its Airflow task."""
    tags = {
        "airflow.dag_id": context["dag"].dag_id,
        "airflow.run_id": context["dag_run"].run_id,
        "airflow.task_id": context["task_instance"].task_id,
        "airflow.try_number": str(context["task_instance"].try_number),
    }
    if window:
        tags["loopline.window"] = window
    return tags


def config():
    from loopline.config import cached_config

    return cached_config()


class _StoreSensor(BaseSensorOperator):
    """A sensor in reschedule mode: it frees its worker slot between pokes.

    The ``timeout`` counts from the first poke, so a sensor whose data never arrives fails
    after a bounded wait.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 20)
        kwargs.setdefault("timeout", 6 * 3600)
        super().__init__(**kwargs)


class ScoringBatchSensor(_StoreSensor):
    """Wait until the day's batch scoring and the labels due that day are in the store.

    The labels of the flights ``source.label_delay_days`` before the data day arrive on
    that day. Waiting for them keeps the day's quality metrics the same on every rerun.
    """

    def poke(self, context: dict[str, Any]) -> bool:
        from loopline.monitoring import store

        day = interval_day(context)
        batch = store.scoring_batch(store.get_engine(), day)
        if batch is None:
            logger.info("no scoring record for %s yet", day)
            return False
        logger.info("scoring record for %s: %s, %s rows, model version %s", day, batch["status"], batch["rows"], batch["model_version"])

        settings = config()
        flight_day = day - dt.timedelta(days=settings.source.label_delay_days)
        if flight_day < FIRST_LABEL_DAY:
            return True
        arrived = store.labels_arrived(store.get_engine(), flight_day)
        logger.info("labels of %s in the store: %d", flight_day, arrived)
        return arrived > 0


class FeaturePartitionSensor(_StoreSensor):
    """Wait until the feature-store partition of the run's data day exists."""

    def poke(self, context: dict[str, Any]) -> bool:
        from loopline import store

        feature_set = config().feature_set
        path = store.partition_path(store.feature_dataset(feature_set.name, feature_set.version), interval_day(context))
        logger.info("waiting for %s: %s", path, "present" if path.is_file() else "absent")
        return path.is_file()
