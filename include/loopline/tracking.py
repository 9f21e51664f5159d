"""MLflow set-up and the one explicit run per task.

The tracking and registry URIs always come from ``loopline.settings``: MLflow's own
defaults (``./mlflow.db`` and ``./mlruns`` in the working directory) would scatter state
wherever a process happens to start.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping

from loopline import settings

logger = logging.getLogger(__name__)

TRAINING_EXPERIMENT = "loopline-training"


def configure():
    """Point MLflow at Loopline's tracking store and registry; return an ``MlflowClient``."""
    import mlflow
    from mlflow import MlflowClient

    uri = settings.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(name: str) -> str:
    """Return the id of experiment ``name``, creating it (never the Default experiment)."""
    client = configure()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id

    artifact_location = None
    if settings.mlflow_tracking_uri().startswith("sqlite"):
        artifact_location = f"{settings.mlflow_artifact_root()}/{name}"
    return client.create_experiment(name, artifact_location=artifact_location)


@contextlib.contextmanager
def task_run(experiment: str, run_name: str, tags: Mapping[str, str]) -> Iterator[object]:
    """Open one explicit MLflow run and always end it: FINISHED, or FAILED on an error."""
    import mlflow

    configure()
    stale = mlflow.active_run()
    if stale is not None:
        # A run left open by earlier code in this process would swallow this task's logs.
        logger.warning("ending MLflow run %s left active in this process", stale.info.run_id)
        mlflow.end_run(status="KILLED")

    run = mlflow.start_run(experiment_id=experiment_id(experiment), run_name=run_name, tags=dict(tags))
    logger.info("started MLflow run %s (%s) in experiment %s", run.info.run_id, run_name, experiment)
    try:
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        logger.error("MLflow run %s ended as FAILED", run.info.run_id)
        raise
    mlflow.end_run(status="FINISHED")
