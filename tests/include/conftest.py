"""Fixtures for a user's own data: a small customer data set declared in a config file."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import yaml
from customer_data import CUSTOMER_CONFIG

@pytest.fixture
def customer_config():
    """Return a fresh copy of the customer config as a dict, to change per test."""
    return copy.deepcopy(CUSTOMER_CONFIG)


@pytest.fixture
def user_home(tmp_path, monkeypatch):
    """Point LOOPLINE_HOME at a fresh folder; ``write(config)`` makes that config the active one."""
    from loopline.config import cached_config
    from loopline.monitoring import store as monitoring_store

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LOOPLINE_HOME", str(home))
    cached_config.cache_clear()
    monitoring_store.get_engine.cache_clear()

    def write(config: dict):
        from loopline.config import load_config

        path = tmp_path / "loopline.yaml"
        path.write_text(yaml.safe_dump(config))
        monkeypatch.setenv("LOOPLINE_CONFIG", str(path))
        cached_config.cache_clear()
        return load_config(path)

    yield SimpleNamespace(path=home, write_config=write)
    cached_config.cache_clear()
    monitoring_store.get_engine.cache_clear()
