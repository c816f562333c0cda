"""What an operator sees: a request id in the headers and the logs, spans per stage, and /metrics per route,
stage, confidence and error code."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.app.test_answers_api import VACATION
from tests.conftest import Server, sample_server

OFF_TOPIC = "Which volcano erupted in Iceland in 2010?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sample_server(tmp_path_factory.mktemp("observe") / "data", 13, {"KB_OTEL_EXPORTER": "console"}) as srv:
        yield srv


def test_a_request_id_is_returned_and_printed_in_the_logs_and_spans_of_that_request(server: Server) -> None:
    with server.client() as c:
        mine = c.post("/v1/answer", json={"question": OFF_TOPIC}, headers={"X-Request-ID": "trace-me-42"})
        fresh = c.post("/v1/answer", json={"question": VACATION})
        forged = c.get("/v1/me", headers={"X-Request-ID": "not an id; <script>"})
    assert mine.headers["x-request-id"] == "trace-me-42"
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])  # a header that is not an id is replaced
    log = server.log.read_text()
    assert re.search(r"answer\.abstain .* request_id=trace-me-42", log)
    for span in ("retrieve", "rerank", "compress"):
        assert re.search(rf'"name": "{span}"(.|\n)*?"kb.request_id": "trace-me-42"', log), span


def test_metrics_show_latency_per_route_and_stage_confidence_and_errors_by_code(server: Server) -> None:
    with server.client() as c:
        assert c.post("/v1/answer", json={"question": VACATION}).status_code == 200
        assert c.post("/v1/answer", json={"question": ""}).status_code == 422
        assert c.get("/v1/conversations/nope").status_code == 404
    metrics = httpx.get(f"{server.url}/metrics").text
    assert re.search(r'kb_request_seconds_count\{method="POST",route="/v1/answer",status="200"\} [1-9]', metrics)
    assert re.search(r'kb_request_seconds_count\{method="POST",route="/v1/answer",status="422"\} 1\.0', metrics)
    for stage in ("retrieve", "rerank", "compress"):
        assert re.search(rf'kb_stage_seconds_count\{{stage="{stage}"\}} [1-9]', metrics), stage
    assert re.search(r"kb_retrieval_confidence_count [1-9]", metrics)
    assert 'kb_errors_total{code="invalid_request"} 1.0' in metrics
    assert 'kb_errors_total{code="not_found"} 1.0' in metrics
