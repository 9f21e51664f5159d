"""The retraining experiment: replay 2013 and compare when to retrain.

From a start day to the end of 2013, each strategy serves one model per day and is scored
on that day's flights with the labels that arrive later. A model used on day D was trained
on the ``window_days`` days before D: the labels of a day are usable from the next day.
The strategies:

* ``static``: one model, trained before the start day and never replaced;
* ``monthly``: retrained on the first day of each month;
* ``weekly``: retrained every Monday;
* ``policy``: retrained when a rule of Loopline's monitoring policy (the ``monitoring``
  section of the config) requests it, evaluated each day on what was known that morning.

The models are the product's pipeline (feature state, scaling and the configured gradient
boosting candidate). The policy's metrics come from the product's drift and metrics
modules. A model trained on a given day is the same for every strategy, so it is fitted
once and shared.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline import candidates, metrics, sources
from loopline.config import LooplineConfig
from loopline.monitoring import checks, drift, retrain_gain

logger = logging.getLogger(__name__)

STRATEGIES = ("static", "monthly", "weekly", "policy")
DEFAULT_START = dt.date(2013, 4, 1)
DEFAULT_END = dt.date(2013, 12, 31)
DEFAULT_WINDOW_DAYS = 90
# The shadow model of the policy's retrain-gain estimate is compared with the champion on
# this many most recent labelled days, which its own training window leaves out.
GAIN_DAYS = retrain_gain.GAIN_DAYS
# Days scored per prediction call: a shadow model needs only the week after its window,
# a served model the weeks until the next retrain.
PREDICTION_BATCH_DAYS = 14


@dataclasses.dataclass
class StrategyResult:
    """Daily log loss of one strategy and the days it retrained on."""

    name: str
    daily_log_loss: dict[dt.date, float]
    retrain_days: list[dt.date]
    decisions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    shadow_fits: int = 0

    @property
    def mean_log_loss(self) -> float:
        return float(np.mean(list(self.daily_log_loss.values())))

    @property
    def retrains(self) -> int:
        """Retrains after the first model, which every strategy trains on the start day."""
        return len(self.retrain_days) - 1


class Replay:
    """The labelled flights of 2013 and the models fitted on them, cached by training day."""

    def __init__(
        self,
        config: LooplineConfig,
        window_days: int = DEFAULT_WINDOW_DAYS,
        first: dt.date = sources.FIRST_DAY,
        last: dt.date = sources.LAST_DAY,
    ):
        self.config = config
        self.window_days = window_days
        self.features = config.feature_set.features
        self.label = config.feature_set.label
        self.candidate = _boosting_candidate(config)
        started = time.perf_counter()
        frames = []
        day = first
        while day <= last:
            labels = sources.label_feed(day)[["flight_id", "delayed"]].rename(columns={"delayed": self.label})
            frames.append(sources.flight_feed(day).merge(labels, on="flight_id", validate="one_to_one").assign(flight_date=day))
            day += dt.timedelta(days=1)
        frame = pd.concat(frames, ignore_index=True)
        self.days = {day: rows for day, rows in frame.groupby("flight_date", sort=True)}
        logger.info("loaded %d labelled flights of %d days in %.1f s", len(frame), len(self.days), time.perf_counter() - started)
        self._models: dict[tuple[dt.date, dt.date], Any] = {}
        self._predictions: dict[tuple[dt.date, dt.date, dt.date], np.ndarray] = {}
        self.fits = 0

    def rows(self, first: dt.date, last: dt.date) -> pd.DataFrame:
        """Return the flights of ``first`` to ``last``, both included."""
        parts = [rows for day, rows in self.days.items() if first <= day <= last]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def model(self, first: dt.date, last: dt.date):
        """Return the pipeline fitted on the days ``first`` to ``last``, fitting it once."""
        key = (first, last)
        if key not in self._models:
            rows = self.rows(first, last)
            pipeline = candidates.build(self.config, self.candidate)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipeline.fit(rows[self.features], rows[self.label])
            self._models[key] = pipeline
            self.fits += 1
        return self._models[key]

    def model_for(self, trained_on: dt.date):
        """Return the model a retrain on the morning of ``trained_on`` produces."""
        return self.model(trained_on - dt.timedelta(days=self.window_days), trained_on - dt.timedelta(days=1))

    def probabilities(self, window: tuple[dt.date, dt.date], day: dt.date) -> np.ndarray:
        """Return the predictions of the model fitted on ``window`` for the flights of ``day``.

        A request scores ``PREDICTION_BATCH_DAYS`` days from ``day`` on in one call, which is
        much faster than one call per day.
        """
        key = (*window, day)
        if key not in self._predictions:
            batch = [other for other in self.days if day <= other < day + dt.timedelta(days=PREDICTION_BATCH_DAYS)]
            rows = pd.concat([self.days[other] for other in batch], ignore_index=True)
            scores = self.model(*window).predict_proba(rows[self.features])[:, 1]
            offset = 0
            for other in batch:
                size = len(self.days[other])
                self._predictions.setdefault((*window, other), scores[offset : offset + size])
                offset += size
        return self._predictions[key]

    def day_log_loss(self, window: tuple[dt.date, dt.date], day: dt.date) -> float:
        return metrics.log_loss(self.days[day][self.label].to_numpy(), self.probabilities(window, day))

    def window_of(self, trained_on: dt.date) -> tuple[dt.date, dt.date]:
        return trained_on - dt.timedelta(days=self.window_days), trained_on - dt.timedelta(days=1)


def _boosting_candidate(config: LooplineConfig) -> candidates.Candidate:
    for candidate in candidates.candidates(config):
        if candidate.family == candidates.BOOSTING:
            return candidate
    raise ValueError("training.candidates has no hist_gradient_boosting setting; the experiment replays that model")


def _serve(replay: Replay, name: str, start: dt.date, end: dt.date, retrain_on) -> StrategyResult:
    """Serve each day with the newest model; ``retrain_on(day, window)`` decides each morning."""
    window = replay.window_of(start)
    result = StrategyResult(name, {}, [start])
    day = start
    while day <= end:
        if day > start:
            decision = retrain_on(day, window, result)
            if decision:
                window = replay.window_of(day)
                result.retrain_days.append(day)
        if day in replay.days:
            result.daily_log_loss[day] = replay.day_log_loss(window, day)
        day += dt.timedelta(days=1)
    return result


def scheduled(replay: Replay, name: str, start: dt.date, end: dt.date) -> StrategyResult:
    """Run the static, monthly or weekly schedule."""
    rules = {
        "static": lambda day: False,
        "monthly": lambda day: day.day == 1,
        "weekly": lambda day: day.isoweekday() == 1,
    }
    due = rules[name]
    return _serve(replay, name, start, end, lambda day, window, result: due(day))


class PolicyRun:
    """Loopline's monitoring policy, evaluated each morning on what was known then.

    The metrics: PSI of the numerical features against the champion's reference profile,
    log loss of the trailing quality window, and its ratio to a baseline. The baseline is
    the champion's log loss on the first full window after its training days. The
    monitoring DAG divides by the holdout log loss instead, which the replay's models do
    not have, because they are fitted on the whole window. The retrain gain comes from a shadow model.
    Rules with action ``retrain`` request a retrain, at most once per
    ``retrain_cooldown_days``.
    """

    def __init__(self, replay: Replay):
        self.replay = replay
        self.config = replay.config
        self.monitoring = self.config.monitoring
        self._profiles: dict[tuple[dt.date, dt.date], dict] = {}
        self._last_request: dt.date | None = None
        self._last_gain_check: dt.date | None = None
        self._baseline: dict[tuple[dt.date, dt.date], float] = {}

    def profile(self, window: tuple[dt.date, dt.date]) -> dict:
        if window not in self._profiles:
            rows = self.replay.rows(*window)
            feature_set = self.config.feature_set
            self._profiles[window] = drift.reference_profile(rows, feature_set.numerical, self.monitoring.psi_bins)
        return self._profiles[window]

    def metric_values(self, day: dt.date, window: tuple[dt.date, dt.date], result: StrategyResult) -> dict[tuple[str, str | None], float | None]:
        """Compute the policy's metrics on the morning of ``day`` for the serving model."""
        monitoring = self.monitoring
        values: dict[tuple[str, str | None], float | None] = {}
        yesterday = day - dt.timedelta(days=1)
        if yesterday in self.replay.days:
            for item in drift.feature_psi(self.profile(window), self.replay.days[yesterday], monitoring.psi_epsilon, monitoring.min_rows):
                values[("psi", item.feature)] = item.value

        quality_days = [yesterday - dt.timedelta(days=offset) for offset in range(monitoring.quality_window_days)]
        quality_days = [d for d in quality_days if d in self.replay.days and d > window[1]]
        if quality_days:
            labels = np.concatenate([self.replay.days[d][self.replay.label].to_numpy() for d in quality_days])
            probabilities = np.concatenate([self.replay.probabilities(window, d) for d in quality_days])
            if len(labels) >= monitoring.min_rows:
                live = metrics.log_loss(labels, probabilities)
                values[("log_loss", None)] = live
                baseline = self._baseline.get(window)
                if baseline is None and len(quality_days) >= monitoring.quality_window_days:
                    # The first full week after the training window sets the model's baseline.
                    self._baseline[window] = baseline = live
                if baseline:
                    values[("log_loss_ratio", None)] = live / baseline
        if any(rule.metric == "retrain_gain" for rule in monitoring.rules) and self._gain_due(day):
            self._last_gain_check = day
            values[("retrain_gain", None)] = self.retrain_gain(day, window, result)
        return values

    def retrain_gain(self, day: dt.date, window: tuple[dt.date, dt.date], result: StrategyResult) -> float | None:
        """Estimate the relative log-loss gain of retraining now.

        A shadow model is fitted on the window that ends ``GAIN_DAYS`` days before ``day``
        and compared with the champion on those most recent labelled days, which neither
        was trained on.
        """
        last = day - dt.timedelta(days=1)
        first = day - dt.timedelta(days=GAIN_DAYS)
        if first <= window[1]:
            return None
        shadow = (first - dt.timedelta(days=self.replay.window_days), first - dt.timedelta(days=1))
        recent = [d for d in self.replay.days if first <= d <= last]
        labels = np.concatenate([self.replay.days[d][self.replay.label].to_numpy() for d in recent])
        champion = metrics.log_loss(labels, np.concatenate([self.replay.probabilities(window, d) for d in recent]))
        challenger = metrics.log_loss(labels, np.concatenate([self.replay.probabilities(shadow, d) for d in recent]))
        result.shadow_fits += 1
        return (champion - challenger) / champion

    def _gain_due(self, day: dt.date) -> bool:
        every = dt.timedelta(days=self.monitoring.retrain_gain_every_days)
        checked = self._last_gain_check is None or day - self._last_gain_check >= every
        return checked and self._cooled_down(day)

    def _cooled_down(self, day: dt.date) -> bool:
        cooldown = dt.timedelta(days=self.monitoring.retrain_cooldown_days)
        return self._last_request is None or day - self._last_request >= cooldown

    def decide(self, day: dt.date, window: tuple[dt.date, dt.date], result: StrategyResult) -> bool:
        values = self.metric_values(day, window, result)
        fired = []
        for rule in self.monitoring.rules:
            features = rule.features or [None]
            for feature in features:
                value = values.get((rule.metric, feature))
                if checks.crosses(rule, value):
                    fired.append({"rule": rule.name, "action": rule.action, "feature": feature, "value": round(value, 4)})
        wants_retrain = any(item["action"] == "retrain" for item in fired)
        if wants_retrain and self._cooled_down(day):
            self._last_request = day
            result.decisions.append({"day": day.isoformat(), "fired": fired})
            return True
        return False


