"""Registry: champion lookup and the promotion gate with 10 and with 10,000 logged runs.

Each temporary LOOPLINE_HOME contains an MLflow SQLite store and feature and label
partitions of a few real days. A model trained on them is registered as ``@champion``.
Then:

* champion lookup: ``loopline.registry.champion_version`` (one
  ``MlflowClient.get_model_version_by_alias`` call), ``--lookups`` calls per store and round;
* the gate: ``loopline.registry.register_and_gate`` for a challenger already logged in a
  run: it registers a new version, scores the champion on the holdout partitions, writes
  the evidence tags and moves an alias. One call per store and round.

Two stores are prepared alike: one with 10 runs in the training experiment, one filled to
``--runs`` runs. The first 10 runs of each are logged through the client API, with
``create_run`` and one ``log_batch`` each. The rest are inserted in bulk with the same
params, metrics and tags (see ``bulk_fill_runs``). The two stores are then measured in
alternating rounds, so that other load on the machine falls on both alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import common

# Enough labelled days for training.min_days (14) with the configured validation and holdout days.
DAYS = [dt.date(2013, 1, day) for day in range(2, 18)]
FEW_RUNS = 10


def prepare(home: Path):
    """Write partitions, train champion and challenger; return (config, client, summary of the challenger)."""
    import mlflow
    import sklearn
    from sklearn.exceptions import ConvergenceWarning

    from loopline import metrics, registry, sources, store, tracking, training
    from loopline.config import load_config
    from loopline.modeling import SKOPS_TRUSTED_TYPES, build_pipeline, model_signature

    config = load_config()
    feature_set = config.feature_set
    dataset = store.feature_dataset(feature_set.name, feature_set.version)
    for day in DAYS:
        frame = sources.flight_feed(day)
        features = frame[[feature_set.entity_key, feature_set.event_time, *feature_set.features]].copy()
        features.insert(2, "flight_date", day.isoformat())
        store.write_partition(features, dataset, day)
        store.write_partition(sources.label_feed(day), store.LABELS, day)

    client = tracking.configure()
    window = training.plan_window(config, DAYS[-1] + dt.timedelta(days=1), start=DAYS[0], available=DAYS)
    train_rows = training.training_set(config, window.train_days)
    holdout = training.training_set(config, window.holdout_days)
    experiment = tracking.experiment_id(tracking.TRAINING_EXPERIMENT)
    requirements = [f"scikit-learn=={sklearn.__version__}", f"mlflow=={mlflow.__version__}"]

    summaries = []
    for alpha in (1e-3, 1e-2):
        pipeline = build_pipeline(config)
        # Two regularisation strengths give two different models, champion and challenger.
        if "classifier__alpha" in pipeline.get_params():
            pipeline.set_params(classifier__alpha=alpha)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            pipeline.fit(train_rows[feature_set.features], train_rows[feature_set.label])
        quality = metrics.quality_summary(holdout[feature_set.label], pipeline.predict_proba(holdout[feature_set.features])[:, 1])
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_param("holdout_start", window.holdout_start.isoformat())
            info = mlflow.sklearn.log_model(
                pipeline, name="model", signature=model_signature(config), skops_trusted_types=SKOPS_TRUSTED_TYPES,
                pip_requirements=requirements,
            )
        summaries.append(
            {"window": window.to_dict(), "model_uri": info.model_uri, "run_id": run.info.run_id,
             "holdout_log_loss": quality["log_loss"], "holdout_roc_auc": quality["roc_auc"]}
        )
    registry.register_and_gate(config, summaries[0], reason="benchmark champion")
    return config, client, experiment, summaries[1]


def fill_runs(client, experiment: str, target: int) -> float:
    """Log runs through the client API until the experiment has ``target``; return the seconds."""
    from mlflow.entities import Metric, Param, RunTag

    existing = len(client.search_runs([experiment], max_results=50_000))
    started = time.perf_counter()
    timestamp = int(time.time() * 1000)
    for number in range(existing, target):
        run = client.create_run(experiment, run_name=f"bench-filler-{number}")
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(key, value, timestamp, 0) for key, value in filler_metrics(number).items()],
            params=[Param(key, value) for key, value in FILLER_PARAMS.items()],
            tags=[RunTag("loopline.benchmark", "filler")],
        )
        client.set_terminated(run.info.run_id)
    return time.perf_counter() - started


FILLER_PARAMS = {"window_start": "2013-01-02", "holdout_start": "2013-01-09", "model_family": "sgd"}


def filler_metrics(number: int) -> dict[str, float]:
    return {"holdout_log_loss": 0.5 + number * 1e-6, "holdout_roc_auc": 0.7}


def bulk_fill_runs(client, experiment: str, target: int) -> float:
    """Insert finished runs until the experiment has ``target``, in one transaction; return the seconds.

    The API path takes about 20 ms a run on SQLite (three transactions), so 10,000 runs
    would take minutes. This writes the same rows (run, params, metrics, latest metrics,
    tags) through MLflow's own SQLAlchemy models, and the API then returns them like any other run.
    """
    import uuid

    import sqlalchemy as sa
    from sqlalchemy.orm import Session
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

    from loopline import settings

    existing = len(client.search_runs([experiment], max_results=50_000))
    artifact_root = client.get_experiment(experiment).artifact_location
    started = time.perf_counter()
    now = int(time.time() * 1000)
    rows = []
    for number in range(existing, target):
        run_id = uuid.uuid4().hex
        rows.append(
            SqlRun(
                run_uuid=run_id, name=f"bench-filler-{number}", source_type="LOCAL", source_name="bench", entry_point_name="",
                user_id="bench", status="FINISHED", start_time=now, end_time=now, source_version="", lifecycle_stage="active",
                artifact_uri=f"{artifact_root}/{run_id}/artifacts", experiment_id=int(experiment),
            )
        )
        rows.extend(SqlParam(key=key, value=value, run_uuid=run_id) for key, value in FILLER_PARAMS.items())
        for key, value in filler_metrics(number).items():
            rows.append(SqlMetric(key=key, value=value, timestamp=now, step=0, is_nan=False, run_uuid=run_id))
            rows.append(SqlLatestMetric(key=key, value=value, timestamp=now, step=0, is_nan=False, run_uuid=run_id))
        rows.append(SqlTag(key="loopline.benchmark", value="filler", run_uuid=run_id))
    engine = sa.create_engine(settings.mlflow_tracking_uri())
    with Session(engine) as session, session.begin():
        session.add_all(rows)
    engine.dispose()
    return time.perf_counter() - started


def use_home(home: Path) -> None:
    """Point Loopline (and so MLflow, through ``tracking.configure``) at one state folder."""
    os.environ["LOOPLINE_HOME"] = str(home)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs in the large case (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds over the two stores (default: %(default)s)")
    parser.add_argument("--lookups", type=int, default=30, help="timed champion lookups per store and round (default: %(default)s)")
    parser.add_argument("--profile-dir", type=Path, default=common.REPO_ROOT / "docs" / "profiles")
    parser.add_argument("--results", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()

    from loopline import registry

    for name in ("LOOPLINE_MLFLOW_TRACKING_URI", "LOOPLINE_MONITORING_DB_URL"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="loopline-bench-registry-") as folder:
        homes = {"few": Path(folder) / "few", "many": Path(folder) / "many"}
        stores = {}
        fill_seconds = None
        for case, home in homes.items():
            use_home(home)
            config, client, experiment, summary = prepare(home)
            fill_runs(client, experiment, FEW_RUNS)
            if case == "many":
                fill_seconds = bulk_fill_runs(client, experiment, args.runs)
            run_count = len(client.search_runs([experiment], max_results=50_000))
            stores[case] = {"config": config, "client": client, "summary": summary, "runs": run_count}

        # The two stores take turns, round by round, so that load from other work on the
        # machine falls on both alike. Each gate call adds one version to its store, so both
        # keep the same number of versions.
        samples = {case: {"lookup": [], "gate": []} for case in homes}
        for round_number in range(args.rounds):
            order = ["few", "many"] if round_number % 2 == 0 else ["many", "few"]
            for case in order:
                use_home(homes[case])
                store = stores[case]
                name = store["config"].model_name
                for _ in range(args.lookups):
                    started = time.perf_counter()
                    registry.champion_version(store["client"], name)
                    samples[case]["lookup"].append(time.perf_counter() - started)
                started = time.perf_counter()
                registry.register_and_gate(store["config"], store["summary"], reason="benchmark challenger")
                samples[case]["gate"].append(time.perf_counter() - started)

        timings = {case: {call: summarize(values) for call, values in calls.items()} for case, calls in samples.items()}
        lookup_ratio = timings["many"]["lookup"]["median_s"] / timings["few"]["lookup"]["median_s"]
        gate_ratio = timings["many"]["gate"]["median_s"] / timings["few"]["gate"]["median_s"]
        goal_met = lookup_ratio <= 1.2 and gate_ratio <= 1.2
        profile = None
        if not goal_met:
            use_home(homes["many"])
            store = stores["many"]
            slow = (lambda: registry.register_and_gate(store["config"], store["summary"], reason="benchmark profile")) if gate_ratio > 1.2 else (
                lambda: [registry.champion_version(store["client"], store["config"].model_name) for _ in range(args.lookups * 10)]
            )
            path = common.profile_call(slow, args.profile_dir / "registry-many-runs.svg")
            profile = str(path.relative_to(common.REPO_ROOT)) if path else None

    common.write_result(
        "registry",
        {
            "few_runs": stores["few"]["runs"],
            "many_runs": stores["many"]["runs"],
            "fill_s": fill_seconds,
            "few": timings["few"],
            "many": timings["many"],
            "lookup_ratio": lookup_ratio,
            "gate_ratio": gate_ratio,
            "goal_met": goal_met,
            "profile": profile,
        },
        args.results,
    )
    return 0


def summarize(durations: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(durations),
        "min_s": min(durations),
        "max_s": max(durations),
        "repeats": len(durations),
    }


if __name__ == "__main__":
    raise SystemExit(main())
