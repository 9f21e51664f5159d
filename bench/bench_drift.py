"""Drift: Loopline's check against a stored profile vs plain SciPy per column vs Evidently's preset.

Reference rows are resampled from January to June 2013, current rows from July to
December, so the known shift is the season: weather features (temp, dewp, humid, ...)
drift strongly, schedule and fleet features less. All three compute PSI, KS,
Jensen-Shannon and chi-squared over the same 20 columns.

* Loopline: ``numerical_drift`` and ``categorical_drift`` of ``loopline.monitoring.drift``
  against the reference profile, which is built once per model version at training time
  and read back from JSON here (its build time is reported apart).
* SciPy: the same definitions computed per column from the raw reference rows, the way
  one would write it without a stored profile.
* Evidently 0.7.23: ``DataDriftPreset`` with num_method/cat_method set to ks/chisquare,
  psi and jensenshannon, one report each, in bench/.venv-peers. It runs once: at 1M rows
  one run takes minutes.

Each side runs in a fresh process and first runs once on 1,000 rows, untimed. Peak memory
is the growth of that process's peak RSS during the timed runs: the peak (VmHWM) is reset
after the warm-up, and its RSS then is subtracted.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import common
from loopline.monitoring import drift

EPSILON = 1e-4
MIN_ROWS = 200
BINS = 10
# Every side first runs once on this many rows, untimed, so that lazy imports (SciPy's
# modules are tens of MiB) count neither in its time nor in its peak memory.
WARM_UP_ROWS = 1000


def build_data(rows: int, folder: Path) -> tuple[Path, Path]:
    flights = common.real_flights()
    month = flights["scheduled_departure"].dt.month
    columns = common.NUMERICAL + common.CATEGORICAL
    reference = common.resample(flights.loc[month <= 6, columns], rows, seed=1)
    current = common.resample(flights.loc[month > 6, columns], rows, seed=2)
    folder.mkdir(parents=True, exist_ok=True)
    reference_path, current_path = folder / "reference.parquet", folder / "current.parquet"
    reference.to_parquet(reference_path, index=False)
    current.to_parquet(current_path, index=False)
    return reference_path, current_path


def loopline_check(profile: dict, current: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    values: dict[str, dict[str, float | None]] = {}
    for result in drift.numerical_drift(profile, current, EPSILON, MIN_ROWS):
        values[result.feature] = {"psi": result.psi, "ks_pvalue": result.ks_pvalue, "ks_statistic": result.ks_statistic, "js": result.js_distance}
    for name, counts in profile["categorical"].items():
        result = drift.categorical_drift(counts, current[name], EPSILON, MIN_ROWS, name)
        values[name] = {"psi": result.psi, "chi2_pvalue": result.chi2_pvalue, "js": result.js_distance}
    return values


def scipy_check(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Compute the same statistics per column from raw rows with NumPy and SciPy only."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2_contingency, ks_2samp

    values = {}
    for name in common.NUMERICAL:
        ref = reference[name].to_numpy(dtype="float64", na_value=np.nan)
        cur = current[name].to_numpy(dtype="float64", na_value=np.nan)
        ref_observed, cur_observed = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
        edges = np.unique(np.quantile(ref_observed, np.linspace(0, 1, BINS + 1)[1:-1]))
        shares = []
        for column, observed in ((ref, ref_observed), (cur, cur_observed)):
            counts = np.bincount(np.searchsorted(edges, observed, side="left"), minlength=edges.size + 1)
            shares.append(np.append(counts, np.isnan(column).sum()) / column.size)
        ks = ks_2samp(ref_observed, cur_observed)
        values[name] = {
            "psi": _psi(*shares),
            "ks_pvalue": float(ks.pvalue),
            "ks_statistic": float(ks.statistic),
            "js": float(jensenshannon(*shares)),
        }
    for name in common.CATEGORICAL:
        ref_counts = reference[name].fillna("__MISSING__").value_counts()
        cur_counts = current[name].fillna("__MISSING__").value_counts()
        table = pd.concat([ref_counts, cur_counts], axis=1).fillna(0).sort_index().to_numpy(dtype="float64").T
        statistic, pvalue, _, _ = chi2_contingency(table, correction=False)
        ref_shares, cur_shares = table[0] / table[0].sum(), table[1] / table[1].sum()
        values[name] = {"psi": _psi(ref_shares, cur_shares), "chi2_pvalue": float(pvalue), "js": float(jensenshannon(ref_shares, cur_shares))}
    return values


def _psi(reference: np.ndarray, current: np.ndarray) -> float:
    reference = np.where(reference == 0, EPSILON, reference)
    current = np.where(current == 0, EPSILON, current)
    return float(np.sum((current - reference) * np.log(current / reference)))


def run_side(side: str, folder: Path, repeats: int) -> dict:
    """Time one side in this (fresh) process and measure its peak RSS growth; return the result."""
    current = pd.read_parquet(folder / "current.parquet")
    if side == "loopline":
        profile = json.loads((folder / "reference_profile.json").read_text())
        function = lambda: loopline_check(profile, current)  # noqa: E731
        loopline_check(profile, current.head(WARM_UP_ROWS))
    else:
        reference = pd.read_parquet(folder / "reference.parquet")
        function = lambda: scipy_check(reference, current)  # noqa: E731
        scipy_check(reference.head(WARM_UP_ROWS), current.head(WARM_UP_ROWS))
    gc.collect()
    rss_before = common.current_rss_bytes()
    common.reset_peak_rss()
    values = {}

    def call():
        nonlocal values
        values = function()

    timing = common.time_calls(call, repeats)
    return {**timing, "peak_bytes": common.peak_rss_bytes() - rss_before, "values": values}


def side_process(side: str, folder: Path, repeats: int) -> dict:
    out = folder / f"{side}.json"
    subprocess.run(
        [sys.executable, __file__, "--side", side, "--repeats", str(repeats), "--side-out", str(out)], check=True
    )
    return json.loads(out.read_text())


def max_difference(left: dict, right: dict, statistic: str) -> float | None:
    differences = [
        abs(left[column][statistic] - right[column][statistic])
        for column in left
        if left[column].get(statistic) is not None and right.get(column, {}).get(statistic) is not None
    ]
    return max(differences) if differences else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows on each side (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the Loopline and SciPy sides; Evidently runs once (default: %(default)s)")
    parser.add_argument("--profile-dir", type=Path, default=common.REPO_ROOT / "docs" / "profiles")
    parser.add_argument("--results", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--side", choices=["loopline", "scipy"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--side-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    folder = common.WORK_DIR / "drift"
    if args.side is not None:
        args.side_out.write_text(json.dumps(run_side(args.side, folder, args.repeats), default=str))
        return 0

    reference_path, current_path = build_data(args.rows, folder)
    reference = pd.read_parquet(reference_path)
    current = pd.read_parquet(current_path)

    started = time.perf_counter()
    profile = drift.reference_profile(reference, common.NUMERICAL, BINS, common.CATEGORICAL)
    profile_seconds = time.perf_counter() - started
    profile_path = folder / "reference_profile.json"
    profile_path.write_text(json.dumps(profile))
    profile = json.loads(profile_path.read_text())
    exact_ecdf = all(feature["ecdf"]["exact"] for feature in profile["features"].values())

    del reference, current
    # Each side runs in a fresh process, so its peak RSS growth is its own.
    loopline_side = side_process("loopline", folder, args.repeats)
    scipy_side = side_process("scipy", folder, args.repeats)
    loopline_values, scipy_values = loopline_side.pop("values"), scipy_side.pop("values")
    reference_missing = pd.read_parquet(reference_path, columns=common.CATEGORICAL).isna().any()
    current_missing = pd.read_parquet(current_path, columns=common.CATEGORICAL).isna().any()

    evidently_out = folder / "evidently.json"
    subprocess.run(
        [
            str(common.peers_python()),
            str(common.BENCH_DIR / "peers_drift.py"),
            "--reference", str(reference_path),
            "--current", str(current_path),
            "--numerical", ",".join(common.NUMERICAL),
            "--categorical", ",".join(common.CATEGORICAL),
            "--out", str(evidently_out),
        ],
        check=True,
    )
    evidently = json.loads(evidently_out.read_text())
    evidently_values = {
        column: {
            "ks_pvalue": methods.get("ks"),
            "chi2_pvalue": methods.get("chisquare"),
            "psi": methods.get("psi"),
            "js": methods.get("jensenshannon"),
        }
        for column, methods in evidently["values"].items()
    }

    speedup_evidently = evidently["seconds"] / loopline_side["median_s"]
    speedup_scipy = scipy_side["median_s"] / loopline_side["median_s"]
    memory_ratio = loopline_side["peak_bytes"] / evidently["peak_bytes"]
    complete_categorical = {
        name: loopline_values[name]
        for name in common.CATEGORICAL
        if not reference_missing[name] and not current_missing[name]
    }
    comparisons = {
        "scipy": {statistic: max_difference(loopline_values, scipy_values, statistic) for statistic in ("psi", "ks_statistic", "ks_pvalue", "js", "chi2_pvalue")},
        # Only KS matches Evidently's method: its PSI and JS bin numerical columns by the
        # Sturges rule over both windows, and its chi-squared is a goodness-of-fit test.
        "evidently_ks_pvalue": max_difference(loopline_values, evidently_values, "ks_pvalue"),
        # Evidently's categorical PSI and JS match where a column has no missing values:
        # it leaves missing values out of the categories but not out of the row count.
        "evidently_categorical_psi": max_difference(complete_categorical, evidently_values, "psi"),
        "evidently_categorical_js": max_difference(complete_categorical, evidently_values, "js"),
        "evidently_categorical_columns_compared": sorted(complete_categorical),
    }
    goal_met = speedup_evidently >= 50 and memory_ratio <= 0.1 and speedup_scipy > 1
    profile_file = None
    if not goal_met:
        profile_file = args.profile_dir / "drift-loopline.svg"
        profile_file.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(common.PEERS_VENV / "bin" / "py-spy"), "record", "--rate", "250", "--format", "flamegraph", "--output", str(profile_file),
             "--", sys.executable, __file__, "--side", "loopline", "--repeats", "3", "--side-out", str(folder / "profiled.json")],
            check=False,
        )
        profile_file = profile_file if profile_file.is_file() else None

    common.write_result(
        "drift",
        {
            "rows": args.rows,
            "features": {"numerical": len(common.NUMERICAL), "categorical": len(common.CATEGORICAL)},
            "profile_build_s": profile_seconds,
            "profile_bytes": profile_path.stat().st_size,
            "exact_ecdf": exact_ecdf,
            "loopline": loopline_side,
            "scipy": scipy_side,
            "evidently": {"seconds": evidently["seconds"], "peak_bytes": evidently["peak_bytes"], "version": evidently["evidently"], "pandas": evidently["pandas"]},
            "speedup_vs_evidently": speedup_evidently,
            "speedup_vs_scipy": speedup_scipy,
            "memory_ratio_vs_evidently": memory_ratio,
            "max_abs_difference": comparisons,
            "drifted_by_ks": sorted(name for name, value in loopline_values.items() if (value.get("ks_pvalue") or 1) < 0.05),
            "drifted_by_psi_0_25": sorted(name for name, value in loopline_values.items() if (value.get("psi") or 0) > 0.25),
            "values": {"loopline": loopline_values, "scipy": scipy_values, "evidently": evidently_values},
            "goal_met": goal_met,
            "profile": str(profile_file.relative_to(common.REPO_ROOT)) if profile_file else None,
        },
        args.results,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
