"""Request ids, per-request latency, and tracing spans per answer stage.

Every request gets an id (the caller's `X-Request-ID`, else a new one) that is returned in the response
headers and printed in every log line written while serving it. Stages run inside an OpenTelemetry span; with no
exporter configured (the default) spans are no-ops.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

from retrieval.types import Usage

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
tracer = trace.get_tracer("kb")
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record, so the log format can print it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


@contextmanager
def stage(usage: Usage, name: str) -> Iterator[None]:
    """Time a stage into `usage.stages_ms` inside a tracing span of the same name."""
    t0 = time.perf_counter()
    with tracer.start_as_current_span(name, attributes={"kb.request_id": request_id.get()}):
        try:
            yield
        finally:
            usage.stages_ms[name] = (time.perf_counter() - t0) * 1000


def configure_tracing(exporter: str, service_name: str = "kb") -> None:
    """`otlp` (OTLP over HTTP; endpoint from OTEL_EXPORTER_OTLP_ENDPOINT), `console` (stdout) or `` (off)."""
    if not exporter:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise ValueError(f"KB_OTEL_EXPORTER={exporter!r}: use otlp, console, or leave it empty (off)")
    trace.set_tracer_provider(provider)


class RequestContext:
    """ASGI middleware: the request id in a context variable and the response headers, and the request's
    latency by route template and status reported to `observe` (streamed bodies count until their end)."""

    def __init__(self, app: Any, observe: Callable[[str, str, int, float], None]) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _VALID_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        status = 500
        t0 = time.perf_counter()

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.observe(path, scope.get("method", ""), status, time.perf_counter() - t0)
            request_id.reset(token)
