"""The latency report: stage shares, percentiles, the pie PNG and the Mermaid block."""

from __future__ import annotations

import pytest

from loopline.monitoring import store
from loopline.serving import latency_report


@pytest.fixture
def engine(tmp_path):
    return store.get_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")


def _timing(request_id: str, stages: tuple[float, float, float, float], status_code: int = 200) -> dict:
    preprocessing, feature, inference, postprocessing = stages
    return {
        "request_id": request_id,
        "model_version": "1",
        "records": 1,
        "status_code": status_code,
        "preprocessing_ms": preprocessing,
        "feature_ms": feature,
        "inference_ms": inference,
        "postprocessing_ms": postprocessing,
        "total_ms": sum(stages),
    }


def test_latency_report_shares_and_files(engine, tmp_path):
    rows = [_timing(f"r{index}", (0.1, 0.2, 0.6, 0.1)) for index in range(99)]
    rows.append(_timing("slow", (1.0, 2.0, 6.0, 1.0)))
    # A rejected request is not part of the picture of scored requests.
    rows.append(_timing("rejected", (50.0, 0.0, 0.0, 0.0), status_code=422))
    store.insert_request_timings(engine, rows)

    result = latency_report.write_report(engine, tmp_path / "report")

    assert result["requests"] == 100
    stages = result["stages"]
    assert stages["inference"]["share"] == pytest.approx(0.6)
    assert stages["preprocessing"]["share"] == pytest.approx(0.1)
    assert sum(values["share"] for label, values in stages.items() if label != "total") == pytest.approx(1.0)
    assert stages["total"]["p50_ms"] == pytest.approx(1.0)
    assert stages["total"]["p99_ms"] > stages["total"]["p50_ms"]
    assert (tmp_path / "report" / "latency.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (tmp_path / "report" / "latency.md").read_text()
    assert '```mermaid\npie title Share of request time (100 requests)\n    "preprocessing" : 10.00' in markdown
    assert '"inference" : 60.00' in markdown
    assert "| total | 100% | 1.000 |" in markdown


def test_latency_report_empty_store_says_what_to_do(engine, tmp_path):
    with pytest.raises(ValueError, match="contains no successful model-server request yet; send POST /predict first"):
        latency_report.write_report(engine, tmp_path / "report")
