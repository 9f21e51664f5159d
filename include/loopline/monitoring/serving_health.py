"""Latency percentiles and error rates of the model server on one day.

The model server logs each request that reaches a loaded model to ``request_timings``, with
its status code and total time: 200, the 4xx of a body that fails validation, and 500.
A 413 for a body over the size limit and a 503 before any model is loaded are counted only
by ``GET /metrics``. For the requests logged on the day (by ``created_at``, UTC) this
module computes:

* ``latency_p50_ms``, ``latency_p95_ms``, ``latency_p99_ms``: percentiles (linear
  interpolation, as ``numpy.percentile``) of the total time of successful requests
  (status below 400), in milliseconds. A rejected request stops early, so its time would
  pull the percentiles down;
* ``error_rate_5xx`` and ``error_rate_4xx``: the share of all the day's requests whose
  response status is 5xx or 4xx.

A day without requests stores every metric with the status "insufficient_data" and no
value; a day whose requests all failed does so for the latency percentiles only.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from loopline.monitoring import store
from loopline.monitoring.values import MetricValue

LATENCY_PERCENTILES = (50, 95, 99)
ERROR_CLASSES = {"error_rate_5xx": (500, 600), "error_rate_4xx": (400, 500)}


def serving_metrics(engine, day: dt.date) -> list[MetricValue]:
    """Return the latency percentiles and error rates of the model-server requests of ``day``."""
    rows = store.request_timings_on(engine, day)
    codes = np.asarray([row["status_code"] for row in rows], dtype="int64")
    totals = np.asarray([row["total_ms"] for row in rows], dtype="float64")

    succeeded = totals[codes < 400]
    values = []
    for percentile in LATENCY_PERCENTILES:
        metric = f"latency_p{percentile}_ms"
        if succeeded.size == 0:
            values.append(MetricValue(metric, None, None, "insufficient_data", 0))
        else:
            values.append(MetricValue(metric, None, float(np.percentile(succeeded, percentile)), "ok", int(succeeded.size)))
    for metric, (low, high) in ERROR_CLASSES.items():
        if codes.size == 0:
            values.append(MetricValue(metric, None, None, "insufficient_data", 0))
        else:
            share = float(np.mean((codes >= low) & (codes < high)))
            values.append(MetricValue(metric, None, share, "ok", int(codes.size)))
    return values
