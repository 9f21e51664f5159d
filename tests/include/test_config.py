"""Config loading: the shipped file is valid; bad values name the key and the value."""

from __future__ import annotations

import pytest
import yaml

from loopline.config import ConfigError, load_config


def _write(tmp_path, repo_root, change):
    config = yaml.safe_load((repo_root / "include/config/loopline.yaml").read_text())
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
    path = _write(tmp_path, repo_root, lambda config: config["monitoring"]["rules"][0].update({"features": ["altitude"]}))
    with pytest.raises(ConfigError, match=r"rule 'feature_drift' names features \['altitude'\]"):
        load_config(path)


def test_config_missing_file_named(tmp_path):
    with pytest.raises(ConfigError, match="not found; set LOOPLINE_CONFIG"):
        load_config(tmp_path / "absent.yaml")


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
