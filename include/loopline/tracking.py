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


# The tags that identify one Airflow task instance; runs of its earlier tries share them.
TASK_IDENTITY_TAGS = ("airflow.dag_id", "airflow.run_id", "airflow.task_id")


@contextlib.contextmanager
def task_run(experiment: str, run_name: str, tags: Mapping[str, str]) -> Iterator[object]:
    """Open one explicit MLflow run and always end it: FINISHED, or FAILED on an error.

    A run that an earlier try of the same Airflow task left RUNNING (its worker was killed,
    or the tracking server was down when it tried to end the run) is ended as FAILED first.
    """
    import mlflow

    client = configure()
    stale = mlflow.active_run()
    if stale is not None:
        # A run left open by earlier code in this process would swallow this task's logs.
        logger.warning("ending MLflow run %s left active in this process", stale.info.run_id)
        mlflow.end_run(status="KILLED")

    experiment_key = experiment_id(experiment)
    end_runs_of_earlier_tries(client, experiment_key, tags)
    run = mlflow.start_run(experiment_id=experiment_key, run_name=run_name, tags=dict(tags))
    logger.info("started MLflow run %s (%s) in experiment %s", run.info.run_id, run_name, experiment)
    try:
        yield run
    except BaseException:
        try:
            mlflow.end_run(status="FAILED")
        except Exception as error:  # the tracking server may be the reason the task failed
            logger.error(
                "MLflow run %s could not be ended as FAILED (%s); the next try of this task ends it",
                run.info.run_id,
                error,
            )
        else:
            logger.error("MLflow run %s ended as FAILED", run.info.run_id)
        raise
    mlflow.end_run(status="FINISHED")


def end_runs_of_earlier_tries(client, experiment_key: str, tags: Mapping[str, str]) -> list[str]:
    """End as FAILED the RUNNING runs of the same Airflow task instance; return their ids.

    Does nothing for runs without the Airflow identity tags (tests, notebooks).
    """
    if not all(tags.get(key) for key in TASK_IDENTITY_TAGS):
        return []
    if any("'" in tags[key] for key in TASK_IDENTITY_TAGS):
        logger.warning("not looking for runs of earlier tries: a quote in %s", {key: tags[key] for key in TASK_IDENTITY_TAGS})
        return []
    conditions = [f"tags.`{key}` = '{tags[key]}'" for key in TASK_IDENTITY_TAGS]
    conditions.append("attributes.status = 'RUNNING'")
    ended = []
    for stale in client.search_runs([experiment_key], filter_string=" and ".join(conditions), max_results=100):
        client.set_terminated(stale.info.run_id, status="FAILED")
        logger.warning(
            "ended MLflow run %s as FAILED: try %s of this task left it RUNNING",
            stale.info.run_id,
            stale.data.tags.get("airflow.try_number", "?"),
        )
        ended.append(stale.info.run_id)
    return ended
