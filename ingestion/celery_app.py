"""The Celery app and the ingestion task; the same task code runs in `kb serve`, a worker, or the CLI."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from ingestion.adapt_job import AdaptRunner
from ingestion.pipeline import IngestPipeline
from retrieval.store import StoreUnavailable

log = logging.getLogger(__name__)

celery_app = Celery("kb")
_pipeline: IngestPipeline | None = None
_adapter: AdaptRunner | None = None


@dataclass(frozen=True)
class BrokerSettings:
    """Broker URL (empty: the embedded filesystem broker under `data_dir`) and redelivery timing."""

    url: str = ""
    data_dir: Path = Path("data")
    visibility_timeout: int = 3600
    concurrency: int = 2


def configure_celery(settings: BrokerSettings) -> Celery:
    """Point the app at its broker. Redis gets kombu's fast unacked-restore knobs (notes/celery-embedded.md)."""
    transport_options: dict[str, object]
    if settings.url:
        broker = settings.url
        # visibility_timeout must exceed the longest task, or a running task is delivered twice.
        transport_options = {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": 2,
            "unacked_restore_throttle": 1,
        }
    else:
        folder = settings.data_dir / "broker"
        (folder / "in").mkdir(parents=True, exist_ok=True)
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        (folder / "control").mkdir(parents=True, exist_ok=True)
        broker = "filesystem://"
        transport_options = {
            "data_folder_in": str(folder / "in"),
            "data_folder_out": str(folder / "in"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),  # else kombu writes it into the working directory
            "store_processed": False,
        }
    celery_app.conf.update(
        broker_url=broker,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_default_queue="kb-ingest",
    )
    return celery_app


def set_pipeline(pipeline: IngestPipeline | None, adapter: AdaptRunner | None = None) -> None:
    """The process that owns the index hands its pipeline (and its reranker adaptation) to the task code."""
    global _pipeline, _adapter
    _pipeline = pipeline
    _adapter = adapter


# Every job task: acknowledged only when done (a dead worker's task is redelivered), retried with back-off
# while Qdrant or the broker is away.
_JOB_TASK: dict[str, Any] = {
    "acks_late": True,
    "autoretry_for": (StoreUnavailable, ConnectionError),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "max_retries": 5,
}


@celery_app.task(name="kb.ingest_job", **_JOB_TASK)
def ingest_job(job_id: str) -> dict[str, object]:
    """Run one ingestion job; idempotent, so redelivery after a crash repeats no embedding or point."""
    if _pipeline is None:
        raise RuntimeError("no ingestion pipeline in this process; start `kb serve` or `kb worker`")
    return _pipeline.run_job(job_id)


@celery_app.task(name="kb.adapt_job", **_JOB_TASK)
def adapt_job(job_id: str) -> dict[str, object]:
    """Train a reranker on pairs mined from the index and promote it if it ranks held-back pairs better."""
    if _adapter is None:
        raise RuntimeError("no reranker adaptation in this process; start `kb serve` or `kb worker`")
    return _adapter.run_job(job_id)
