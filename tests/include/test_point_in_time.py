"""Point-in-time training sets: no label that arrived after the cutoff, no row after the window."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from customer_data import CUSTOMER_DAYS, CUSTOMER_HEADER, customer_rows

from loopline import pipeline, store, training

UTC = dt.timezone.utc
# Signed up on the afternoon of the second day: after a window that ends at noon.
AFTERNOON_ROW = "C060299,2024-06-02T13:00:00Z,44,2000.5,pro,yes"


@pytest.fixture
def customer_store(user_home, customer_config, tmp_path):
    """Run the data pipeline over three days of a drop folder whose rows carry their labels."""
    folder = tmp_path / "drop"
    folder.mkdir()
    for day in CUSTOMER_DAYS:
        rows = customer_rows(day)
        if day == CUSTOMER_DAYS[1]:
            rows.append(AFTERNOON_ROW)
        (folder / f"customers_{day}.csv").write_text("\n".join([CUSTOMER_HEADER, *rows]) + "\n")
    customer_config["source"] = {"kind": "drop_folder", "path": str(folder), "file_pattern": "customers_%Y-%m-%d.csv"}
    config = user_home.write_config(customer_config)
    for day in CUSTOMER_DAYS:
        pipeline.extract_flights(day, config)
        pipeline.validate_flights(day, config)
        pipeline.build_features(day, config)
        pipeline.land_labels(day, config)
    return config


def test_labels_record_arrival_time(customer_store):
    labels = store.read_partition(store.LABELS, CUSTOMER_DAYS[0])
    # Labels carried in the rows land with them, at the end of their day's data interval.
    assert set(labels[pipeline.LABEL_ARRIVED_AT]) == {pd.Timestamp("2024-06-02", tz="UTC")}


def test_window_excludes_late_label_and_future_row(customer_store):
    """The cutoff is the window end: day 2's labels landed after it, day 2's afternoon is after it."""
    frame = training.training_set_for_window(
        customer_store, dt.datetime(2024, 6, 1, tzinfo=UTC), dt.datetime(2024, 6, 2, 12, tzinfo=UTC)
    )

    assert frame["customer_id"].tolist() == [f"C0601{number:02d}" for number in range(6)]
    assert frame["churned"].tolist() == [0, 1, 0, 1, 0, 1]
    assert frame["signup_time"].max() < pd.Timestamp("2024-06-02", tz="UTC")


def test_window_excludes_corrected_late_label(customer_store):
    """A label that landed after the cutoff is left out, while its neighbours that arrived in time stay."""
    labels = store.read_partition(store.LABELS, CUSTOMER_DAYS[1])
    late = labels["customer_id"] == "C060201"
    labels.loc[late, pipeline.LABEL_ARRIVED_AT] = pd.Timestamp("2024-06-05", tz="UTC")
    store.write_partition(labels, store.LABELS, CUSTOMER_DAYS[1])

    frame = training.training_set_for_window(
        customer_store,
        dt.datetime(2024, 6, 2, tzinfo=UTC),
        dt.datetime(2024, 6, 2, 12, tzinfo=UTC),
        cutoff=dt.datetime(2024, 6, 3, tzinfo=UTC),
    )

    ids = frame["customer_id"].tolist()
    assert "C060201" not in ids, "the label that arrived after the cutoff was joined"
    assert "C060299" not in ids, "the row after the window end was kept"
    assert ids == ["C060200", "C060202", "C060203", "C060204", "C060205"]


def test_window_start_after_end_rejected(customer_store):
    with pytest.raises(training.TrainingDataError, match="is not before its end"):
        training.training_set_for_window(
            customer_store, dt.datetime(2024, 6, 3, tzinfo=UTC), dt.datetime(2024, 6, 2, tzinfo=UTC)
        )


def test_replay_labels_due_cutoff(user_home):
    """Replay labels of day D land with day D+1's run, so a window ending E accepts them until E+1."""
    from loopline.config import load_config

    config = load_config()
    summary = pipeline.land_labels(dt.date(2013, 1, 7), config)
    labels = store.read_partition(store.LABELS, dt.date(2013, 1, 6))
    cutoff = training.label_cutoff(config, dt.date(2013, 1, 7))

    assert summary["flight_date"] == "2013-01-06"
    # The end of 2013-01-07 in New York, the partition time zone of the replay.
    assert set(labels[pipeline.LABEL_ARRIVED_AT]) == {pd.Timestamp("2013-01-08 05:00", tz="UTC")}
    assert cutoff == pd.Timestamp("2013-01-08 05:00", tz="UTC")