def run(
    config: LooplineConfig,
    out: Path,
    start: dt.date = DEFAULT_START,
    end: dt.date = DEFAULT_END,
    window_days: int = DEFAULT_WINDOW_DAYS,
    command: str = "loopline experiment",
) -> dict[str, Any]:
    """Run every strategy, write the table, the plot and the raw results to ``out``; return the summary."""
    if not sources.FIRST_DAY + dt.timedelta(days=window_days) <= start <= end <= sources.LAST_DAY:
        raise ValueError(
            f"start {start} and end {end} must lie in 2013 with {window_days} days of history before start; "
            f"the first possible start is {sources.FIRST_DAY + dt.timedelta(days=window_days)}"
        )
    started = time.perf_counter()
    replay = Replay(config, window_days, start - dt.timedelta(days=window_days), end)
    results = [scheduled(replay, name, start, end) for name in ("static", "monthly", "weekly")]
    policy = PolicyRun(replay)
    results.append(_serve(replay, "policy", start, end, policy.decide))
    elapsed = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    summary = _summary(config, results, start, end, window_days, replay, elapsed)
    summary["command"] = command
    (out / "experiment.json").write_text(json.dumps(summary, indent=2) + "\n")
    _write_daily_csv(results, out / "daily_log_loss.csv")
    _plot(results, out / "experiment.png")
    (out / "experiment.md").write_text(_markdown(summary))
    return summary


