"""Registry gate on real data: a worse challenger is rejected, a better one promoted,
rollback and promote move the alias with an audit trail, and training is reproducible."""

from __future__ import annotations

import datetime as dt

import pytest

DAYS = [dt.date(2013, 1, 1) + dt.timedelta(days=offset) for offset in range(19)]


@pytest.fixture(scope="module")
def registry_env(tmp_path_factory, state_home, land_days):
    """Feature and label partitions for 2013-01-01..19 and an empty MLflow store."""
    with state_home(tmp_path_factory.mktemp("registry")):
        from loopline.config import load_config

        config = load_config()
        land_days(config, DAYS)
        yield config


def _tiny(config):
    """The config with a four-day window: two training days, one validation and one holdout day."""
    training = config.training.model_copy(update={"min_days": 4, "holdout_days": 1, "validation_days": 1, "window_days": 4})
    return config.model_copy(update={"training": training})


def _train(config, start, end):
    from loopline import training

    window = training.plan_window(config, end=end, start=start)
    return training.train(config, window, {"test": "registry"})


def test_gate_promotes_better_rejects_worse(registry_env):
    from loopline import registry, tracking

    config = registry_env
    name = config.model_name
    client = tracking.configure()

    first = _train(_tiny(config), dt.date(2013, 1, 12), dt.date(2013, 1, 16))
    decision = registry.register_and_gate(_tiny(config), first, "first model", "manual")
    assert decision == {"version": "1", "promoted": True, "decision": "promoted: no champion yet"}

    # Eleven training days beat two on a holdout neither was trained on.
    better = _train(config, dt.date(2013, 1, 3), dt.date(2013, 1, 19))
    decision = registry.register_and_gate(config, better, "more data", "scheduled")
    assert decision["promoted"] is True, decision["decision"]
    assert str(registry.champion_version(client, name).version) == "2"
    tags = client.get_model_version(name, "2").tags
    assert tags["gate.champion_version"] == "1"
    assert float(tags["gate.challenger_log_loss"]) < float(tags["gate.champion_log_loss"])
    assert tags["gate.holdout"] == "2013-01-16..2013-01-18"
    assert tags["gate.previous_champion"] == "1"
    assert tags["gate.cause"] == "scheduled"

    worse = _train(_tiny(config), dt.date(2013, 1, 15), dt.date(2013, 1, 19))
    decision = registry.register_and_gate(_tiny(config), worse, "tiny window", "manual")
    assert decision["promoted"] is False, decision["decision"]
    assert decision["decision"].startswith("kept as challenger")
    assert str(registry.champion_version(client, name).version) == "2"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "3"
    tags = client.get_model_version(name, "3").tags
    assert float(tags["gate.challenger_log_loss"]) > float(tags["gate.champion_log_loss"])
    assert tags["gate.champion_version"] == "2"
    assert tags["gate.holdout_days_seen_by_champion"] == "0"


def test_promotion_stamps_policy_and_monitoring_applies_it(registry_env, repo_root):
    """A rerun of a past day applies the policy stamped on its model, not today's config."""
    from loopline import registry, tracking
    from loopline.config import apply_policy_file, policy_of
    from loopline.monitoring import checks

    config = registry_env
    client = tracking.configure()
    promoted = client.get_model_version(config.model_name, "2")
    rejected = client.get_model_version(config.model_name, "3")
    assert promoted.tags["loopline.policy_version"] == config.monitoring.policy_version
    assert registry.stamped_policy(promoted) == policy_of(config)
    assert registry.stamped_policy(rejected) is None

    changed = apply_policy_file(config, repo_root / "include/config/policies/drift_and_quality.yaml")
    in_force = checks.policy_in_force(changed, promoted)
    assert in_force.monitoring.policy_version == config.monitoring.policy_version
    assert [rule.name for rule in in_force.monitoring.rules] == [rule.name for rule in config.monitoring.rules]
    # A version that was never promoted carries no policy, so the config's applies.
    assert checks.policy_in_force(changed, rejected).monitoring.policy_version == "2026-12-04.1"


def test_champion_as_of_never_scores_training_days(registry_env):
    """A backfilled day gets the newest champion whose training window ended by that day."""
    from loopline import registry, tracking

    client = tracking.configure()
    name = registry_env.model_name
    # Version 1 was trained on days before 2013-01-16, version 2 on days before 2013-01-19.
    assert str(registry.champion_as_of(client, name, dt.date(2013, 1, 20)).version) == "2"
    assert str(registry.champion_as_of(client, name, dt.date(2013, 1, 19)).version) == "2"
    assert str(registry.champion_as_of(client, name, dt.date(2013, 1, 17)).version) == "1"
    assert registry.champion_as_of(client, name, dt.date(2013, 1, 10)) is None


