"""`kb serve`: one process that owns the index and runs the API and (embedded) the Celery worker."""

from __future__ import annotations

import logging
import os

import uvicorn

from app.auth import create_key
from app.db import init_db
from app.observability import RequestIdFilter, configure_tracing
from app.settings import Settings

log = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s request_id=%(request_id)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
    for noisy in ("httpx", "sentence_transformers", "transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def bootstrap_admin_key(settings: Settings) -> str:
    """The first start creates an admin key and keeps it in <data_dir>/admin.key (mode 600) for the CLI."""
    path = settings.admin_key_file
    if path.exists():
        return path.read_text().strip()
    sessions = init_db(settings.sql_url)
    with sessions() as db:
        key = create_key(db, "bootstrap-admin", ["public"], admin=True).key
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def serve(settings: Settings, ingest_sample: bool = False) -> None:
    from app.main import create_app

    configure_logging(settings.log_level)
    configure_tracing(settings.otel_exporter)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = bootstrap_admin_key(settings)
    app = create_app(settings, ingest_sample=ingest_sample)
    models = [f"{t.name}={t.model}@{t.base_url}" for t in settings.tier_settings if t.kind == "openai"]
    answers = (
        f"tiers extractive, {', '.join(models)}; routing {settings.routing}"
        if models
        else "extractive (set KB_LLM_BASE_URL and KB_LLM_MODEL, or KB_TIERS, to generate them)"
    )
    banner = (
        f"\n  kb is starting on {settings.server_url}  (API docs: {settings.server_url}/docs)\n"
        f"  chat page: {settings.server_url}/chat   (sign in with the key below)\n"
        f"  answers: {answers}\n"
        f"  admin API key: {key}   (also in {settings.admin_key_file})\n"
        f'  ask:  .venv/bin/kb answer "How many vacation days do I get?"\n'
        f"   or:  curl -s {settings.server_url}/v1/answer -H 'Authorization: Bearer {key}' "
        "-H 'Content-Type: application/json' -d '{\"question\": \"How many vacation days do I get?\"}'\n"
        "  once your own documents are in: .venv/bin/kb adapt --minutes 10   (trains a reranker on them; it is\n"
        "  used only if it ranks held-back passages better than the current search)\n"
    )
    print(banner, flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
