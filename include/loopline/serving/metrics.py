"""Server metrics in the Prometheus text exposition format (version 0.0.4).

A small, lock-protected registry of counters and histograms, enough for ``GET /metrics``:
requests by status, latency per request stage, model reloads and dropped monitoring
records. Label values are fixed sets (status codes, the four stages), so the number of
series stays bounded.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Mapping

# Upper bounds of the latency buckets, in seconds. Single-record requests take about a
# millisecond here, so the buckets are finest below 10 ms.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STAGES = ("preprocessing", "feature_computation", "inference", "postprocessing", "total")


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds


class ServerMetrics:
    """Counters and per-stage latency histograms of one model server process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, int] = {}
        self._records = 0
        self._reloads: dict[str, int] = {"success": 0, "failure": 0}
        self._stages = {stage: _Histogram() for stage in STAGES}

    def observe_request(self, status_code: int, records: int, timings_ms: Mapping[str, float]) -> None:
        """Count one request and, for a scored one, add its stage durations."""
        with self._lock:
            key = str(status_code)
            self._requests[key] = self._requests.get(key, 0) + 1
            if status_code == 200:
                self._records += records
                for stage in STAGES:
                    if stage in timings_ms:
                        self._stages[stage].observe(timings_ms[stage] / 1000.0)

    def observe_reload(self, succeeded: bool) -> None:
        with self._lock:
            self._reloads["success" if succeeded else "failure"] += 1

    def render(self, gauges: Mapping[str, tuple[str, float]] = (), dropped: Callable[[], int] | None = None) -> str:
        """Return every metric in the Prometheus text format."""
        lines = [
            "# HELP loopline_requests_total Prediction requests by HTTP status code.",
            "# TYPE loopline_requests_total counter",
        ]
        with self._lock:
            for status, count in sorted(self._requests.items()):
                lines.append(f'loopline_requests_total{{status="{status}"}} {count}')
            lines += [
                "# HELP loopline_scored_records_total Records scored in successful requests.",
                "# TYPE loopline_scored_records_total counter",
                f"loopline_scored_records_total {self._records}",
                "# HELP loopline_model_reloads_total Model version loads by outcome.",
                "# TYPE loopline_model_reloads_total counter",
            ]
            for outcome, count in sorted(self._reloads.items()):
                lines.append(f'loopline_model_reloads_total{{outcome="{outcome}"}} {count}')
            lines += [
                "# HELP loopline_stage_seconds Duration of each stage of a successful request.",
                "# TYPE loopline_stage_seconds histogram",
            ]
            for stage, histogram in self._stages.items():
                cumulative = 0
                for bound, count in zip(LATENCY_BUCKETS, histogram.counts, strict=False):
                    cumulative += count
                    lines.append(f'loopline_stage_seconds_bucket{{stage="{stage}",le="{bound}"}} {cumulative}')
                cumulative += histogram.counts[-1]
                lines.append(f'loopline_stage_seconds_bucket{{stage="{stage}",le="+Inf"}} {cumulative}')
                lines.append(f'loopline_stage_seconds_sum{{stage="{stage}"}} {histogram.total:.9f}')
                lines.append(f'loopline_stage_seconds_count{{stage="{stage}"}} {cumulative}')

        if dropped is not None:
            lines += [
                "# HELP loopline_dropped_log_records_total Monitoring records dropped because the queue was full or the store failed.",
                "# TYPE loopline_dropped_log_records_total counter",
                f"loopline_dropped_log_records_total {dropped()}",
            ]
        for name, (help_text, value) in dict(gauges).items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"
