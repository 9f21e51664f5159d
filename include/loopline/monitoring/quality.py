"""Model quality once labels arrive, and the share of predictions that have labels.

Labels arrive days after the flights, so quality on a data day covers the batch
predictions of the ``window_days`` before it, with the labels that had arrived by the day
itself. The arrival cutoff makes a rerun compute the same numbers. Metrics:

* ``label_share``: labelled predictions / batch predictions of the window; "no_predictions"
  when the window has none;
* with at least ``min_rows`` labelled predictions: ``log_loss``, ``roc_auc`` (status
  "undefined_one_class" when the labels hold one class), ``positive_rate``,
  ``mean_probability`` and ``expected_calibration_error`` (``metrics.ECE_BINS``
  equal-width bins, as training reports it), all from ``metrics.quality_summary``;
* ``log_loss_ratio``: that log loss divided by the scoring model's holdout log loss, or
  "no_reference" when the training run logged none;
* with fewer labelled predictions, one ``log_loss`` row with "insufficient_data".
"""

from __future__ import annotations

import datetime as dt
import math

from loopline import metrics
from loopline.monitoring import store
from loopline.monitoring.values import MetricValue

QUALITY_METRICS = ("log_loss", "roc_auc", "positive_rate", "mean_probability", "expected_calibration_error")


def window_quality(
    engine, day: dt.date, window_days: int, min_rows: int, holdout_log_loss: float | None, model_version: str | None = None
) -> list[MetricValue]:
    """Return the label share and quality metrics of the window before ``day``.

    With ``model_version``, quality counts only that version's predictions: days scored
    by an earlier champion tell nothing about this one, and the rollback action must not
    blame a fresh champion for its predecessor's errors. The label share counts them all.
    """
    start = day - dt.timedelta(days=window_days)
    labelled = store.labelled_predictions(engine, start, day, arrived_by=day)
    predicted = store.batch_prediction_count(engine, start, day)
    if predicted:
        values = [MetricValue("label_share", None, len(labelled) / predicted, "ok", predicted)]
    else:
        values = [MetricValue("label_share", None, None, "no_predictions", 0)]
    if model_version is not None:
        labelled = [row for row in labelled if row["model_version"] == model_version]

    rows = len(labelled)
    if rows < min_rows:
        values.append(MetricValue("log_loss", None, None, "insufficient_data", rows))
        return values

    quality = metrics.quality_summary([row["delayed"] for row in labelled], [row["probability"] for row in labelled])
    for name in QUALITY_METRICS:
        value = quality[name]
        values.append(MetricValue(name, None, value, "ok" if value is not None else "undefined_one_class", rows))

    # Live log loss relative to what the registry gate measured on the holdout: a ratio
    # above 1 means the model does worse on new days than when it was promoted.
    if holdout_log_loss and math.isfinite(quality["log_loss"]):
        values.append(MetricValue("log_loss_ratio", None, quality["log_loss"] / holdout_log_loss, "ok", rows))
    else:
        values.append(MetricValue("log_loss_ratio", None, None, "no_reference", rows))
    return values
