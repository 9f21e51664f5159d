"""Model candidates and their selection on the validation window.

Three model families, each with a few settings from the config:

* ``sgd_logistic``: logistic regression fitted by stochastic gradient descent on binary
  cross-entropy, epoch by epoch, so the descent can be logged;
* ``logistic_regression``: the same model fitted to convergence by L-BFGS;
* ``hist_gradient_boosting``: gradient-boosted trees, which can use interactions the
  linear models cannot (weather at a given hour, say).

Every candidate is the same three-step pipeline (features, scaling, classifier) fitted on
the training days. The one with the lowest validation log loss becomes the challenger;
the holdout stays untouched for the registry gate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline

from loopline import metrics, modeling
from loopline.config import LooplineConfig

logger = logging.getLogger(__name__)

SGD = "sgd_logistic"
LOGISTIC = "logistic_regression"
BOOSTING = "hist_gradient_boosting"


@dataclass(frozen=True)
class Candidate:
    """One model family with one setting of its hyperparameters."""

    family: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        values = ",".join(f"{key}={value}" for key, value in sorted(self.settings.items()))
        return f"{self.family}({values})"


def candidates(config: LooplineConfig) -> list[Candidate]:
    """Return every configured candidate, in config order."""
    return [
        Candidate(family, dict(settings))
        for family, grid in config.training.candidates.items()
        for settings in (grid or [{}])
    ]


def build_classifier(config: LooplineConfig, candidate: Candidate):
    seed = config.training.seed
    if candidate.family == SGD:
        sgd = config.training.sgd
        base = {"alpha": sgd.alpha, "learning_rate": sgd.learning_rate, "eta0": sgd.eta0, "max_iter": sgd.max_iter, "tol": sgd.tol}
        return SGDClassifier(loss="log_loss", random_state=seed, **{**base, **candidate.settings})
    if candidate.family == LOGISTIC:
        return LogisticRegression(max_iter=1000, **candidate.settings)
    if candidate.family == BOOSTING:
        # Early stopping would carve a random validation split out of the training days;
        # the number of iterations is a setting instead.
        return HistGradientBoostingClassifier(random_state=seed, early_stopping=False, **candidate.settings)
    raise ValueError(f"unknown model family {candidate.family!r}; use one of {SGD}, {LOGISTIC}, {BOOSTING}")


def build(config: LooplineConfig, candidate: Candidate) -> Pipeline:
    pipeline = modeling.build_pipeline(config)
    try:
        classifier = build_classifier(config, candidate)
    except TypeError as error:
        raise ValueError(f"invalid setting for candidate {candidate.label}: {error}; fix training.candidates") from None
    pipeline.steps[-1] = (modeling.CLASSIFIER_STEP, classifier)
    return pipeline


@dataclass
class Selection:
    """The fitted challenger, every candidate's validation log loss, and the SGD descent."""

    best: Candidate
    pipeline: Pipeline
    results: list[dict[str, Any]]
    descent: list[dict[str, float]]


def select(config: LooplineConfig, x_train, y_train, x_validation, y_validation) -> Selection:
    """Fit every candidate on the training rows and keep the best on the validation rows."""
    results = []
    best: tuple[float, Candidate, Pipeline] | None = None
    descent: list[dict[str, float]] = []
    best_sgd_loss = np.inf

    for candidate in candidates(config):
        pipeline = build(config, candidate)
        trace = []
        if candidate.family == SGD:
            trace = modeling.fit_with_trace(pipeline, x_train, y_train, x_validation, y_validation)
        else:
            pipeline.fit(x_train, np.asarray(y_train))
        loss = metrics.log_loss(y_validation, pipeline.predict_proba(x_validation)[:, 1])
        results.append({"candidate": candidate.label, "family": candidate.family, "validation_log_loss": loss})
        logger.info("candidate %s: validation log loss %.5f", candidate.label, loss)

        if candidate.family == SGD and loss < best_sgd_loss:
            best_sgd_loss, descent = loss, trace
        if best is None or loss < best[0]:
            best = (loss, candidate, pipeline)

    if best is None:
        raise ValueError("training.candidates is empty; configure at least one model family")
    return Selection(best=best[1], pipeline=best[2], results=results, descent=descent)
