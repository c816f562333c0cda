"""Errors as JSON `{"error": {"code", "message"}}`, with a status that says whose fault it is."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.errors import AgentError
from app.container import BrokerUnavailable
from app.quotas import QuotaExceeded
from app.services import PromptTooLong
from ingestion.catalog import CatalogError, Conflict, NotFound
from retrieval.store import StoreUnavailable

log = logging.getLogger(__name__)
# Agent errors by code: whose fault, and what kind (a missing run, a run in the wrong state, a denied approval).
AGENT_STATUS = {"run_not_found": 404, "invalid_run_state": 409, "approval_denied": 403}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.param = status, code, message, headers, param
        self.extra = extra or {}


def _type(status: int) -> str:
    """OpenAI's error `type`: whose fault it is, in the words OpenAI clients expect."""
    if status in (401, 403):
        return "authentication_error" if status == 401 else "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_body(code: str, message: str, status: int = 400, **extra: object) -> dict[str, object]:
    """`{"error": {code, message, type, param}}`: our format and OpenAI's at once, so OpenAI clients read it."""
    param = extra.pop("param", extra.get("field"))
    return {"error": {"code": code, "message": message, "type": _type(status), "param": param, **extra}}


def _openai_path(request: Request) -> bool:
    return request.url.path.startswith("/v1/chat/")


def _field(loc: tuple[object, ...] | list[object]) -> str:
    """`("body", "top_k")` → `top_k`: the first element only says where the value travelled."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _respond(
    request: Request, body: dict[str, object], status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The error response, counted by code in /metrics (kb_errors_total)."""
    container = getattr(request.app.state, "container", None)
    error = body.get("error")
    if container is not None and isinstance(error, dict):
        container.metrics.count_error(str(error.get("code")))
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        body = error_body(exc.code, exc.message, exc.status, param=exc.param, **exc.extra)
        return _respond(request, body, exc.status, exc.headers)

    @app.exception_handler(AgentError)
    async def _agent(request: Request, exc: AgentError) -> JSONResponse:
        status = AGENT_STATUS.get(exc.code, 400)
        return _respond(request, error_body(exc.code, str(exc), status), status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        field = _field(first.get("loc", ()))
        message = f"{field}: {first.get('msg', 'invalid value')}"
        fields = [{"field": _field(e.get("loc", ())), "message": e.get("msg")} for e in errors]
        # OpenAI answers a malformed request with 400; our own routes keep FastAPI's 422.
        status = 400 if _openai_path(request) else 422
        return _respond(request, error_body("invalid_request", message, status, field=field, fields=fields), status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _respond(request, error_body(code, str(exc.detail), exc.status_code), exc.status_code)

    @app.exception_handler(CatalogError)
    async def _catalog(request: Request, exc: CatalogError) -> JSONResponse:
        return _respond(request, error_body("invalid_request", str(exc), 422, field=exc.field), 422)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _respond(request, error_body("not_found", str(exc), 404), 404)

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> JSONResponse:
        return _respond(request, error_body("conflict", str(exc), 409), 409)

    @app.exception_handler(StoreUnavailable)
    async def _store(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.error("qdrant.unavailable error=%s", exc)
        return _respond(request, error_body("qdrant_unavailable", str(exc), 503, component="qdrant"), 503)

    @app.exception_handler(BrokerUnavailable)
    async def _broker(request: Request, exc: BrokerUnavailable) -> JSONResponse:
        log.error("broker.unavailable error=%s", exc)
        return _respond(request, error_body("broker_unavailable", str(exc), 503, component="broker"), 503)

    @app.exception_handler(QuotaExceeded)
    async def _quota(request: Request, exc: QuotaExceeded) -> JSONResponse:
        body = error_body("quota_exceeded", str(exc), 429)
        return _respond(request, body, 429, {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(PromptTooLong)
    async def _too_long(request: Request, exc: PromptTooLong) -> JSONResponse:
        return _respond(request, error_body("context_length_exceeded", str(exc), 400, param="question"), 400)
