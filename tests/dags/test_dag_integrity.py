"""Every DAG file imports cleanly, cheaply, and carries docs, tags, an owner and retries."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO_ROOT / "dags").glob("*.py"))
HEAVY_MODULES = ("pandas", "sklearn", "mlflow", "great_expectations", "pyarrow")
EXPECTED_DAGS = {"loopline_data_pipeline", "loopline_training", "loopline_batch_scoring", "loopline_monitoring"}

# Imports one DAG file in a fresh interpreter and prints which heavy modules it loaded.
PROBE = """
import importlib.util, json, sys
sys.path.insert(0, sys.argv[2])
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(sorted(name for name in sys.argv[3].split(",") if name in sys.modules)))
"""


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def test_dagbag_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == EXPECTED_DAGS


@pytest.mark.parametrize("path", DAG_FILES, ids=[path.name for path in DAG_FILES])
def test_dag_file_imports_no_heavy_module(path):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), str(REPO_ROOT / "plugins"), ",".join(HEAVY_MODULES)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"{path.name} imports {loaded} at parse time; import them inside the task"


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_dag_has_docs_tags_owner_retries(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.doc_md and len(dag.doc_md) > 200, f"{dag_id} needs a Markdown description"
    assert "loopline" in dag.tags, f"{dag_id} lacks the loopline tag"
    for task in dag.tasks:
        assert task.owner == "loopline", f"{dag_id}.{task.task_id} has owner {task.owner!r}"
        assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


def test_training_is_scheduled_on_feature_asset(dagbag):
    from loopline_airflow import FEATURES_ASSET

    pipeline = dagbag.dags["loopline_data_pipeline"]
    publish = pipeline.get_task("publish_features")
    assert FEATURES_ASSET in publish.outlets
    training = dagbag.dags["loopline_training"]
    assert list(training.timetable.asset_condition.objects) == [FEATURES_ASSET]


def test_training_data_error_fails_without_retry(dagbag, monkeypatch):
    """A window that cannot be trained on fails the train task for good, so nothing is registered."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from loopline import training

    def single_class(config, window, tags):
        raise training.TrainingDataError("training set of window 2013-01-01..2013-01-15 has a single class")

    monkeypatch.setattr(training, "train", single_class)
    dag = dagbag.dags["loopline_training"]
    window = training.TrainingWindow(
        start=dt.date(2013, 1, 1),
        end=dt.date(2013, 1, 15),
        validation_start=dt.date(2013, 1, 10),
        holdout_start=dt.date(2013, 1, 12),
        days=tuple(dt.date(2013, 1, day) for day in range(1, 15)),
    )
    context = {
        "dag": SimpleNamespace(dag_id=dag.dag_id),
        "dag_run": SimpleNamespace(run_id="manual__test"),
        "task_instance": SimpleNamespace(task_id="train", try_number=1, xcom_push=lambda key, value: pushed.update({key: value})),
    }
    pushed = {}

    with pytest.raises(AirflowFailException, match="no model trained: training set of window .* single class"):
        dag.get_task("train").python_callable({"window": window.to_dict(), "reason": "manual"}, **context)
    assert dag.get_task("register_and_gate").upstream_task_ids >= {"train"}
    # record_outcome reads the cause from XCom and stores it for monitoring's circuit breaker.
    assert "single class" in pushed["error"]
    assert dag.get_task("record_outcome").trigger_rule == "all_done"


def test_monitoring_reports_without_retrain(dagbag, airflow_db, monkeypatch):
    """A day that needs no retrain skips trigger_training but still writes its report."""
    from airflow.utils.state import TaskInstanceState

    from loopline import settings
    from loopline.monitoring import checks

    day = dt.date(2013, 3, 5)

    def no_retrain(config, checked_day):
        return {"date": checked_day.isoformat(), "status": "checked", "alerts": [], "retrain": None}

    # The check itself needs a registered model; its metrics are tested in tests/include.
    monkeypatch.setattr(checks, "run_checks", no_retrain)
    run = dagbag.dags["loopline_monitoring"].test(
        logical_date=dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc), mark_success_pattern="wait_for_scoring"
    )

    states = {instance.task_id: instance.state for instance in run.get_task_instances()}
    assert states["request_retrain"] == TaskInstanceState.SUCCESS
    assert states["trigger_training"] == TaskInstanceState.SKIPPED
    assert states["report"] == TaskInstanceState.SUCCESS
    assert (settings.home() / "reports" / "monitoring" / f"monitoring_{day}.html").is_file()
