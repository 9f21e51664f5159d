"""The training pipeline: window planning, the training set, fitting and logging to MLflow.

A training window ``[start, end)`` is a range of flight dates. Only days whose features are
in the store and whose labels had arrived by the cutoff take part, and the last
``holdout_days`` of them are the holdout, so the split follows time.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline import calibration, candidates, evaluation, metrics, modeling, store, tracking
from loopline.config import LooplineConfig
from loopline.features import missing_rates
from loopline.pipeline import LABEL_ARRIVED_AT, VALIDATION_DATASET
from loopline.monitoring import drift

logger = logging.getLogger(__name__)

# Name of the reference-profile artifact logged with every training run.
REFERENCE_PROFILE_ARTIFACT = "reference_profile.json"


class TrainingSkipped(Exception):
    """Training is not due or not possible yet; the run ends without a model version."""


class TrainingDataError(ValueError):
    """The training window's data cannot give a sound model (empty, too small, one class)."""


@dataclass(frozen=True)
class TrainingWindow:
    """Flight dates ``[start, end)``, split in time order into training, validation and holdout.

    Candidates are fitted on the training days and compared on the validation days. The
    registry gate compares the challenger with the champion on the holdout days.
    """

    start: dt.date
    end: dt.date
    validation_start: dt.date
    holdout_start: dt.date
    days: tuple[dt.date, ...]

    @property
    def train_days(self) -> list[dt.date]:
        return [day for day in self.days if day < self.validation_start]

    @property
    def validation_days(self) -> list[dt.date]:
        return [day for day in self.days if self.validation_start <= day < self.holdout_start]

    @property
    def holdout_days(self) -> list[dt.date]:
        return [day for day in self.days if day >= self.holdout_start]

    @property
    def label(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "validation_start": self.validation_start.isoformat(),
            "holdout_start": self.holdout_start.isoformat(),
            "days": [day.isoformat() for day in self.days],
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TrainingWindow:
        return cls(
            start=dt.date.fromisoformat(payload["start"]),
            end=dt.date.fromisoformat(payload["end"]),
            validation_start=dt.date.fromisoformat(payload["validation_start"]),
            holdout_start=dt.date.fromisoformat(payload["holdout_start"]),
            days=tuple(dt.date.fromisoformat(day) for day in payload["days"]),
        )


def labelled_days(config: LooplineConfig) -> list[dt.date]:
    """Return the dates that have both a feature partition and a label partition."""
    feature_set = config.feature_set
    with_features = set(store.available_days(store.feature_dataset(feature_set.name, feature_set.version)))
    with_labels = set(store.available_days(store.LABELS))
    return sorted(with_features & with_labels)


def plan_window(
    config: LooplineConfig,
    end: dt.date,
    start: dt.date | None = None,
    available: list[dt.date] | None = None,
) -> TrainingWindow:
    """Return the training window that ends before ``end``.

    Without ``start`` the window spans the last ``window_days`` days. Raises
    ``TrainingSkipped`` when fewer than ``min_days`` labelled days fall inside.
    """
    training = config.training
    start = start or end - dt.timedelta(days=training.window_days)
    if start >= end:
        raise TrainingDataError(f"training window start {start} is not before its end {end}; swap or fix them")

    available = labelled_days(config) if available is None else available
    days = tuple(day for day in available if start <= day < end)
    if len(days) < training.min_days:
        raise TrainingSkipped(
            f"window {start}..{end} has {len(days)} labelled day(s), fewer than training.min_days="
            f"{training.min_days}; run the data pipeline for more days first"
        )
    holdout_start = days[-training.holdout_days]
    validation_start = days[-(training.holdout_days + training.validation_days)]
    return TrainingWindow(start=start, end=end, validation_start=validation_start, holdout_start=holdout_start, days=days)


def label_cutoff(config: LooplineConfig, end: dt.date) -> pd.Timestamp:
    """Return the time by which the labels of a window ending before ``end`` are due.

    Labels of the window's last day land with the run ``label_delay_days`` after it, at
    the end of that run's data interval. A label that landed later (a backfill of labels,
    a correction) is left out, so retraining the same window gives the same training set.
    """
    from loopline.validation import interval_bounds

    due_day = end + dt.timedelta(days=config.source.label_delay_days)
    return interval_bounds(due_day, config.data_schema)[0]


def training_set(config: LooplineConfig, days: list[dt.date], cutoff: pd.Timestamp | None = None) -> pd.DataFrame:
    """Join the feature partitions of ``days`` with the labels that had arrived by ``cutoff``.

    Without ``cutoff`` every label in the store is used.
    """
    feature_set = config.feature_set
    features = store.read_days(store.feature_dataset(feature_set.name, feature_set.version), days)
    labels = _labels_arrived_by(config, [day for day in days if store.partition_path(store.LABELS, day).is_file()], cutoff)
    joined = features.merge(labels, on=feature_set.entity_key, how="inner", validate="one_to_one")

    unlabelled = len(features) - len(joined)
    if unlabelled:
        # A flight without an outcome record yet has no label. Such rows are counted and
        # left out of training, never given a guessed label.
        logger.warning("%d of %d feature rows have no label and are left out of training", unlabelled, len(features))
    return joined.sort_values([feature_set.event_time, feature_set.entity_key], kind="stable").reset_index(drop=True)


def training_set_for_window(
    config: LooplineConfig, start: dt.datetime, end: dt.datetime, cutoff: dt.datetime | None = None
) -> pd.DataFrame:
    """Return the point-in-time training set of the event times ``[start, end)``.

    Each row contains the features stored for its event, which the sources deliver as known
    before the event. A label is joined only if it had arrived by ``cutoff`` (default:
    ``end``), and no row with an event time outside the window is kept. All times are
    timezone-aware; a naive one is read as UTC.
    """
    feature_set = config.feature_set
    start, end = _utc(start), _utc(end)
    cutoff = _utc(cutoff) if cutoff is not None else end
    if start >= end:
        raise TrainingDataError(f"training window start {start} is not before its end {end}; swap or fix them")

    # A partition's date is a calendar day in the partition time zone, so the partitions
    # of the day before start and of end's day may hold events inside the window.
    dataset = store.feature_dataset(feature_set.name, feature_set.version)
    first, last = start.date() - dt.timedelta(days=1), end.date() + dt.timedelta(days=1)
    days = [day for day in store.available_days(dataset) if first <= day <= last]
    if not days:
        raise TrainingDataError(f"no feature partition contains events in [{start}, {end}); run the data pipeline for those days first")
    frame = training_set(config, days, cutoff)
    times = pd.to_datetime(frame[feature_set.event_time], utc=True)
    return frame[(times >= start) & (times < end)].reset_index(drop=True)


def _utc(moment: dt.datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _labels_arrived_by(config: LooplineConfig, days: list[dt.date], cutoff: pd.Timestamp | None) -> pd.DataFrame:
    """Read the label partitions of ``days`` and keep the labels that arrived by ``cutoff``."""
    feature_set = config.feature_set
    columns = [feature_set.entity_key, feature_set.label]
    if not days:
        return pd.DataFrame({name: pd.Series(dtype="str" if name == feature_set.entity_key else "int64") for name in columns})
    labels = store.read_days(store.LABELS, days)
    if cutoff is None:
        return labels[columns]
    if LABEL_ARRIVED_AT not in labels.columns:
        # NOTE: label partitions written before arrival times were recorded are all
        # used; rerun the data pipeline over those days to record the times.
        logger.warning("label partitions of %s..%s have no %s column; their labels are all used", days[0], days[-1], LABEL_ARRIVED_AT)
        return labels[columns]
    arrived = pd.to_datetime(labels[LABEL_ARRIVED_AT], utc=True) <= cutoff
    late = int((~arrived).sum())
    if late:
        logger.info("%d label(s) arrived after the cutoff %s and are left out", late, cutoff)
    return labels.loc[arrived, columns]


def check_trainable(frame: pd.DataFrame, config: LooplineConfig, part: str, window_label: str) -> dict[str, int]:
    """Raise ``TrainingDataError`` unless ``frame`` has enough rows of both classes."""
    label = config.feature_set.label
    positives = int((frame[label] == 1).sum()) if len(frame) else 0
    negatives = int((frame[label] == 0).sum()) if len(frame) else 0
    counts = {"rows": len(frame), "positives": positives, "negatives": negatives}
    if len(frame) == 0:
        raise TrainingDataError(f"{part} set of window {window_label} is empty (0 rows); no model is trained")
    if positives == 0 or negatives == 0:
        raise TrainingDataError(
            f"{part} set of window {window_label} has a single class "
            f"(positives={positives}, negatives={negatives}); need both 0 and 1 to train"
        )
    if part == "training" and len(frame) < config.training.min_rows:
        raise TrainingDataError(
            f"training set of window {window_label} has {len(frame)} rows, fewer than "
            f"training.min_rows={config.training.min_rows}; widen the window"
        )
    return counts


# MLflow dataset context of each part of the window, in time order. The holdout is the
# test window. It is logged with the context "test", and its metrics keep the "holdout_"
# prefix because the registry gate and monitoring read them by those names.
DATASET_CONTEXTS = {"training": "training", "validation": "validation", "holdout": "test"}


def split_window(frame: pd.DataFrame, window: TrainingWindow) -> dict[str, pd.DataFrame]:
    """Split the window's rows by flight date into training, validation and holdout rows."""
    flight_dates = _flight_dates(frame)
    return {
        "training": frame[flight_dates < window.validation_start],
        "validation": frame[(flight_dates >= window.validation_start) & (flight_dates < window.holdout_start)],
        "holdout": frame[flight_dates >= window.holdout_start],
    }


def train(config: LooplineConfig, window: TrainingWindow, tags: dict[str, str]) -> dict[str, Any]:
    """Fit the model on the window, log the run to MLflow and return a small summary.

    Raises ``TrainingDataError`` before any model is fitted when a part of the window is
    empty, has a single class or, for the training part, too few rows. The run then ends
    as FAILED with the row and class counts of every part, and no model is logged.
    """
    import mlflow

    feature_set = config.feature_set
    cutoff = label_cutoff(config, window.end)
    parts = split_window(training_set(config, list(window.days), cutoff), window)
    train_frame, validation_frame, holdout_frame = parts["training"], parts["validation"], parts["holdout"]

    run_tags = {
        **tags,
        "loopline.window": window.label,
        "loopline.holdout_start": window.holdout_start.isoformat(),
        "loopline.feature_set": f"{feature_set.name}/{feature_set.version}",
        "loopline.validation": validation_status(list(window.days)),
        "loopline.git_commit": git_commit(),
    }
    with tracking.task_run(tracking.TRAINING_EXPERIMENT, f"train {window.label}", run_tags) as run:
        mlflow.log_params(
            {
                "window_start": window.start.isoformat(),
                "window_end": window.end.isoformat(),
                "validation_start": window.validation_start.isoformat(),
                "holdout_start": window.holdout_start.isoformat(),
                "window_days": len(window.days),
                "feature_set": f"{feature_set.name}/{feature_set.version}",
                "numerical_features": ",".join(feature_set.numerical),
                "categorical_features": ",".join(feature_set.categorical),
                "one_hot_features": ",".join(feature_set.one_hot),
                "seed": config.training.seed,
                **{f"sgd_{key}": value for key, value in config.training.sgd.model_dump().items()},
            }
        )
        _check_and_log_counts(config, window, parts)
        _log_datasets(config, window, parts)

        x_train = train_frame[feature_set.features]
        x_validation = validation_frame[feature_set.features]
        x_holdout = holdout_frame[feature_set.features]
        y_validation = validation_frame[feature_set.label]
        selection = candidates.select(config, x_train, train_frame[feature_set.label], x_validation, y_validation)
        calibrated = calibration.calibrate(selection.pipeline, x_validation, y_validation)
        _log_selection(selection, calibrated)
        pipeline = calibrated.pipeline

        train_probability = pipeline.predict_proba(x_train)[:, 1]
        holdout_probability = pipeline.predict_proba(x_holdout)[:, 1]
        holdout_quality = metrics.quality_summary(holdout_frame[feature_set.label], holdout_probability)
        summary_metrics = {
            "epochs": len(selection.descent),
            "validation_log_loss": min(result["validation_log_loss"] for result in selection.results),
            "train_log_loss": metrics.log_loss(train_frame[feature_set.label], train_probability),
            **{f"holdout_{name}": value for name, value in holdout_quality.items() if name != "rows"},
        }
        mlflow.log_metrics({key: value for key, value in summary_metrics.items() if value is not None})

        evaluation.log_plots(
            holdout_frame[feature_set.label].to_numpy(),
            holdout_probability,
            config.serving.decision_threshold,
            feature_set.features,
            evaluation.permutation_importance(pipeline, x_validation, y_validation, config.training.seed),
            f"{window.holdout_days[0]}..{window.holdout_days[-1]}",
        )

        profile = reference_profile(config, train_frame)
        # Prediction drift compares each day's probabilities with the model's own on the
        # holdout days, which it never saw in fitting, selection or calibration.
        profile["predictions"] = drift.prediction_reference(holdout_probability, config.monitoring.psi_bins)
        mlflow.log_dict(profile, REFERENCE_PROFILE_ARTIFACT)
        fitted = pipeline.named_steps[modeling.FEATURES_STEP]
        mlflow.log_dict(
            {
                "means": dict(zip(feature_set.numerical, fitted.means_.tolist(), strict=True)),
                "all_missing_features": fitted.all_missing_features_,
                "frequencies": dict(zip(feature_set.categorical, fitted.frequencies_, strict=True)),
                "one_hot_categories": fitted.one_hot_categories_,
                "output_columns": fitted.get_feature_names_out().tolist(),
            },
            "feature_state.json",
        )

        model_info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=modeling.model_signature(config),
            input_example=x_train.head(3),
            skops_trusted_types=modeling.SKOPS_TRUSTED_TYPES,
            pip_requirements=modeling.pip_requirements(),
        )
        run_id = run.info.run_id

    logger.info(
        "trained window %s: holdout log loss %.4f, ROC AUC %s (run %s)",
        window.label,
        summary_metrics["holdout_log_loss"],
        summary_metrics["holdout_roc_auc"],
        run_id,
    )
    return {
        "run_id": run_id,
        "model_uri": model_info.model_uri,
        "window": window.to_dict(),
        "holdout_log_loss": summary_metrics["holdout_log_loss"],
        "holdout_roc_auc": summary_metrics["holdout_roc_auc"],
    }


def reference_profile(config: LooplineConfig, train_frame: pd.DataFrame) -> dict[str, Any]:
    """Return the reference profile of the training rows that monitoring compares days with.

    Besides the binned distributions and category counts of ``drift.reference_profile``, it
    stores ``missing_rates``: each raw feature column's share of missing values in the
    training rows, counted as the feature processor counts them.
    """
    feature_set = config.feature_set
    profile = drift.reference_profile(
        train_frame, list(feature_set.numerical), config.monitoring.psi_bins, list(feature_set.categorical)
    )
    profile["missing_rates"] = missing_rates(train_frame, feature_set.numerical, feature_set.categorical)
    return profile


def _check_and_log_counts(config: LooplineConfig, window: TrainingWindow, parts: dict[str, pd.DataFrame]) -> None:
    """Log every part's row and class counts, then check each part with ``check_trainable``.

    The counts are logged first, so a failed run still shows which part broke the rule.
    """
    import mlflow

    label = config.feature_set.label
    counts = {}
    for part, frame in parts.items():
        prefix = "train" if part == "training" else part
        positives = int((frame[label] == 1).sum())
        counts.update(
            {f"{prefix}_rows": len(frame), f"{prefix}_positives": positives, f"{prefix}_negatives": len(frame) - positives}
        )
    mlflow.log_metrics(counts)

    try:
        for part, frame in parts.items():
            check_trainable(frame, config, part, window.label)
    except TrainingDataError as error:
        mlflow.set_tag("loopline.training_error", str(error)[:500])
        raise


def _log_selection(selection: candidates.Selection, calibrated: calibration.Calibration) -> None:
    """Log the chosen candidate, every candidate's score, the SGD descent and the calibration."""
    import mlflow

    mlflow.log_params({"model": selection.best.label, "calibration": calibrated.method})
    mlflow.set_tags({"loopline.model_family": selection.best.family, "loopline.calibration": calibrated.method})
    mlflow.log_dict(
        {
            "candidates": selection.results,
            "chosen": selection.best.label,
            "calibration": {"method": calibrated.method, "validation_log_loss": calibrated.log_losses, "note": calibrated.note},
        },
        "candidates.json",
    )
    for index, result in enumerate(selection.results):
        mlflow.log_metric("candidate_validation_log_loss", result["validation_log_loss"], step=index)
    # The descent of the best gradient-descent setting, whether or not it was chosen.
    for point in selection.descent:
        mlflow.log_metrics(
            {"epoch_train_log_loss": point["train_log_loss"], "epoch_validation_log_loss": point["holdout_log_loss"]},
            step=point["epoch"],
        )
    # The uncalibrated value is the chosen candidate's own validation log loss, and each
    # method's value is cross-fitted.
    mlflow.log_metrics({f"validation_log_loss_{name}": value for name, value in calibrated.log_losses.items()})


def validation_status(days: list[dt.date]) -> str:
    """Return how many of ``days`` have a passed validation result on file."""
    passed = 0
    for day in days:
        path = store.partition_dir(VALIDATION_DATASET, day) / "result.json"
        if path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("success"):
            passed += 1
    return f"passed {passed}/{len(days)} partitions"


def git_commit() -> str:
    """Return the commit of the checked-out code, or "unknown" outside a git checkout."""
    import subprocess

    from loopline.settings import REPO_ROOT

    try:
        result = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def _flight_dates(frame: pd.DataFrame) -> np.ndarray:
    return pd.to_datetime(frame["flight_date"]).dt.date.to_numpy()


def _log_datasets(config: LooplineConfig, window: TrainingWindow, parts: dict[str, pd.DataFrame]) -> None:
    """Log each part of the window as an MLflow dataset input; MLflow computes its digest."""
    import mlflow

    feature_set = config.feature_set
    source = str(store.partition_dir(store.feature_dataset(feature_set.name, feature_set.version), window.start).parent)
    part_days = {"training": window.train_days, "validation": window.validation_days, "holdout": window.holdout_days}
    for part, frame in parts.items():
        days = part_days[part]
        dataset = mlflow.data.from_pandas(
            frame[feature_set.features + [feature_set.label]],
            source=source,
            name=f"{feature_set.name}-{feature_set.version} {days[0]}..{days[-1]}",
            targets=feature_set.label,
        )
        mlflow.log_input(dataset, context=DATASET_CONTEXTS[part])


def load_reference_profile(run_id: str) -> dict:
    """Download the reference profile logged by training run ``run_id``."""
    import mlflow

    tracking.configure()
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE_PROFILE_ARTIFACT, dst_path=folder)
        return json.loads(Path(path).read_text(encoding="utf-8"))


def decide_window(
    config: LooplineConfig,
    end: dt.date,
    start: dt.date | None = None,
    force: bool = False,
    champion_window_end: dt.date | None = None,
) -> TrainingWindow:
    """Return the window to train on now, or raise ``TrainingSkipped`` with the reason.

    Without ``force``, training waits until the champion's window ended at least
    ``retrain_every_days`` before ``end``, so a run of daily asset events does not retrain
    every day.
    """
    window = plan_window(config, end, start)
    if champion_window_end is not None and window.end <= champion_window_end:
        # The champion already learned from these days; a challenger trained on them could
        # only be compared on a holdout the champion has seen.
        raise TrainingSkipped(
            f"the champion's training window already ends at {champion_window_end}, not before this "
            f"window's end {window.end}; nothing newer to learn from"
        )
    every = config.training.retrain_every_days
    if not force and champion_window_end is not None and window.end < champion_window_end + dt.timedelta(days=every):
        due = champion_window_end + dt.timedelta(days=every)
        raise TrainingSkipped(
            f"the champion's training window ends before {champion_window_end} and this one before "
            f"{window.end}; the next scheduled retrain is due for a window ending on or after {due} "
            f"(training.retrain_every_days={every}); trigger with force=true to train now"
        )
    return window
