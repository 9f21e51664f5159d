"""Probability calibration of the challenger on the validation days, kept only where it helps.

The challenger's classifier is frozen (``sklearn.frozen.FrozenEstimator``) and wrapped in
``CalibratedClassifierCV``, which then fits only a calibrator, either Platt's sigmoid or
isotonic regression. The calibrator learns from the validation days, because the classifier was
fitted on the training days and a calibrator fitted on those rows would learn nothing
about its errors on new days.

A calibrator always fits the rows it learned from better, so each method is scored
out of sample by cross-fitting on the validation rows in time order. It is fitted on the
first half and scored on the second, then the other way round. A method is kept only when
its cross-fitted log loss is lower than the uncalibrated validation log loss. The kept
calibrator is then refitted on all validation rows. The holdout days stay untouched for
the registry gate.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import Pipeline

from loopline import metrics, modeling

logger = logging.getLogger(__name__)

# Calibration methods of CalibratedClassifierCV that are tried, in this order.
METHODS = ("sigmoid", "isotonic")
# Value of the ``calibration`` run param when no method lowered the validation log loss.
NO_CALIBRATION = "none"
# Key of the model's own validation log loss in ``Calibration.log_losses``.
UNCALIBRATED = "uncalibrated"
# Number of time-ordered folds of the validation rows. Each half calibrates the other.
CROSS_FIT_FOLDS = 2


@dataclass
class Calibration:
    """The chosen pipeline, the chosen method and the validation log loss of every option.

    ``log_losses`` maps ``"uncalibrated"`` to the model's own validation log loss and each
    method to its cross-fitted validation log loss. A method missing from it was not scored.
    """

    pipeline: Pipeline
    method: str
    log_losses: dict[str, float] = field(default_factory=dict)
    note: str = ""


def calibrate(pipeline: Pipeline, x_validation, y_validation) -> Calibration:
    """Return ``pipeline`` with a calibrated classifier where that lowers validation log loss."""
    labels = np.asarray(y_validation, dtype="int64")
    matrix = pipeline[:-1].transform(x_validation)
    classifier = pipeline.named_steps[modeling.CLASSIFIER_STEP]
    uncalibrated = metrics.log_loss(labels, modeling.positive_probability(pipeline, matrix))
    log_losses = {UNCALIBRATED: uncalibrated}

    folds = np.array_split(labels, CROSS_FIT_FOLDS)
    if any(np.unique(fold).size < 2 for fold in folds):
        # A calibrator needs both classes in the rows it is fitted on.
        note = "a half of the validation rows has a single class, so calibration cannot be scored"
        logger.warning("calibration skipped: %s", note)
        return Calibration(pipeline=pipeline, method=NO_CALIBRATION, log_losses=log_losses, note=note)

    for method in METHODS:
        calibrator = CalibratedClassifierCV(FrozenEstimator(classifier), method=method)
        probability = cross_val_predict(calibrator, matrix, labels, cv=KFold(CROSS_FIT_FOLDS), method="predict_proba")
        log_losses[method] = metrics.log_loss(labels, probability[:, 1])
        logger.info("calibration %s: cross-fitted validation log loss %.5f (uncalibrated %.5f)", method, log_losses[method], uncalibrated)

    best = min(log_losses, key=lambda name: (log_losses[name], name != UNCALIBRATED))
    if best == UNCALIBRATED or not math.isfinite(log_losses[best]):
        return Calibration(pipeline=pipeline, method=NO_CALIBRATION, log_losses=log_losses, note="no method lowered the validation log loss")

    calibrated = CalibratedClassifierCV(FrozenEstimator(classifier), method=best).fit(matrix, labels)
    steps = pipeline.steps[:-1] + [(modeling.CLASSIFIER_STEP, calibrated)]
    return Calibration(pipeline=Pipeline(steps), method=best, log_losses=log_losses, note=f"{best} lowered the validation log loss")
