"""The HTML monitoring report: content, backfill stability, MLflow logging, the CLI, and
rendering in headless Chromium.

A module fixture fills a SQLite monitoring store with eight days of real flights scored
by a model fitted on the week before (see ``monitoring_history``).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from monitoring_history import History

from loopline.config import load_config
from loopline.monitoring import report, store

FIRST_DAY = dt.date(2013, 1, 10)
BACKFILL_DAY = dt.date(2013, 1, 14)
LAST_DAY = dt.date(2013, 1, 17)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_INSTALL = "apt-get update && apt-get install -y chromium"
# Charts of a report whose days all have values: PSI heat map, PSI per feature,
# prediction drift, quality, serving, and the latency pie.
CHARTS = 6


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Fill a store up to BACKFILL_DAY, report that day, then add the days up to LAST_DAY."""
    home = tmp_path_factory.mktemp("report-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOOPLINE_HOME", str(home))
        for name in ("LOOPLINE_MLFLOW_TRACKING_URI", "LOOPLINE_MONITORING_DB_URL", "LOOPLINE_CONFIG"):
            patch.delenv(name, raising=False)
        store.get_engine.cache_clear()
        config = load_config()
        engine = store.get_engine()
        filled = History(config, engine)
        day = FIRST_DAY
        while day <= BACKFILL_DAY:
            filled.add_day(day)
            day += dt.timedelta(days=1)
        before = report.write_report(config, engine, BACKFILL_DAY, home / "before" / "report.html")
        while day <= LAST_DAY:
            filled.add_day(day)
            day += dt.timedelta(days=1)
        last = report.write_report(config, engine, LAST_DAY, home / "last" / "report.html")
        yield {"home": home, "config": config, "engine": engine, "before": Path(before["path"]), "last": last}
    store.get_engine.cache_clear()


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(encoded) for encoded in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_sections_charts_and_tables(history, tmp_path):
    """The report of the last day contains every chart as a PNG, the day's drift table and every alert."""
    result = history["last"]
    page = Path(result["path"]).read_text(encoding="utf-8")

    images = _images(page)
    assert len(images) == CHARTS
    assert all(image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 5000 for image in images)
    assert result["days"] == (LAST_DAY - FIRST_DAY).days + 1
    for anchor in ("summary", "day-drift", "drift", "prediction-drift", "quality", "serving", "alerts", "retrain", "incidents"):
        assert f'<section id="{anchor}">' in page
    # The day's drift table has one row per feature.
    config = history["config"]
    for feature in [*config.feature_set.numerical, *config.feature_set.categorical]:
        assert f'<th scope="row">{feature}</th>' in page
    with history["engine"].connect() as connection:
        alerts = connection.execute(sa.select(sa.func.count()).select_from(store.alerts)).scalar_one()
        requests = connection.execute(sa.select(store.retrain_requests.c.dag_run_id)).scalars().all()
    alert_section = re.search(r'<section id="alerts">.*?</section>', page).group(0)
    assert alerts > 0
    assert alert_section.count("<tr>") == alerts + 1  # and the header row
    assert all(f"<td>{run_id}</td>" in page for run_id in requests)
    # The history opens no incident: its rules run without the feedback step.
    assert "No incident up to this day." in page


def test_report_self_contained(history, tmp_path):
    """No URL of another origin: the page opens offline, and its CSP allows only inline data."""
    page = Path(history["last"]["path"]).read_text(encoding="utf-8")

    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", page)
    assert "@import" not in page
    assert "default-src 'none'; img-src data:" in page


def test_report_backfill_gives_same_bytes(history, tmp_path):
    """A report written after later days were stored equals the one written on its own day."""
    again = report.write_report(history["config"], history["engine"], BACKFILL_DAY, tmp_path / "again.html")

    assert Path(again["path"]).read_bytes() == history["before"].read_bytes()
    assert again["days"] == (BACKFILL_DAY - FIRST_DAY).days + 1
    assert Path(history["last"]["path"]).read_bytes() != history["before"].read_bytes()


