"""The FastAPI application: routes over a Container built once per process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.api import (
    errors,
    routes_admin,
    routes_agents,
    routes_chat,
    routes_health,
    routes_openai,
    routes_query,
    routes_web,
)
from app.container import Container
from app.observability import RequestContext
from app.settings import Settings

log = logging.getLogger(__name__)


def _observe_request(app: FastAPI, route: str, method: str, status: int, seconds: float) -> None:
    container = getattr(app.state, "container", None)
    if container is not None:
        container.metrics.observe_request(route, method, status, seconds)


def create_app(
    settings: Settings | None = None, container: Container | None = None, ingest_sample: bool = False
) -> FastAPI:
    """Build the app; the lifespan warms the models, starts the embedded worker and closes the index."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        c = container or Container(settings)
        app.state.container = c
        c.warm_up()
        if settings.index.backend == "embedded":
            c.recover_runs()
        if settings.worker_enabled:
            c.start_worker()
        if ingest_sample:
            c.ingest_sample()
        log.info("api.ready url=%s backend=%s", settings.server_url, settings.index.backend)
        try:
            yield
        finally:
            await c.close_clients()
            c.close()

    app = FastAPI(
        title="kb: grounded answers over your documents",
        version="0.1.0",
        lifespan=lifespan,
        description=(
            "Hybrid, permission-filtered search and cited answers. Authenticate with 'Authorization: Bearer <key>'."
        ),
    )
    errors.install(app)
    # Added last, so it wraps everything: exception handlers, routes and streamed bodies.
    app.add_middleware(RequestContext, observe=lambda *a: _observe_request(app, *a))
    app.include_router(routes_health.router)
    app.include_router(routes_query.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_agents.router)
    app.include_router(routes_chat.router)
    app.include_router(routes_openai.router)
    app.include_router(routes_web.router)
    app.mount("/static", StaticFiles(directory=routes_web.WEB_DIR), name="static")
    return app
