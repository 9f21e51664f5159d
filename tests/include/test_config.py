"""Config loading: the shipped file is valid; bad values name the key and the value."""

from __future__ import annotations

import pytest
import yaml

from loopline.config import ConfigError, apply_policy_file, load_config, policy_of, read_config_mapping


def _write(tmp_path, repo_root, change):
    """Write the shipped config with its policy inlined, after ``change``."""
    config = read_config_mapping(repo_root / "include/config/loopline.yaml")
    change(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_shipped_file_is_valid():
    config = load_config()
    assert config.feature_set.features[:2] == ["sched_dep_hour", "day_of_week"]
    assert config.training.holdout_days < config.training.min_days


def test_config_unknown_key_rejected(tmp_path, repo_root):
    path = _write(tmp_path, repo_root, lambda config: config["training"].update({"epochs": 5}))
    with pytest.raises(ConfigError, match=r"training.epochs: Extra inputs are not permitted \(got 5\)"):
        load_config(path)


def test_config_bad_value_named(tmp_path, repo_root):
    path = _write(tmp_path, repo_root, lambda config: config["serving"].update({"decision_threshold": 1.5}))
    with pytest.raises(ConfigError, match=r"serving.decision_threshold: .*less than 1 \(got 1.5\)"):
        load_config(path)


def test_config_rule_with_unknown_feature_rejected(tmp_path, repo_root):
    def change(config):
        (drift_rule,) = [rule for rule in config["monitoring"]["rules"] if rule["name"] == "feature_drift"]
        drift_rule["features"] = ["altitude"]

    path = _write(tmp_path, repo_root, change)
    with pytest.raises(ConfigError, match=r"rule 'feature_drift' names features \['altitude'\]"):
        load_config(path)


def test_config_missing_file_named(tmp_path):
    with pytest.raises(ConfigError, match="not found; set LOOPLINE_CONFIG"):
        load_config(tmp_path / "absent.yaml")


def _policy_config(tmp_path, repo_root, policy):
    """Write the shipped config next to a policy file holding ``policy``; return the config path."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies/default.yaml").write_text(yaml.safe_dump(policy))
    config = (repo_root / "include/config/loopline.yaml").read_text()
    path = tmp_path / "loopline.yaml"
    path.write_text(config)
    return path


def test_policy_file_is_read_and_versioned(repo_root):
    config = load_config(repo_root / "include/config/loopline.yaml")
    policy = policy_of(config)
    shipped = yaml.safe_load((repo_root / "include/config/policies/default.yaml").read_text())
    assert policy["policy_version"] == shipped["policy_version"]
    assert [rule["name"] for rule in policy["rules"]] == [rule["name"] for rule in shipped["rules"]]
    assert config.monitoring.min_rows == 200


def test_policy_file_bad_value_names_rule_key_and_file(tmp_path, repo_root):
    shipped = yaml.safe_load((repo_root / "include/config/policies/default.yaml").read_text())
    shipped["rules"][1]["threshold"] = "high"
    name = shipped["rules"][1]["name"]
    path = _policy_config(tmp_path, repo_root, shipped)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert f"monitoring rule '{name}' (rules[1]).threshold" in message
    assert "policies/default.yaml" in message
    assert "(got 'high')" in message


def test_policy_file_unknown_key_and_duplicate_rule_rejected(tmp_path, repo_root):
    shipped = yaml.safe_load((repo_root / "include/config/policies/default.yaml").read_text())
    path = _policy_config(tmp_path, repo_root, {**shipped, "min_rows": 10})
    with pytest.raises(ConfigError, match=r"unknown keys \['min_rows'\].*config file's monitoring section"):
        load_config(path)

    duplicated = {**shipped, "rules": shipped["rules"] + shipped["rules"][:1]}
    (tmp_path / "policies/default.yaml").write_text(yaml.safe_dump(duplicated))
    with pytest.raises(ConfigError, match=rf"rule names \['{shipped['rules'][0]['name']}'\] appear more than once"):
        load_config(path)


def test_policy_key_in_both_places_rejected(tmp_path, repo_root):
    config = yaml.safe_load((repo_root / "include/config/loopline.yaml").read_text())
    config["monitoring"]["retrain_cooldown_days"] = 3
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies/default.yaml").write_text((repo_root / "include/config/policies/default.yaml").read_text())
    path = tmp_path / "loopline.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"monitoring sets \['retrain_cooldown_days'\] and also names the policy file"):
        load_config(path)


def test_apply_policy_file_replaces_rules(tmp_path, repo_root):
    config = apply_policy_file(load_config(), repo_root / "include/config/policies/drift_and_quality.yaml")

    assert config.monitoring.policy_version == "2026-12-04.1"
    assert [rule.metric for rule in config.monitoring.rules] == ["psi", "unseen_category_rate", "log_loss_ratio", "log_loss"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy_version: x\nrules:\n  - name: late\n    metric: psi\n    threshold: high\n")
    with pytest.raises(ConfigError, match=r"(?s)invalid monitoring policy file .*bad.yaml.*rule 'late' \(rules\[0\]\).threshold"):
        apply_policy_file(load_config(), bad)


def test_config_one_hot_must_be_categorical(tmp_path, repo_root):
    """A one-hot feature must also be a categorical feature of the set."""
    path = _write(tmp_path, repo_root, lambda config: config["feature_set"].update({"one_hot": ["origin", "distance"]}))
    with pytest.raises(ConfigError, match=r"one_hot names \['distance'\], which are not categorical features"):
        load_config(path)


def test_config_one_hot_cap_positive(tmp_path, repo_root):
    path = _write(tmp_path, repo_root, lambda config: config["feature_set"].update({"max_one_hot_categories": 0}))
    with pytest.raises(ConfigError, match=r"feature_set.max_one_hot_categories: .*greater than or equal to 1 \(got 0\)"):
        load_config(path)


def test_config_shipped_one_hot_origin():
    feature_set = load_config().feature_set
    assert feature_set.one_hot == ["origin"]
    assert feature_set.max_one_hot_categories == 20
