"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.deps import ContainerDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(container: ContainerDep) -> JSONResponse:
    """Qdrant, SQL and the broker each answer, or 503 says which does not."""
    checks: dict[str, str] = {}

    def check_all() -> None:
        try:
            container.store.ping()
            checks["qdrant"] = "ok"
        except Exception as exc:
            checks["qdrant"] = f"down: {exc}"
        try:
            with container.sessions() as db:
                db.execute(text("SELECT 1"))
            checks["sql"] = "ok"
        except Exception as exc:
            checks["sql"] = f"down: {exc}"
        try:
            with container.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"down: {exc}"

    await run_in_threadpool(check_all)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(container: ContainerDep) -> Response:
    """Prometheus exposition: answers by kind, LLM tokens, time to first token, feedback."""
    body = await run_in_threadpool(generate_latest, container.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
