"""Feature transform: Loopline's fitted FeatureProcessor vs naive pandas vs scikit-learn, batch and one row.

The rows are resampled from the 2013 flight feed (the 20 benchmark features). Every side
learns from the same rows it transforms, so the outputs must be equal:

* Loopline: ``FeatureProcessor.transform`` with the state fitted beforehand (fit timed apart);
* naive: per batch, each column's mean and each category's share recomputed with pandas
  (``mean``, ``value_counts(normalize=True)``, ``map``, ``np.where``);
* scikit-learn: a fitted ``SimpleImputer(strategy="mean")`` plus a pandas frequency map
  fitted beforehand.

The one-row path is ``FeatureProcessor.transform_records`` on one request record, against
the scikit-learn version on a one-row DataFrame.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

import common
from loopline.features import MISSING_CATEGORY, FeatureProcessor


def naive_transform(frame: pd.DataFrame) -> np.ndarray:
    output = np.empty((len(frame), len(common.NUMERICAL) + len(common.CATEGORICAL)), dtype="float64")
    for index, name in enumerate(common.NUMERICAL):
        column = frame[name]
        output[:, index] = np.where(column.isna(), column.mean(), column)
    for offset, name in enumerate(common.CATEGORICAL):
        column = frame[name].fillna(MISSING_CATEGORY)
        shares = column.value_counts(normalize=True)
        output[:, len(common.NUMERICAL) + offset] = column.map(shares).to_numpy(dtype="float64")
    return output


class SklearnTransform:
    """SimpleImputer for numerical columns and a pandas frequency map for categorical ones."""

    def __init__(self, frame: pd.DataFrame):
        from sklearn.impute import SimpleImputer

        self.imputer = SimpleImputer(strategy="mean").fit(frame[common.NUMERICAL])
        self.shares = {name: frame[name].fillna(MISSING_CATEGORY).value_counts(normalize=True) for name in common.CATEGORICAL}

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        numerical = self.imputer.transform(frame[common.NUMERICAL])
        categorical = [
            frame[name].fillna(MISSING_CATEGORY).map(self.shares[name]).fillna(0.0).to_numpy(dtype="float64")
            for name in common.CATEGORICAL
        ]
        return np.column_stack([numerical, *categorical])


def per_call_seconds(function, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="batch rows (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed batch runs per side (default: %(default)s)")
    parser.add_argument("--one-row-calls", type=int, default=20_000, help="timed one-row calls (default: %(default)s)")
    parser.add_argument("--profile-dir", type=Path, default=common.REPO_ROOT / "docs" / "profiles")
    parser.add_argument("--results", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()

    columns = common.NUMERICAL + common.CATEGORICAL
    frame = common.resample(common.real_flights()[columns], args.rows, seed=3)

    started = time.perf_counter()
    processor = FeatureProcessor(common.NUMERICAL, common.CATEGORICAL).fit(frame)
    fit_seconds = time.perf_counter() - started
    sklearn_side = SklearnTransform(frame)

    outputs = {}
    timings = {}
    for side, function in (
        ("loopline", lambda: processor.transform(frame)),
        ("naive", lambda: naive_transform(frame)),
        ("sklearn", lambda: sklearn_side.transform(frame)),
    ):
        outputs[side] = function()
        timings[side] = common.time_calls(function, args.repeats)
    differences = {side: float(np.max(np.abs(outputs[side] - outputs["loopline"]))) for side in ("naive", "sklearn")}

    record_frame = frame.iloc[[0]]
    record = {name: (None if pd.isna(value) else value) for name, value in record_frame.iloc[0].items()}
    one_row = {
        "loopline_transform_records_s": per_call_seconds(lambda: processor.transform_records([record]), args.one_row_calls),
        "loopline_transform_one_row_frame_s": per_call_seconds(lambda: processor.transform(record_frame), max(1, args.one_row_calls // 20)),
        "sklearn_one_row_frame_s": per_call_seconds(lambda: sklearn_side.transform(record_frame), max(1, args.one_row_calls // 20)),
    }
    one_row_equal = bool(np.allclose(processor.transform_records([record]), sklearn_side.transform(record_frame), rtol=0, atol=1e-9))

    speedup_naive = timings["naive"]["median_s"] / timings["loopline"]["median_s"]
    speedup_sklearn = timings["sklearn"]["median_s"] / timings["loopline"]["median_s"]
    goal_batch = speedup_naive >= 5 and speedup_sklearn >= 5
    goal_one_row = one_row["loopline_transform_records_s"] < 50e-6
    profiles = {}
    if not goal_batch:
        path = common.profile_call(lambda: [processor.transform(frame) for _ in range(3)], args.profile_dir / "features-batch-loopline.svg")
        profiles["batch"] = str(path.relative_to(common.REPO_ROOT)) if path else None
    if not goal_one_row:
        path = common.profile_call(
            lambda: [processor.transform_records([record]) for _ in range(args.one_row_calls)], args.profile_dir / "features-one-row-loopline.svg"
        )
        profiles["one_row"] = str(path.relative_to(common.REPO_ROOT)) if path else None

    common.write_result(
        "features",
        {
            "rows": args.rows,
            "fit_s": fit_seconds,
            "batch": timings,
            "max_abs_difference_vs_loopline": differences,
            "outputs_equal": all(value <= 1e-9 for value in differences.values()),
            "speedup_vs_naive": speedup_naive,
            "speedup_vs_sklearn": speedup_sklearn,
            "one_row": one_row,
            "one_row_equal": one_row_equal,
            "goal_batch_met": goal_batch,
            "goal_one_row_met": goal_one_row,
            "profiles": profiles,
        },
        args.results,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
