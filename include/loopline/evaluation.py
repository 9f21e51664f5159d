"""Evaluation plots of a trained model, logged to MLflow as PNG artifacts.

Each function returns a matplotlib figure; ``log_plots`` draws them all for one window and
logs them under ``plots/``. The Agg backend is used so that no display is needed.
"""

from __future__ import annotations

import logging

import numpy as np

from loopline import metrics

logger = logging.getLogger(__name__)


def pyplot():
    """Return matplotlib.pyplot on the Agg backend, which needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_figure(labels, probability, title: str):
    from sklearn.metrics import roc_curve

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(5, 5))
    false_positive, true_positive, _ = roc_curve(labels, probability)
    axes.plot(false_positive, true_positive, label=f"ROC AUC {metrics.roc_auc(labels, probability):.3f}")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    axes.legend(loc="lower right")
    return figure


def precision_recall_figure(labels, probability, title: str):
    from sklearn.metrics import precision_recall_curve

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(5, 5))
    precision, recall, _ = precision_recall_curve(labels, probability)
    axes.plot(recall, precision, label=f"PR AUC {metrics.pr_auc(labels, probability):.3f}")
    axes.axhline(float(np.mean(labels)), linestyle="--", color="grey", label="positive rate")
    axes.set(xlabel="recall", ylabel="precision", title=title)
    axes.legend(loc="upper right")
    return figure


def calibration_figure(labels, probability, title: str, bins: int = metrics.ECE_BINS):
    plt = pyplot()
    _, mean_probability, observed_rate = metrics.calibration_bins(labels, probability, bins)

    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axes.plot(mean_probability, observed_rate, marker="o", label="model")
    ece = metrics.expected_calibration_error(labels, probability, bins)
    axes.set(xlabel="mean predicted probability", ylabel="observed delay rate", title=f"{title} (ECE {ece:.3f})")
    axes.legend(loc="upper left")
    return figure


def confusion_figure(labels, probability, threshold: float, title: str):
    from sklearn.metrics import confusion_matrix

    plt = pyplot()
    decisions = (np.asarray(probability) >= threshold).astype("int64")
    matrix = confusion_matrix(labels, decisions, labels=[0, 1])
    figure, axes = plt.subplots(figsize=(4.5, 4))
    axes.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center")
    axes.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["on time", "delayed"],
        yticklabels=["on time", "delayed"],
        xlabel="predicted",
        ylabel="actual",
        title=f"{title} at threshold {threshold}",
    )
    return figure


# Rows and repeats of the permutation importance: enough for a stable ranking of 19
# features while costing a few seconds per training on 2 cores.
IMPORTANCE_ROWS = 3000
IMPORTANCE_REPEATS = 3


def permutation_importance(pipeline, x_validation, y_validation, seed: int) -> np.ndarray:
    """Return each feature's mean increase in validation log loss when its values are shuffled."""
    from sklearn.inspection import permutation_importance as sklearn_permutation_importance

    rows = x_validation.iloc[:IMPORTANCE_ROWS]
    labels = np.asarray(y_validation)[:IMPORTANCE_ROWS]
    result = sklearn_permutation_importance(
        pipeline, rows, labels, scoring="neg_log_loss", n_repeats=IMPORTANCE_REPEATS, random_state=seed
    )
    return result.importances_mean


def importance_figure(names: list[str], importance: np.ndarray, title: str):
    plt = pyplot()
    order = np.argsort(importance)
    figure, axes = plt.subplots(figsize=(6, 0.3 * len(names) + 1.5))
    axes.barh(np.asarray(names)[order], importance[order])
    axes.set(xlabel="increase in validation log loss when shuffled", title=title)
    figure.tight_layout()
    return figure


def log_plots(labels, probability, threshold: float, names: list[str], importance: np.ndarray, window: str) -> list[str]:
    """Draw the evaluation plots of one window and log them to the active MLflow run."""
    import mlflow

    plt = pyplot()
    figures = {
        "plots/roc.png": roc_figure(labels, probability, f"ROC, holdout {window}"),
        "plots/precision_recall.png": precision_recall_figure(labels, probability, f"Precision-recall, holdout {window}"),
        "plots/calibration.png": calibration_figure(labels, probability, f"Calibration, holdout {window}"),
        "plots/confusion_matrix.png": confusion_figure(labels, probability, threshold, "Confusion matrix"),
        "plots/feature_importance.png": importance_figure(names, importance, "Feature importance"),
    }
    for path, figure in figures.items():
        mlflow.log_figure(figure, path)
        plt.close(figure)
    return list(figures)