def test_report_lists_incidents_as_of_its_day(history, tmp_path):
    """The report lists incidents opened by its day, with the status they had on that day."""
    engine = store.get_engine(f"sqlite:///{tmp_path / 'with-incidents.db'}")
    common = {"metric": "psi", "severity": "warning", "action": "alert", "created_at": store.utcnow()}
    with engine.begin() as connection:
        connection.execute(
            store.incidents.insert(),
            [
                {**common, "rule": "quality_degradation", "feature_key": "", "opened_date": "2013-01-12", "status": "closed", "closed_date": "2013-01-20", "closed_reason": "quiet for 3 days"},
                {**common, "rule": "feature_drift", "feature_key": "distance", "opened_date": "2013-01-30", "status": "open", "closed_date": None, "closed_reason": None},
            ],
        )

    result = report.write_report(history["config"], engine, BACKFILL_DAY, tmp_path / "report.html")
    page = Path(result["path"]).read_text(encoding="utf-8")

    assert "<td>quality_degradation</td>" in page
    # Closed only after the report's day, so the report shows it open.
    assert "quiet for 3 days" not in page
    # An incident after the report's day is left out, as every other row is.
    assert "<td>feature_drift</td><td>distance</td>" not in page


def test_report_empty_store_still_renders(tmp_path):
    """A day with nothing stored gives a page without charts that states it."""
    engine = store.get_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    result = report.write_report(load_config(), engine, LAST_DAY, tmp_path / "report.html")
    page = Path(result["path"]).read_text(encoding="utf-8")

    assert result["days"] == 0
    assert _images(page) == []
    assert "No metrics stored for this day." in page
    assert "not scored" in page


def test_log_report_replaces_the_days_run(history, tmp_path):
    """A second report of the same day replaces the first run in the monitoring experiment."""
    from loopline import tracking

    path = Path(history["last"]["path"])
    first = report.log_report(path, LAST_DAY, {"loopline.test": "1"}, engine=history["engine"])
    second = report.log_report(path, LAST_DAY, {"loopline.test": "2"}, engine=history["engine"])

    client = tracking.configure()
    experiment = client.get_experiment_by_name(report.MONITORING_EXPERIMENT)
    active = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{report.DAY_TAG}` = '{LAST_DAY}'")
    assert [run.info.run_id for run in active] == [second]
    assert client.get_run(first).info.lifecycle_stage == "deleted"
    run = client.get_run(second)
    assert run.info.status == "FINISHED"
    assert [item.path for item in client.list_artifacts(second, "report")] == [f"report/{path.name}"]
    assert 0 < run.data.metrics["label_share"] <= 1
    assert run.data.metrics["psi.distance"] >= 0
    assert "latency_p95_ms" in run.data.metrics


def test_cli_report_monitoring(history, tmp_path, capsys):
    from loopline import cli

    out = tmp_path / "cli" / "report.html"
    assert cli.main(["report", "monitoring", "--day", LAST_DAY.isoformat(), "--out", str(out)]) == 0
    assert f"monitoring report of {LAST_DAY}: {out}" in capsys.readouterr().out
    assert len(_images(out.read_text(encoding="utf-8"))) == CHARTS

    with pytest.raises(SystemExit):
        cli.main(["report", "monitoring"])
    assert "needs --day YYYY-MM-DD" in capsys.readouterr().err


def _chromium(*arguments: str, profile: Path) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *arguments,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_report_renders_in_headless_chromium(history, tmp_path):
    """Chromium decodes every chart of the report, and its screenshot is not blank."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        message = f"Chromium is not installed at {CHROMIUM}; install it with: {CHROMIUM_INSTALL}"
        if os.environ.get("LOOPLINE_REQUIRE_CHROMIUM") == "1":
            pytest.fail(message + " (LOOPLINE_REQUIRE_CHROMIUM=1 makes this a failure)")
        pytest.skip(message)
    import numpy as np
    from PIL import Image

    path = Path(history["last"]["path"])

    dom = _chromium("--dump-dom", path.as_uri(), profile=tmp_path / "profile-dom").stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert f'data-images="{CHARTS}"' in body
    assert f'data-images-decoded="{CHARTS}"' in body

    screenshot = tmp_path / "report.png"
    _chromium("--hide-scrollbars", "--window-size=1400,3000", f"--screenshot={screenshot}", path.as_uri(), profile=tmp_path / "profile-shot")
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype="int64")
    assert pixels.shape == (3000, 1400, 3)
    colours = np.unique(pixels.reshape(-1, 3) @ np.asarray([1 << 16, 1 << 8, 1]))
    # A blank or unstyled page has a handful of colours; charts and tables have hundreds.
    assert colours.size > 200
    # The page header is dark blue text on white below it: both ends of the range occur.
    assert pixels.min() < 60
    assert pixels.max() > 240
