"""Monitoring metrics beyond drift: missing rates, label share, quality with ECE, serving health."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from loopline import metrics
from loopline.monitoring import drift, missing_values, quality, serving_health, store

DAY = dt.date(2013, 1, 20)


@pytest.fixture
def engine(tmp_path):
    return store.get_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")


def _by_name(values, feature=None):
    return {item.metric: item for item in values if item.feature == feature}


# ---------------------------------------------------------------------------------------
# Missing rates
# ---------------------------------------------------------------------------------------


def _profile() -> dict:
    reference = pd.DataFrame(
        {
            "distance": [100.0, np.nan, 300.0, 400.0, np.nan, 600.0, 700.0, 800.0, 900.0, 1000.0],
            "carrier": ["AA", "B6", None, "AA", "N/A", "B6", "AA", "UA", "UA", "AA"],
        }
    )
    return drift.reference_profile(reference, ["distance"], bins=4, categorical=["carrier"])


def test_missing_rate_against_profile_shares():
    """The reference rate comes from the missing bin and the __MISSING__ category."""
    current = pd.DataFrame({"distance": [np.nan] * 5 + [500.0] * 5, "carrier": ["AA"] * 9 + [""]})

    values = missing_values.missing_rate_values(_profile(), current, ["distance"], ["carrier"], min_rows=5)
    distance, carrier = _by_name(values, "distance"), _by_name(values, "carrier")

    assert distance["missing_rate"].value == pytest.approx(0.5)
    assert distance["missing_rate_change"].value == pytest.approx(0.5 - 0.2)
    assert carrier["missing_rate"].value == pytest.approx(0.1)
    assert carrier["missing_rate_change"].value == pytest.approx(0.1 - 0.2)
    assert {item.status for item in values} == {"ok"}


def test_missing_rate_explicit_profile_entry_wins():
    profile = {**_profile(), "missing_rates": {"distance": 0.05}}
    current = pd.DataFrame({"distance": [np.nan] + [1.0] * 9, "carrier": ["AA"] * 10})

    [result, _] = missing_values.missing_rates(profile, current, ["distance"], ["carrier"], min_rows=1)

    assert result.reference_rate == pytest.approx(0.05)
    assert result.change == pytest.approx(0.05)


def test_missing_rate_without_reference_and_small_window():
    """A feature the profile lacks stores its rate but no change; too few rows store neither."""
    current = pd.DataFrame({"distance": [1.0, 2.0, np.nan, 4.0], "plane_age": [np.nan] * 4, "carrier": ["AA"] * 4})

    values = missing_values.missing_rate_values(_profile(), current, ["distance", "plane_age"], ["carrier"], min_rows=2)
    small = missing_values.missing_rate_values(_profile(), current, ["distance"], [], min_rows=10)

    plane_age = _by_name(values, "plane_age")
    assert plane_age["missing_rate"].value == 1.0
    assert plane_age["missing_rate_change"].status == "no_reference"
    assert plane_age["missing_rate_change"].value is None
    assert _by_name(small, "distance")["missing_rate"].status == "insufficient_data"
    assert _by_name(small, "distance")["missing_rate"].value is None
    assert _by_name(small, "distance")["missing_rate_change"].status == "insufficient_data"


# ---------------------------------------------------------------------------------------
# Label share and quality
# ---------------------------------------------------------------------------------------


def _score_days(engine, days_rows: dict[dt.date, int], seed: int = 3) -> list[dict]:
    """Store batch predictions for each day; return every row with a label drawn for it."""
    rng = np.random.default_rng(seed)
    rows = []
    for day, count in days_rows.items():
        probability = rng.uniform(0.05, 0.95, size=count)
        labelled = [
            {"flight_id": f"{day}-{index}", "model_version": "1", "probability": float(value), "decision": int(value >= 0.5)}
            for index, value in enumerate(probability)
        ]
        store.replace_batch_predictions(engine, day, "1", labelled, "scored")
        for row, label in zip(labelled, rng.uniform(size=count) < probability, strict=True):
            rows.append({**row, "day": day, "delayed": int(label)})
    return rows


def test_window_quality_label_share_and_calibration(engine):
    """Label share counts the window's predictions; ECE and log loss match metrics on the labelled rows."""
    days = {DAY - dt.timedelta(days=offset): 300 for offset in (1, 2, 3)}
    rows = _score_days(engine, days)
    # Labels of the two earlier days arrived by DAY; the last day's arrive after it.
    for day in days:
        arrived = day + dt.timedelta(days=1) if day < DAY - dt.timedelta(days=1) else DAY + dt.timedelta(days=1)
        store.replace_labels(engine, day, arrived, [row for row in rows if row["day"] == day])

    values = _by_name(quality.window_quality(engine, DAY, window_days=7, min_rows=100, holdout_log_loss=0.5))

    labelled = [row for row in rows if row["day"] < DAY - dt.timedelta(days=1)]
    expected = metrics.quality_summary([row["delayed"] for row in labelled], [row["probability"] for row in labelled])
    assert values["label_share"].value == pytest.approx(600 / 900)
    assert values["label_share"].sample_size == 900
    assert values["expected_calibration_error"].value == pytest.approx(expected["expected_calibration_error"], abs=1e-12)
    assert 0 < values["expected_calibration_error"].value < 0.2
    assert values["log_loss"].value == pytest.approx(expected["log_loss"], abs=1e-12)
    assert values["log_loss_ratio"].value == pytest.approx(expected["log_loss"] / 0.5)
    assert values["roc_auc"].value == pytest.approx(expected["roc_auc"])
    assert values["positive_rate"].sample_size == 600