def test_rollback_restores_previous_and_server_follows(registry_env):
    from fastapi.testclient import TestClient

    from loopline import registry, tracking
    from loopline.serving.app import create_app

    config = registry_env
    client = tracking.configure()
    app = create_app(poll_seconds=3600)
    with TestClient(app) as http:
        assert http.get("/model").json()["version"] == "2"

        result = registry.rollback(config, "holdout looked fine, live quality did not")
        assert result == {"from_version": "2", "to_version": "1"}
        assert str(registry.champion_version(client, config.model_name).version) == "1"

        app.state.server.refresh()
        assert http.get("/model").json()["version"] == "1"

    entry = registry.history()[-1]
    assert entry["action"] == "rollback"
    assert entry["from_version"] == "2"
    assert entry["to_version"] == "1"
    assert entry["cause"] == "rollback"


def test_promote_by_hand_and_unknown_version(registry_env):
    from loopline import registry

    config = registry_env
    assert registry.promote(config, "2", "restore after the test") == {"from_version": "1", "to_version": "2"}
    with pytest.raises(registry.RegistryError, match=r"has no version '9'; existing versions: \[1, 2, 3\]"):
        registry.promote(config, "9", "typo")
    with pytest.raises(registry.RegistryError, match="already has @champion"):
        registry.promote(config, "2", "again")
    actions = [(entry["action"], entry["to_version"]) for entry in registry.history()]
    assert actions == [("promote", "1"), ("promote", "2"), ("reject", "2"), ("rollback", "1"), ("promote", "2")]


def test_training_same_data_same_metrics(registry_env):
    """Fixed seeds: two trainings on the same window give identical metrics."""
    config = registry_env
    first = _train(config, dt.date(2013, 1, 3), dt.date(2013, 1, 19))
    second = _train(config, dt.date(2013, 1, 3), dt.date(2013, 1, 19))
    assert first["holdout_log_loss"] == second["holdout_log_loss"]
    assert first["holdout_roc_auc"] == second["holdout_roc_auc"]
    assert first["run_id"] != second["run_id"]


def test_profile_stores_missing_rates(registry_env):
    """The logged reference profile holds each raw feature's missing share on the training days."""
    import mlflow

    from loopline import store, training

    config = registry_env
    feature_set = config.feature_set
    # One candidate is enough here: the profile does not depend on the model.
    tiny = _tiny(config)
    tiny = tiny.model_copy(update={"training": tiny.training.model_copy(update={"candidates": {"sgd_logistic": [{}]}})})
    trained = _train(tiny, dt.date(2013, 1, 12), dt.date(2013, 1, 16))
    profile = mlflow.artifacts.load_dict(f"runs:/{trained['run_id']}/{training.REFERENCE_PROFILE_ARTIFACT}")
    state = mlflow.artifacts.load_dict(f"runs:/{trained['run_id']}/feature_state.json")

    train_days = training.TrainingWindow.from_dict(trained["window"]).train_days
    rows = store.read_days(store.feature_dataset(feature_set.name, feature_set.version), train_days)
    assert train_days == [dt.date(2013, 1, 12), dt.date(2013, 1, 13)]
    assert len(rows) == mlflow.get_run(trained["run_id"]).data.metrics["train_rows"]
    # The flights carry missing values as nulls only, so a null count gives the real share.
    expected = {name: float(rows[name].isna().mean()) for name in feature_set.features}
    assert profile["missing_rates"] == pytest.approx(expected, abs=0, rel=1e-12)
    assert set(profile["missing_rates"]) == set(feature_set.features)
    assert profile["missing_rates"]["wind_gust"] > 0.5
    assert profile["missing_rates"]["plane_age"] > 0.0
    assert profile["missing_rates"]["origin"] == 0.0
    assert state["one_hot_categories"] == {"origin": ["EWR", "JFK", "LGA"]}
    assert state["output_columns"][len(feature_set.numerical) + 1 : len(feature_set.numerical) + 4] == [
        "origin_EWR",
        "origin_JFK",
        "origin_LGA",
    ]


def test_rollback_first_champion_has_nowhere_to_go(tmp_path, monkeypatch, registry_env):
    from loopline import registry

    monkeypatch.setenv("LOOPLINE_HOME", str(tmp_path))
    with pytest.raises(registry.RegistryError, match="has no @champion to roll back"):
        registry.rollback(registry_env, "nothing promoted here")


def test_promote_unknown_version_command(registry_env, monkeypatch, capsys):
    """`loopline promote 9` exits 1 with one line that lists the versions that exist."""
    from loopline import cli

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    champion_before = _champion(registry_env)

    code = cli.main(["promote", "9", "--reason", "typo"])

    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        f"promote failed: model '{registry_env.model_name}' has no version '9'; existing versions: [1, 2, 3]"
    )
    assert _champion(registry_env) == champion_before


def test_aliases_only_one_champion(registry_env):
    """Promotion moves aliases: one version has @champion and no version has a stage."""
    from loopline import tracking

    client = tracking.configure()
    name = registry_env.model_name
    # Search results leave aliases out (MLflow 3.17), so each version is read on its own.
    versions = [client.get_model_version(name, found.version) for found in client.search_model_versions(f"name='{name}'")]
    holders = [str(version.version) for version in versions if "champion" in version.aliases]
    assert holders == [_champion(registry_env)]
    assert {version.current_stage for version in versions} <= {"None", None}