def _summary(config, results, start, end, window_days, replay, elapsed) -> dict[str, Any]:
    weekly = next(result for result in results if result.name == "weekly")
    monthly = next(result for result in results if result.name == "monthly")
    policy = next(result for result in results if result.name == "policy")
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "window_days": window_days,
        "model": replay.candidate.label,
        "policy_version": config.monitoring.policy_version,
        "cooldown_days": config.monitoring.retrain_cooldown_days,
        "days_scored": len(weekly.daily_log_loss),
        "seconds": round(elapsed, 1),
        "models_fitted": replay.fits,
        "strategies": [
            {
                "name": result.name,
                "mean_daily_log_loss": round(result.mean_log_loss, 5),
                "retrains": result.retrains,
                "shadow_fits": result.shadow_fits,
                "retrain_days": [day.isoformat() for day in result.retrain_days[1:]],
                "decisions": result.decisions,
            }
            for result in results
        ],
        "target": {
            "log_loss_at_most_weekly": bool(policy.mean_log_loss <= weekly.mean_log_loss),
            "retrains_at_most_monthly": bool(policy.retrains <= monthly.retrains),
            "met": bool(policy.mean_log_loss <= weekly.mean_log_loss and policy.retrains <= monthly.retrains),
        },
    }


def _write_daily_csv(results: list[StrategyResult], path: Path) -> None:
    frame = pd.DataFrame({result.name: pd.Series(result.daily_log_loss) for result in results})
    frame.index.name = "day"
    frame.round(5).to_csv(path)


