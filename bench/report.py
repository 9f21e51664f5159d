"""Render docs/benchmarks.md from the results of one ``make bench`` run.

Every number in the page comes from the JSON results of that run; this module only
formats them and compares them with the goals below.
"""

from __future__ import annotations

import importlib
from typing import Any

# Goals, as ratios measured in the same run on the same machine.
GOAL_SERVING_THROUGHPUT = 20.0  # x MLflow's throughput, at least
GOAL_SERVING_P99 = 1 / 20  # x MLflow's p99, at most
GOAL_SERVING_VS_BARE = 2.0  # x the bare app's latency, at most
GOAL_DRIFT_SPEEDUP = 50.0  # x faster than Evidently, at least
GOAL_DRIFT_MEMORY = 0.1  # x Evidently's peak memory, at most
GOAL_EQUAL = 1e-6  # absolute difference of statistics where methods match
GOAL_FEATURES_SPEEDUP = 5.0
GOAL_ONE_ROW_S = 50e-6
GOAL_DAG_RATIO = 1.2
GOAL_BACKFILL_RATIO = 0.6
GOAL_REGISTRY_RATIO = 1.2

SCRIPTS = {
    "serving": "bench_serving",
    "drift": "bench_drift",
    "features": "bench_features",
    "dag_parsing": "bench_dag_parsing",
    "backfill": "bench_backfill",
    "registry": "bench_registry",
}
TITLES = {
    "serving": "1. Online scoring",
    "drift": "2. Drift",
    "features": "3. Feature transform",
    "dag_parsing": "4. DAG parsing",
    "backfill": "5. Backfill",
    "registry": "6. Registry",
}


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 1e-3:
        return f"{value * 1e6:.1f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:.1f} MiB"


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}×"


def verdict(met: bool | None) -> str:
    if met is None:
        return "not measured"
    return "met" if met else "**missed**"


