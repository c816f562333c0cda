"""Entry for separate Celery worker processes in server mode: `celery -A app.worker worker -P threads`.

Only with a Qdrant server (`KB_QDRANT_URL`): an embedded Edge shard can be opened by one process only, and
there `kb serve` runs the worker itself.
"""

from __future__ import annotations

from app.container import Container
from app.server import configure_logging
from app.settings import Settings
from ingestion.celery_app import set_pipeline

settings = Settings()
if settings.index.backend != "server":
    raise SystemExit(
        "separate workers need a Qdrant server (KB_QDRANT_URL); with the embedded index `kb serve` runs the worker"
    )
configure_logging(settings.log_level)
container = Container(settings)
container.warm_up()
set_pipeline(container.pipeline, container.adapter)
celery_app = container.celery
