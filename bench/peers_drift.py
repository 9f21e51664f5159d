"""Evidently 0.7.23's data-drift preset on the drift benchmark's files; runs in bench/.venv-peers.

It reads the reference and current Parquet files that ``bench_drift.py`` wrote, runs the
preset once per test family (KS with chi-squared, PSI, Jensen-Shannon), and writes the
time, the peak memory and every column's value as JSON. Peak memory is the growth of the
process's peak RSS (VmHWM, reset after a warm-up run on 1,000 rows) over its RSS then, as
for the other sides.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from importlib import metadata
from pathlib import Path

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

import common  # bench/common.py imports only the standard library at module level

# (numerical method, categorical method) per report, named as Evidently's registry names them.
METHOD_PAIRS = {"ks_chisquare": ("ks", "chisquare"), "psi": ("psi", "psi"), "jensenshannon": ("jensenshannon", "jensenshannon")}


def run_reports(reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str], categorical: list[str]) -> dict:
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    reference_set = Dataset.from_pandas(reference, data_definition=definition)
    current_set = Dataset.from_pandas(current, data_definition=definition)
    values = {}
    for family, (numerical_method, categorical_method) in METHOD_PAIRS.items():
        report = Report([DataDriftPreset(num_method=numerical_method, cat_method=categorical_method)])
        snapshot = report.run(current_data=current_set, reference_data=reference_set)
        for metric in snapshot.dict()["metrics"]:
            config = metric["config"]
            if config.get("type", "").endswith("ValueDrift"):
                values.setdefault(config["column"], {})[config["method"]] = float(metric["value"])
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--current", type=Path, required=True)
    parser.add_argument("--numerical", required=True, help="comma-separated numerical columns")
    parser.add_argument("--categorical", required=True, help="comma-separated categorical columns")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    numerical = args.numerical.split(",")
    categorical = args.categorical.split(",")

    warnings.simplefilter("ignore")
    reference = pd.read_parquet(args.reference)
    current = pd.read_parquet(args.current)

    # An untimed run on 1,000 rows loads what Evidently imports lazily, as the other sides do.
    run_reports(reference.head(1000), current.head(1000), numerical, categorical)
    rss_before = common.current_rss_bytes()
    common.reset_peak_rss()
    started = time.perf_counter()
    values = run_reports(reference, current, numerical, categorical)
    seconds = time.perf_counter() - started
    peak = common.peak_rss_bytes() - rss_before

    args.out.write_text(
        json.dumps(
            {
                "evidently": metadata.version("evidently"),
                "pandas": metadata.version("pandas"),
                "scipy": metadata.version("scipy"),
                "seconds": seconds,
                "peak_bytes": peak,
                "values": values,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