def render(run: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    machine = run["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    peers = ", ".join(f"{name} {version}" for name, version in run["peers"].items())
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`bench/run_all.py`); do not edit by hand. Every figure below",
        "comes from one run of the six scripts in `bench/`, one after another on the same",
        "machine, and every goal is a ratio of two figures from that run.",
        "",
        f"* **Command:** `{run['command']}`, wall time {seconds(run['wall_s'])}",
        f"* **Date:** {run['started_at']}",
        f"* **Machine:** {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, {machine['os']}",
        f"* **Load average** (1, 5, 15 min) at start {_load(machine['load_average_at_start'])}, at end "
        f"{_load(run['load_average_at_end'])}. Other work shared the machine, so absolute numbers are noisy.",
        f"* **Loopline's environment:** Python {machine['python']}, {packages}",
        f"* **Peers' environment** (`bench/.venv-peers`, made by the bench): {peers}",
        "",
        "## Summary",
        "",
        "| measure | Loopline | peer | ratio | goal | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in SCRIPTS:
        outcome = run["outcomes"].get(name)
        if outcome is None:
            continue
        if name not in results:
            lines.append(f"| {TITLES[name]} | failed (exit code {outcome['exit_code']}) | | | | **not measured** |")
            continue
        lines.extend(SUMMARY_ROWS[name](results[name]))

    for name in SCRIPTS:
        outcome = run["outcomes"].get(name)
        if outcome is None:
            continue
        lines += ["", f"## {TITLES[name]}", ""]
        lines += _description(name)
        if name not in results:
            lines += [f"The script failed with exit code {outcome['exit_code']}. The end of its error output:", "", "```", outcome["stderr_tail"].strip(), "```"]
            continue
        result = results[name]
        lines += ["", f"Command: `{result['command']}` ({seconds(outcome['seconds'])})", ""]
        lines += DETAILS[name](result)
    lines.append("")
    return "\n".join(lines)


def _load(values) -> str:
    return " / ".join(f"{value:.2f}" for value in values)


def _description(name: str) -> list[str]:
    module = importlib.import_module(SCRIPTS[name])
    return module.__doc__.strip().split("\n\n", 1)[-1].splitlines()


def _profile_line(path: str | None) -> list[str]:
    return [f"Profile of the slow side: [{path}]({path.removeprefix('docs/')})"] if path else []


# -- summary rows -------------------------------------------------------------------------


def _serving_rows(result: dict) -> list[str]:
    servers, ratios, goals = result["servers"], result["ratios"], result["goals"]
    loopline, quiet, mlflow_side, bare = servers["loopline"], servers["loopline_no_access_log"], servers["mlflow"], servers["bare"]
    concurrency = result["concurrency"]
    return [
        f"| {TITLES['serving']}: throughput at concurrency {concurrency} | {loopline['throughput_rps']} req/s | MLflow {mlflow_side['throughput_rps']} req/s "
        f"| {ratio(ratios['throughput_vs_mlflow'])} | ≥ {GOAL_SERVING_THROUGHPUT:g}× | {verdict(goals['throughput_20x_mlflow'])} |",
        f"| p99 latency | {loopline['p99_ms']} ms | MLflow {mlflow_side['p99_ms']} ms | {ratio(ratios['p99_vs_mlflow'])} "
        f"| ≤ {GOAL_SERVING_P99:g}× | {verdict(goals['p99_twentieth_of_mlflow'])} |",
        f"| p50 / p99 latency vs the bare app | {loopline['p50_ms']} / {loopline['p99_ms']} ms | bare {bare['p50_ms']} / {bare['p99_ms']} ms "
        f"| {ratio(ratios['p50_vs_bare'])} / {ratio(ratios['p99_vs_bare'])} | ≤ {GOAL_SERVING_VS_BARE:g}× | {verdict(goals['within_2x_bare'])} |",
        f"| context: the bare app vs MLflow | – | – | {ratio(bare['throughput_rps'] / mlflow_side['throughput_rps'])} throughput, "
        f"{ratio(bare['p99_ms'] / mlflow_side['p99_ms'])} p99 | the practical limit for the MLflow goals | – |",
        f"| same with `loopline serve --no-access-log` | {quiet['throughput_rps']} req/s, p50 {quiet['p50_ms']} ms, p99 {quiet['p99_ms']} ms "
        f"| as above | {ratio(ratios['no_access_log_throughput_vs_mlflow'])} throughput, {ratio(ratios['no_access_log_p99_vs_mlflow'])} p99 of MLflow; "
        f"{ratio(ratios['no_access_log_p50_vs_bare'])} p50 of bare | as above | "
        f"{verdict(ratios['no_access_log_throughput_vs_mlflow'] >= GOAL_SERVING_THROUGHPUT and ratios['no_access_log_p99_vs_mlflow'] <= GOAL_SERVING_P99)} vs MLflow, "
        f"{verdict(ratios['no_access_log_p50_vs_bare'] <= GOAL_SERVING_VS_BARE)} vs bare |",
    ]


def _drift_rows(result: dict) -> list[str]:
    loopline, scipy_side, evidently = result["loopline"], result["scipy"], result["evidently"]
    differences = result["max_abs_difference"]
    scipy_max = max(value for value in differences["scipy"].values() if value is not None)
    evidently_ks = differences["evidently_ks_pvalue"]
    rows = result["rows"]
    return [
        f"| {TITLES['drift']}: time, {rows:,} vs {rows:,} rows | {seconds(loopline['median_s'])} | Evidently {seconds(evidently['seconds'])} "
        f"| {ratio(result['speedup_vs_evidently'])} faster | ≥ {GOAL_DRIFT_SPEEDUP:g}× | {verdict(result['speedup_vs_evidently'] >= GOAL_DRIFT_SPEEDUP)} |",
        f"| peak memory | {mib(loopline['peak_bytes'])} | Evidently {mib(evidently['peak_bytes'])} | {ratio(result['memory_ratio_vs_evidently'])} "
        f"| ≤ {GOAL_DRIFT_MEMORY:g}× | {verdict(result['memory_ratio_vs_evidently'] <= GOAL_DRIFT_MEMORY)} |",
        f"| time vs plain SciPy per column | {seconds(loopline['median_s'])} | SciPy {seconds(scipy_side['median_s'])} "
        f"| {ratio(result['speedup_vs_scipy'])} faster | > 1× | {verdict(result['speedup_vs_scipy'] > 1)} |",
        f"| statistics, max abs difference | – | SciPy (all four tests): {scipy_max:.2g}; Evidently (KS p-value): {evidently_ks:.2g} "
        f"| – | ≤ {GOAL_EQUAL:g} | {verdict(scipy_max <= GOAL_EQUAL and evidently_ks <= GOAL_EQUAL)} |",
    ]


def _features_rows(result: dict) -> list[str]:
    batch, one_row = result["batch"], result["one_row"]
    rows = result["rows"]
    return [
        f"| {TITLES['features']}: {rows:,} rows vs naive pandas | {seconds(batch['loopline']['median_s'])} | {seconds(batch['naive']['median_s'])} "
        f"| {ratio(result['speedup_vs_naive'])} faster | ≥ {GOAL_FEATURES_SPEEDUP:g}× | {verdict(result['speedup_vs_naive'] >= GOAL_FEATURES_SPEEDUP)} |",
        f"| vs scikit-learn SimpleImputer + frequency map | {seconds(batch['loopline']['median_s'])} | {seconds(batch['sklearn']['median_s'])} "
        f"| {ratio(result['speedup_vs_sklearn'])} faster | ≥ {GOAL_FEATURES_SPEEDUP:g}× | {verdict(result['speedup_vs_sklearn'] >= GOAL_FEATURES_SPEEDUP)} |",
        f"| outputs equal (max abs difference) | – | naive {result['max_abs_difference_vs_loopline']['naive']:.2g}, "
        f"scikit-learn {result['max_abs_difference_vs_loopline']['sklearn']:.2g} | – | ≤ 1e-9 | {verdict(result['outputs_equal'])} |",
        f"| one row, `transform_records` | {seconds(one_row['loopline_transform_records_s'])} | scikit-learn on a one-row DataFrame "
        f"{seconds(one_row['sklearn_one_row_frame_s'])} | {ratio(one_row['sklearn_one_row_frame_s'] / one_row['loopline_transform_records_s'])} faster "
        f"| < {seconds(GOAL_ONE_ROW_S)} | {verdict(result['goal_one_row_met'])} |",
    ]


def _dag_rows(result: dict) -> list[str]:
    files = result["files"]
    baseline = files["minimal TaskFlow DAG"]["median_s"]
    slowest = max((label for label in files if label.startswith("dags/")), key=lambda label: files[label]["ratio"])
    return [
        f"| {TITLES['dag_parsing']}: slowest DAG file ({slowest}) | {seconds(files[slowest]['median_s'])} | minimal TaskFlow DAG {seconds(baseline)} "
        f"| {ratio(result['max_dag_ratio'])} | ≤ {GOAL_DAG_RATIO:g}× | {verdict(result['goal_met'])} |"
    ]


def _backfill_rows(result: dict) -> list[str]:
    return [
        f"| {TITLES['backfill']}: {result['days']} days, {result['workers']} workers | {seconds(result['backfill_s'])} "
        f"| {result['days']} × one day's run ({seconds(result['single_day_s'])}) = {seconds(result['serial_estimate_s'])} "
        f"| {ratio(result['ratio'])} | ≤ {GOAL_BACKFILL_RATIO:g}× | {verdict(result['goal_met'])} |"
    ]


def _registry_rows(result: dict) -> list[str]:
    few, many = result["few"], result["many"]
    return [
        f"| {TITLES['registry']}: champion lookup | {result['many_runs']:,} runs: {seconds(many['lookup']['median_s'])} "
        f"| {result['few_runs']} runs: {seconds(few['lookup']['median_s'])} | {ratio(result['lookup_ratio'])} | ≤ {GOAL_REGISTRY_RATIO:g}× "
        f"| {verdict(result['lookup_ratio'] <= GOAL_REGISTRY_RATIO)} |",
        f"| promotion gate | {result['many_runs']:,} runs: {seconds(many['gate']['median_s'])} "
        f"| {result['few_runs']} runs: {seconds(few['gate']['median_s'])} | {ratio(result['gate_ratio'])} | ≤ {GOAL_REGISTRY_RATIO:g}× "
        f"| {verdict(result['gate_ratio'] <= GOAL_REGISTRY_RATIO)} |",
    ]


SUMMARY_ROWS = {
    "serving": _serving_rows,
    "drift": _drift_rows,
    "features": _features_rows,
    "dag_parsing": _dag_rows,
    "backfill": _backfill_rows,
    "registry": _registry_rows,
}


# -- details ------------------------------------------------------------------------------


def _serving_details(result: dict) -> list[str]:
    lines = [
        f"{result['requests']} timed requests per server after {result['warmup']} warm-up requests, concurrency {result['concurrency']}.",
        "",
        "| server | throughput | p50 | p95 | p99 | max | statuses | server RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    labels = {"loopline": "Loopline (access log on)", "loopline_no_access_log": "Loopline `--no-access-log`", "mlflow": "MLflow `models serve`", "bare": "bare FastAPI + NumPy"}
    for name, label in labels.items():
        server = result["servers"][name]
        lines.append(
            f"| {label} | {server['throughput_rps']} req/s | {server['p50_ms']} ms | {server['p95_ms']} ms | {server['p99_ms']} ms "
            f"| {server['max_ms']} ms | {server['statuses']} | {server['server_pid_rss_mib']} MiB |"
        )
    return lines + [""] + _profile_line(result.get("profile"))


def _drift_details(result: dict) -> list[str]:
    differences = result["max_abs_difference"]
    lines = [
        f"Reference profile built once in {seconds(result['profile_build_s'])} ({result['profile_bytes']:,} bytes of JSON; "
        f"every stored CDF exact: {result['exact_ecdf']}).",
        "",
        "| side | time | peak memory |",
        "| --- | --- | --- |",
        f"| Loopline, against the stored profile (median of {result['loopline']['repeats']}) | {seconds(result['loopline']['median_s'])} | {mib(result['loopline']['peak_bytes'])} |",
        f"| SciPy per column, raw rows (median of {result['scipy']['repeats']}) | {seconds(result['scipy']['median_s'])} | {mib(result['scipy']['peak_bytes'])} |",
        f"| Evidently {result['evidently']['version']} (pandas {result['evidently']['pandas']}), three presets, one run | {seconds(result['evidently']['seconds'])} | {mib(result['evidently']['peak_bytes'])} |",
        "",
        "Largest absolute difference of each statistic from Loopline's:",
        "",
        "| statistic | SciPy, same method | Evidently |",
        "| --- | --- | --- |",
        f"| KS statistic | {_number(differences['scipy']['ks_statistic'])} | not reported by Evidently |",
        f"| KS p-value | {_number(differences['scipy']['ks_pvalue'])} | {_number(differences['evidently_ks_pvalue'])} (same method) |",
        f"| PSI | {_number(differences['scipy']['psi'])} | categorical columns without missing values "
        f"({', '.join(differences['evidently_categorical_columns_compared'])}): {_number(differences['evidently_categorical_psi'])}, "
        "because the smoothing of a share of 0 differs (Evidently: 1e-4, or the smallest share / 10^6 where that share is at most 1e-4; "
        "Loopline: ε = 1e-4); numerical columns differ by method (Evidently bins both windows together by the Sturges rule) |",
        f"| Jensen-Shannon distance | {_number(differences['scipy']['js'])} | same categorical columns: {_number(differences['evidently_categorical_js'])}; "
        "numerical columns differ by method, as for PSI |",
        f"| chi-squared p-value | {_number(differences['scipy']['chi2_pvalue'])} | differs by method (Evidently runs a goodness-of-fit test against the reference shares; Loopline the 2 × k contingency test) |",
        "",
        f"Columns with KS p-value below 0.05 (Loopline): {', '.join(result['drifted_by_ks'])}.",
        f"Columns with PSI above 0.25 (Loopline): {', '.join(result['drifted_by_psi_0_25'])}.",
        "",
    ]
    return lines + _profile_line(result.get("profile"))


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _features_details(result: dict) -> list[str]:
    batch, one_row = result["batch"], result["one_row"]
    lines = [
        f"Fit of the processor on the {result['rows']:,} rows: {seconds(result['fit_s'])} (not in the batch times).",
        "",
        "| side | median | min | max |",
        "| --- | --- | --- | --- |",
    ]
    for name, label in (("loopline", "Loopline `FeatureProcessor.transform`"), ("naive", "naive pandas, recomputed per batch"), ("sklearn", "scikit-learn SimpleImputer + frequency map")):
        lines.append(f"| {label} | {seconds(batch[name]['median_s'])} | {seconds(batch[name]['min_s'])} | {seconds(batch[name]['max_s'])} |")
    lines += [
        "",
        "| one row | time per call |",
        "| --- | --- |",
        f"| Loopline `transform_records` (serving path) | {seconds(one_row['loopline_transform_records_s'])} |",
        f"| Loopline `transform` on a one-row DataFrame | {seconds(one_row['loopline_transform_one_row_frame_s'])} |",
        f"| scikit-learn SimpleImputer + frequency map on a one-row DataFrame | {seconds(one_row['sklearn_one_row_frame_s'])} |",
        "",
    ]
    for key, path in result.get("profiles", {}).items():
        lines += _profile_line(path)
    return lines


def _dag_details(result: dict) -> list[str]:
    lines = [f"Median of {result['rounds']} fresh interpreters per file.", "", "| file | median | min | max | ratio to the minimal DAG |", "| --- | --- | --- | --- | --- |"]
    for label, values in result["files"].items():
        lines.append(f"| {label} | {seconds(values['median_s'])} | {seconds(values['min_s'])} | {seconds(values['max_s'])} | {ratio(values['ratio'])} |")
    return lines + [""] + _profile_line(result.get("profile"))


def _backfill_details(result: dict) -> list[str]:
    samples = ", ".join(seconds(value) for value in result["single_day_samples_s"])
    return [
        f"Days from {result['first_day']}. One day's run in a fresh process: {samples} (median {seconds(result['single_day_s'])}).",
        f"A warm day inside a worker: median {seconds(result['warm_day_median_s'])}. Against {result['days']} warm days in one process",
        f"the backfill's ratio is {ratio(result['ratio_vs_warm_serial'])}, the gain from the two workers alone; the rest of the",
        "headline ratio comes from paying the imports once per worker instead of once per day.",
        "",
        *_profile_line(result.get("profile")),
    ]


def _registry_details(result: dict) -> list[str]:
    lines = [
        f"Filling the experiment to {result['many_runs']:,} runs took {seconds(result['fill_s'])}.",
        "",
        f"| call | {result['few_runs']} runs: median (min–max) | {result['many_runs']:,} runs: median (min–max) |",
        "| --- | --- | --- |",
    ]
    for key, label in (("lookup", "champion lookup"), ("gate", "promotion gate")):
        few, many = result["few"][key], result["many"][key]
        lines.append(
            f"| {label} ({few['repeats']} calls) | {seconds(few['median_s'])} ({seconds(few['min_s'])}–{seconds(few['max_s'])}) "
            f"| {seconds(many['median_s'])} ({seconds(many['min_s'])}–{seconds(many['max_s'])}) |"
        )
    return lines + [""] + _profile_line(result.get("profile"))


DETAILS = {
    "serving": _serving_details,
    "drift": _drift_details,
    "features": _features_details,
    "dag_parsing": _dag_details,
    "backfill": _backfill_details,
    "registry": _registry_details,
}
