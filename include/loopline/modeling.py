"""The model: fitted feature state, scaling and a logistic model trained by gradient descent.

The logged artifact is one scikit-learn ``Pipeline`` with three named steps, so batch and
online scoring apply exactly what training learned, and the server can time the feature
step and the classifier separately:

* ``features``: ``FeatureProcessor`` (mean imputation, frequency and one-hot encoding);
* ``scale``: ``StandardScaler``, because stochastic gradient descent converges poorly on
  features with very different scales (distance in miles next to a share in [0, 1]);
* ``classifier``: ``SGDClassifier(loss="log_loss")``, logistic regression fitted by gradient
  descent on binary cross-entropy.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from loopline import metrics
from loopline.config import LooplineConfig
from loopline.features import FeatureProcessor

FEATURES_STEP = "features"
SCALE_STEP = "scale"
CLASSIFIER_STEP = "classifier"

# Types that the skops-serialized pipeline contains beyond scikit-learn's own. MLflow
# stores this list with the model and skops refuses to load any type that is not on it.
SKOPS_TRUSTED_TYPES = [
    "loopline.features.FeatureProcessor",
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # The calibrated classifier (loopline.calibration): one frozen classifier with its
    # sigmoid or isotonic calibrator.
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
]


def build_pipeline(config: LooplineConfig) -> Pipeline:
    feature_set = config.feature_set
    sgd = config.training.sgd
    return Pipeline(
        [
            (
                FEATURES_STEP,
                FeatureProcessor(
                    numerical=list(feature_set.numerical),
                    categorical=list(feature_set.categorical),
                    fill_value=feature_set.all_missing_fill_value,
                    one_hot=list(feature_set.one_hot),
                    max_one_hot_categories=feature_set.max_one_hot_categories,
                ),
            ),
            (SCALE_STEP, StandardScaler()),
            (
                CLASSIFIER_STEP,
                SGDClassifier(
                    loss="log_loss",
                    alpha=sgd.alpha,
                    learning_rate=sgd.learning_rate,
                    eta0=sgd.eta0,
                    max_iter=sgd.max_iter,
                    tol=sgd.tol,
                    random_state=config.training.seed,
                ),
            ),
        ]
    )


def model_signature(config: LooplineConfig):
    """Return the MLflow signature built from the feature schema, not from sample dtypes.

    Numerical features are declared double even where the training rows held integers, so
    a request with a missing value (a float NaN) or a float still matches it.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = [ColSpec("double", name) for name in config.feature_set.numerical]
    # Every column is required: a missing value is sent as null, never by leaving the column out.
    inputs += [ColSpec("string", name) for name in config.feature_set.categorical]
    outputs = [ColSpec("double", "probability")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def pip_requirements() -> list[str]:
    """Return the pinned requirements logged with the model.

    Passing them explicitly skips MLflow's requirement inference, which loads the model in
    a subprocess and took 10-27 s per model on a 2-core machine.
    """
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("mlflow", "scikit-learn", "numpy", "pandas", "skops")]


# Epochs without an improvement of the training log loss by more than ``tol`` before the
# descent stops; scikit-learn's SGDClassifier uses the same rule (n_iter_no_change=5).
EPOCHS_WITHOUT_IMPROVEMENT = 5


def fit_with_trace(pipeline: Pipeline, x_train, y_train, x_eval, y_eval) -> list[dict]:
    """Fit ``pipeline`` epoch by epoch and return the log loss after every epoch.

    The feature and scaling steps are fitted on the training rows. The classifier then
    takes one gradient-descent pass over them per ``partial_fit`` call, so the training
    and evaluation log loss of each epoch can be logged. The evaluation rows are only watched,
    never used to stop or select.
    """
    y_train = np.asarray(y_train, dtype="int64")
    y_eval = np.asarray(y_eval, dtype="int64")
    train_matrix = pipeline[:-1].fit_transform(x_train, y_train)
    eval_matrix = pipeline[:-1].transform(x_eval)
    classifier = pipeline.named_steps[CLASSIFIER_STEP]

    trace = []
    best = math.inf
    stale = 0
    for epoch in range(1, classifier.max_iter + 1):
        classifier.partial_fit(train_matrix, y_train, classes=np.asarray([0, 1]))
        train_loss = metrics.log_loss(y_train, positive_probability(pipeline, train_matrix))
        eval_loss = metrics.log_loss(y_eval, positive_probability(pipeline, eval_matrix))
        trace.append({"epoch": epoch, "train_log_loss": train_loss, "holdout_log_loss": eval_loss})

        stale = stale + 1 if train_loss > best - classifier.tol else 0
        best = min(best, train_loss)
        if stale >= EPOCHS_WITHOUT_IMPROVEMENT:
            break
    return trace


def positive_probability(pipeline: Pipeline, features: np.ndarray) -> np.ndarray:
    """Return P(delayed) from an already transformed and scaled feature matrix."""
    classifier = pipeline.named_steps[CLASSIFIER_STEP]
    positive_column = list(classifier.classes_).index(1)
    return classifier.predict_proba(features)[:, positive_column]