def test_window_quality_without_labels_or_predictions(engine):
    """No labels yet: label share 0 and log loss insufficient; no predictions: no_predictions."""
    _score_days(engine, {DAY - dt.timedelta(days=1): 50})

    values = _by_name(quality.window_quality(engine, DAY, window_days=7, min_rows=10, holdout_log_loss=0.5))
    empty = _by_name(quality.window_quality(engine, DAY + dt.timedelta(days=30), 7, 10, 0.5))

    assert values["label_share"].value == 0.0
    assert values["log_loss"].status == "insufficient_data"
    assert values["log_loss"].value is None
    assert "expected_calibration_error" not in values
    assert empty["label_share"].status == "no_predictions"
    assert empty["label_share"].value is None


def test_window_quality_without_holdout_log_loss(engine):
    days = {DAY - dt.timedelta(days=1): 200}
    rows = _score_days(engine, days)
    store.replace_labels(engine, DAY - dt.timedelta(days=1), DAY, rows)

    values = _by_name(quality.window_quality(engine, DAY, 7, 100, holdout_log_loss=None))

    assert values["log_loss"].status == "ok"
    assert values["log_loss_ratio"].status == "no_reference"
    assert values["log_loss_ratio"].value is None


# ---------------------------------------------------------------------------------------
# Serving health
# ---------------------------------------------------------------------------------------


def _request(request_id: str, total_ms: float, status_code: int, created_at: dt.datetime) -> dict:
    return {
        "request_id": request_id,
        "model_version": "1",
        "records": 1,
        "status_code": status_code,
        "preprocessing_ms": total_ms / 4,
        "feature_ms": total_ms / 4,
        "inference_ms": total_ms / 4,
        "postprocessing_ms": total_ms / 4,
        "total_ms": total_ms,
        "created_at": created_at,
    }


def test_serving_metrics_percentiles_and_error_rates(engine):
    """Latency counts successful requests of the UTC day; error rates count all of them."""
    midnight = dt.datetime.combine(DAY, dt.time(), tzinfo=dt.timezone.utc)
    rows = [_request(f"ok{index}", float(index + 1), 200, midnight + dt.timedelta(minutes=index)) for index in range(100)]
    rows += [_request(f"bad{index}", 0.5, 422, midnight + dt.timedelta(hours=12)) for index in range(15)]
    rows += [_request(f"fail{index}", 900.0, 500, midnight + dt.timedelta(hours=23, minutes=59)) for index in range(5)]
    # The next day's first request and the previous day's last one are not counted.
    rows.append(_request("next", 5000.0, 500, midnight + dt.timedelta(days=1)))
    rows.append(_request("previous", 5000.0, 500, midnight - dt.timedelta(microseconds=1)))
    store.insert_request_timings(engine, rows)

    values = _by_name(serving_health.serving_metrics(engine, DAY))

    latencies = np.arange(1, 101, dtype="float64")
    assert values["latency_p50_ms"].value == pytest.approx(np.percentile(latencies, 50))
    assert values["latency_p95_ms"].value == pytest.approx(np.percentile(latencies, 95))
    assert values["latency_p99_ms"].value == pytest.approx(np.percentile(latencies, 99))
    assert values["latency_p99_ms"].sample_size == 100
    assert values["error_rate_5xx"].value == pytest.approx(5 / 120)
    assert values["error_rate_4xx"].value == pytest.approx(15 / 120)
    assert values["error_rate_4xx"].sample_size == 120


def test_serving_metrics_without_requests(engine):
    """A day without requests stores every serving metric as insufficient_data, without a value."""
    values = serving_health.serving_metrics(engine, DAY)

    assert len(values) == 5
    assert {item.status for item in values} == {"insufficient_data"}
    assert {item.value for item in values} == {None}


def test_serving_metrics_all_failed(engine):
    midnight = dt.datetime.combine(DAY, dt.time(), tzinfo=dt.timezone.utc)
    store.insert_request_timings(engine, [_request(f"fail{index}", 3.0, 500, midnight) for index in range(4)])

    values = _by_name(serving_health.serving_metrics(engine, DAY))

    assert values["error_rate_5xx"].value == 1.0
    assert values["latency_p50_ms"].status == "insufficient_data"