def test_no_stage_api_in_source(repo_root):
    """Stages are deprecated since MLflow 2.9; no Loopline code calls the stage API."""
    deprecated = ("transition_model_version_stage", "get_latest_versions", "latest_versions")
    for folder in ("include", "dags", "plugins"):
        for path in (repo_root / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for name in deprecated:
                assert name not in text, f"{path} uses the deprecated stage API {name}"


def test_logged_signature_numerical_double(registry_env):
    """Integer columns are double in the signature, so NaN or floats in them are accepted."""
    import mlflow
    import numpy as np

    from loopline import sources

    config = registry_env
    uri = f"models:/{config.model_name}@champion"
    inputs = mlflow.models.get_model_info(uri).signature.inputs
    types = {spec.name: spec.type.name for spec in inputs.inputs}
    assert {types[name] for name in config.feature_set.numerical} == {"double"}
    assert {types[name] for name in config.feature_set.categorical} == {"string"}

    batch = sources.flight_feed(DAYS[-1])[config.feature_set.features].head(4).copy()
    batch["plane_seats"] = batch["plane_seats"].astype("float64")
    batch.loc[batch.index[1], ["plane_seats", "sched_dep_hour"]] = np.nan
    batch["distance"] = batch["distance"] + 0.5
    predictions = mlflow.pyfunc.load_model(uri).predict(batch)
    assert len(predictions) == 4


def _champion(config) -> str:
    from loopline import registry, tracking

    return str(registry.champion_version(tracking.configure(), config.model_name).version)


@pytest.fixture
def replaced_partitions():
    """Replace store partitions for one test and put the original files back afterwards."""
    from loopline import store

    saved: dict = {}

    def replace(dataset: str, day: dt.date, change) -> None:
        path = store.partition_path(dataset, day)
        saved.setdefault(path, path.read_bytes())
        store.write_partition(change(store.read_partition(dataset, day)), dataset, day)

    yield replace
    for path, content in saved.items():
        path.write_bytes(content)


def _assert_no_model_trained(config, monkeypatch, match: str):
    """Train on 2013-01-12..15 and check that it stops before fitting, with nothing registered."""
    from loopline import candidates, registry, tracking, training

    client = tracking.configure()
    versions_before = len(client.search_model_versions(f"name='{config.model_name}'"))
    champion_before = _champion(config)
    audit_entries_before = len(registry.history())

    def fit_attempted(*args, **kwargs):
        raise AssertionError("a model was fitted on a window that failed its checks")

    monkeypatch.setattr(candidates, "select", fit_attempted)
    with pytest.raises(training.TrainingDataError, match=match):
        _train(_tiny(config), dt.date(2013, 1, 12), dt.date(2013, 1, 16))

    assert len(client.search_model_versions(f"name='{config.model_name}'")) == versions_before
    assert _champion(config) == champion_before
    assert len(registry.history()) == audit_entries_before
    [run] = client.search_runs(
        [tracking.experiment_id(tracking.TRAINING_EXPERIMENT)], order_by=["attributes.start_time DESC"], max_results=1
    )
    assert run.info.status == "FAILED"
    assert run.data.params["window_start"] == "2013-01-12"
    assert client.list_artifacts(run.info.run_id) == []
    return run


def test_single_class_window_trains_nothing(registry_env, replaced_partitions, monkeypatch):
    """All flights of the training days on time: named error, class counts logged, no version."""
    from loopline import store

    config = registry_env
    for day in (dt.date(2013, 1, 12), dt.date(2013, 1, 13)):
        replaced_partitions(store.LABELS, day, lambda labels: labels.assign(delayed=0))

    run = _assert_no_model_trained(
        config, monkeypatch, r"training set of window 2013-01-12..2013-01-16 has a single class \(positives=0, negatives=\d+\)"
    )

    counts = run.data.metrics
    assert counts["train_positives"] == 0
    assert counts["train_negatives"] == counts["train_rows"] > 0
    assert 0 < counts["validation_positives"] < counts["validation_rows"]
    assert "single class" in run.data.tags["loopline.training_error"]


def test_empty_partitions_train_nothing(registry_env, replaced_partitions, monkeypatch):
    """Header-only feature partitions for the training days: no fit, no version, alias unchanged."""
    from loopline import store

    config = registry_env
    features = store.feature_dataset(config.feature_set.name, config.feature_set.version)
    for day in (dt.date(2013, 1, 12), dt.date(2013, 1, 13)):
        replaced_partitions(features, day, lambda frame: frame.iloc[:0])

    run = _assert_no_model_trained(config, monkeypatch, r"training set of window 2013-01-12..2013-01-16 is empty \(0 rows\)")

    assert run.data.metrics["train_rows"] == 0
    assert run.data.metrics["holdout_rows"] > 0
    assert "is empty" in run.data.tags["loopline.training_error"]
