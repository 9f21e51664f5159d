"""MLflow runs: one explicit run per task, always ended, FAILED on error, never in Default."""

from __future__ import annotations

import pytest


@pytest.fixture
def tracking_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPLINE_HOME", str(tmp_path))
    from loopline import tracking

    return tracking.configure()


def test_task_run_failure_ends_failed(tracking_home):
    import mlflow

    from loopline import tracking

    with pytest.raises(RuntimeError, match="boom"):
        with tracking.task_run("loopline-test", "failing task", {"airflow.dag_id": "demo"}):
            mlflow.log_param("alpha", 1)
            raise RuntimeError("boom")

    assert mlflow.active_run() is None
    [run] = tracking_home.search_runs([tracking.experiment_id("loopline-test")])
    assert run.info.status == "FAILED"
    assert run.data.tags["airflow.dag_id"] == "demo"
    assert run.data.params == {"alpha": "1"}


def test_task_run_ends_stale_run_and_finishes(tracking_home):
    """A run left open in the process is ended, and the task's logs go to its own run."""
    import mlflow

    from loopline import tracking

    stale = mlflow.start_run(experiment_id=tracking.experiment_id("loopline-test"), run_name="leaked")
    with tracking.task_run("loopline-test", "next task", {}) as run:
        mlflow.log_metric("value", 2.0)

    assert run.info.run_id != stale.info.run_id
    assert tracking_home.get_run(stale.info.run_id).info.status == "KILLED"
    finished = tracking_home.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.metrics == {"value": 2.0}
    assert mlflow.active_run() is None


def test_task_run_never_uses_default_experiment(tracking_home):
    from loopline import tracking

    with tracking.task_run("loopline-test", "task", {}):
        pass
    default = tracking_home.get_experiment_by_name("Default")
    runs = tracking_home.search_runs([default.experiment_id]) if default else []
    assert runs == []


def test_task_run_ends_runs_of_earlier_tries(tracking_home):
    """A run a killed try left RUNNING is ended FAILED; another task's open run is left alone."""
    from loopline import tracking

    experiment = tracking.experiment_id("loopline-test")
    task = {"airflow.dag_id": "loopline_training", "airflow.run_id": "manual__2013-01-09", "airflow.task_id": "train"}
    killed_try = tracking_home.create_run(experiment, tags={**task, "airflow.try_number": "1"}, run_name="try 1")
    other_task = tracking_home.create_run(experiment, tags={**task, "airflow.task_id": "evaluate"}, run_name="other")

    with tracking.task_run("loopline-test", "try 2", {**task, "airflow.try_number": "2"}) as run:
        pass

    assert tracking_home.get_run(killed_try.info.run_id).info.status == "FAILED"
    assert tracking_home.get_run(other_task.info.run_id).info.status == "RUNNING"
    assert tracking_home.get_run(run.info.run_id).info.status == "FINISHED"