def _plot(results: list[StrategyResult], path: Path) -> None:
    from loopline.evaluation import pyplot

    plt = pyplot()

    figure, axes = plt.subplots(figsize=(11, 5))
    for result in results:
        series = pd.Series(result.daily_log_loss).sort_index()
        smoothed = series.rolling(7, min_periods=1).mean()
        label = f"{result.name}: mean {result.mean_log_loss:.4f}, {result.retrains} retrains"
        (line,) = axes.plot(pd.to_datetime(smoothed.index), smoothed.to_numpy(), label=label, linewidth=1.4)
        if result.name != "static":
            retrained = [day for day in result.retrain_days[1:] if day in series.index]
            axes.plot(pd.to_datetime(retrained), smoothed.loc[retrained].to_numpy(), "|", color=line.get_color(), markersize=10)
    axes.set_title("Daily log loss (7-day mean) of each retraining strategy; ticks mark retrains")
    axes.set_ylabel("log loss")
    axes.legend(loc="upper left", fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Retraining experiment",
        "",
        f"Written by `{summary['command']}` in {summary['seconds']:.0f} s ({summary['models_fitted']} models fitted).",
        "",
        "| strategy | mean daily log loss | retrains | shadow fits |",
        "|---|---|---|---|",
    ]
    for item in summary["strategies"]:
        lines.append(f"| {item['name']} | {item['mean_daily_log_loss']:.4f} | {item['retrains']} | {item['shadow_fits']} |")
    target = summary["target"]
    verdict = "met" if target["met"] else "not met"
    lines += [
        "",
        f"Days {summary['start']} to {summary['end']} ({summary['days_scored']} days), training window "
        f"{summary['window_days']} days, model {summary['model']}, policy {summary['policy_version']}.",
        f"Target (the policy's log loss at most weekly's, with at most monthly's retrains): {verdict} "
        f"(log loss: {'yes' if target['log_loss_at_most_weekly'] else 'no'}, retrains: "
        f"{'yes' if target['retrains_at_most_monthly'] else 'no'}).",
        "",
    ]
    return "\n".join(lines)
