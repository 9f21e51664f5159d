"""One computed monitoring metric, before the model version and policy are attached."""

from __future__ import annotations

from typing import NamedTuple


class MetricValue(NamedTuple):
    """A metric of the day: its value, or None with the status saying why there is none."""

    metric: str
    feature: str | None
    value: float | None
    status: str  # "ok", or why there is no value ("insufficient_data", "no_reference", ...)
    sample_size: int
