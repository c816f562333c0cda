"""The reranker adaptation job: mine pairs from the live index, train within a time budget, promote if better.

Runs as a Celery task like every other job, so it has progress, heartbeats (the watchdog re-queues it if its
worker dies), cancellation and a report in the job's `detail`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from ingestion.inflight import InFlight
from ingestion.models import Job, utcnow
from retrieval.adapt import AdaptSettings, Scorer, adapt
from retrieval.embedder import TextEmbedder
from retrieval.search import Retriever
from retrieval.store import Store, StoreUnavailable
from retrieval.types import Chunk, Principal, SearchMode

log = logging.getLogger(__name__)

_BEAT_SECONDS = 5.0  # progress, heartbeat and the cancel check at most this often


class AdaptCancelled(Exception):
    """An operator cancelled the adaptation; nothing is promoted."""


def engine_negatives(retriever: Retriever, principal: Principal) -> Callable[[str, int], list[Chunk]]:
    """Hard negatives from the engine itself, from BM25 and dense search in turns (one search per pair: mining
    thousands of pairs then costs one query embedding for every other pair, not two searches for each)."""
    turn = itertools.cycle((SearchMode.BM25, SearchMode.DENSE))

    def negatives_for(query: str, k: int) -> list[Chunk]:
        return [hit.chunk for hit in retriever.search(query, principal, next(turn), k)]

    return negatives_for


class AdaptRunner:
    """Owns what an adaptation needs; `run_job` is what the Celery task calls."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: Store,
        retriever: Retriever,
        embedder: TextEmbedder,
        base_model: str,
        models_dir: Path,
        settings: AdaptSettings,
        current: Callable[[], Scorer | None] = lambda: None,
        on_promoted: Callable[[Path], None] = lambda path: None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.retriever = retriever
        self.embedder = embedder
        self.base_model = base_model
        self.models_dir = models_dir
        self.settings = settings
        self.current = current
        self.on_promoted = on_promoted
        self._running = InFlight()

    def is_running(self, job_id: str) -> bool:
        return job_id in self._running

    def run_job(self, job_id: str) -> dict[str, Any]:
        """Run the job to its end; a duplicate delivery while it runs here is ignored."""
        with self._running.claim(job_id) as claimed:
            if not claimed:
                log.info("adapt.skip_duplicate job=%s", job_id)
                return {"id": job_id, "status": "running"}
            done = threading.Event()
            beat = threading.Thread(target=self._beat, args=(job_id, done), name="adapt-heartbeat", daemon=True)
            beat.start()
            try:
                return self._run(job_id)
            finally:
                done.set()
                beat.join()

    def _beat(self, job_id: str, done: threading.Event) -> None:
        # Mining and comparing take minutes on a large corpus: the watchdog must not think the job was lost.
        while not done.wait(_BEAT_SECONDS):
            with self.sessions() as db:
                db.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow()))
                db.commit()

    def _run(self, job_id: str) -> dict[str, Any]:
        with self.sessions() as db:
            job = db.get(Job, job_id)
            if job is None:
                raise LookupError(f"job {job_id} does not exist")
            if job.status in {"succeeded", "failed", "cancelled"}:
                return job.progress()
            if job.status == "cancelling":  # cancelled while it waited in the queue
                job.status, job.finished_at = "cancelled", utcnow()
                db.commit()
                return job.progress()
            budget = float((job.detail or {}).get("time_budget_s") or self.settings.time_budget_s)
            job.status, job.started_at, job.attempts = "running", utcnow(), job.attempts + 1
            job.heartbeat_at = utcnow()
            job.detail = {"time_budget_s": budget, "fraction": 0.0, "stage": "mining"}
            db.commit()
        try:
            report = self._adapt(job_id, budget)
        except AdaptCancelled:
            self._end(job_id, "cancelled", "cancelled by an operator")
        except ValueError as exc:  # too few pairs: the message says what to index
            self._end(job_id, "failed", str(exc))
        except StoreUnavailable:
            raise  # the task retries with back-off; the job stays running until then
        except Exception as exc:
            log.exception("adapt.failed job=%s", job_id)
            self._end(job_id, "failed", f"{type(exc).__name__}: {exc}")
        else:
            if report["replaced"]:
                self.on_promoted(Path(report["model_path"]))
            self._end(job_id, "succeeded", detail={"fraction": 1.0, "stage": "done", "report": report})
        with self.sessions() as db:
            done = db.get(Job, job_id)
            assert done is not None
            return done.progress()

    def _adapt(self, job_id: str, budget: float) -> dict[str, Any]:
        chunks = list(self.store.chunks())
        groups = sorted({g for c in chunks for g in c.acl})
        # The job reads every chunk, so its searches may too: hard negatives from any document.
        principal = Principal("adapt", tuple(groups), ("admin",))
        last = [0.0]

        def progress(fraction: float) -> None:
            if time.monotonic() - last[0] < _BEAT_SECONDS:
                return
            last[0] = time.monotonic()
            if self._status(job_id) == "cancelling":
                raise AdaptCancelled(job_id)
            self._detail(job_id, fraction=round(fraction, 3), stage="training")

        log.info("adapt.start job=%s chunks=%d budget_s=%.0f", job_id, len(chunks), budget)
        return adapt(
            chunks,
            engine_negatives(self.retriever, principal),
            self.base_model,
            self.models_dir,
            replace(self.settings, time_budget_s=budget),
            current=self.current(),
            embedder=self.embedder,
            progress=progress,
        )

    def _status(self, job_id: str) -> str:
        with self.sessions() as db:
            job = db.get(Job, job_id)
            return job.status if job is not None else "cancelling"

    def _detail(self, job_id: str, **values: Any) -> None:
        with self.sessions() as db:
            job = db.get(Job, job_id)
            assert job is not None
            job.detail = {**(job.detail or {}), **values}
            job.heartbeat_at = utcnow()
            db.commit()

    def _end(self, job_id: str, status: str, error: str = "", detail: dict[str, Any] | None = None) -> None:
        with self.sessions() as db:
            job = db.get(Job, job_id)
            assert job is not None
            job.status, job.error, job.finished_at, job.heartbeat_at = status, error, utcnow(), utcnow()
            job.detail = {**(job.detail or {}), **(detail or {})}
            db.commit()
        log.info("adapt.end job=%s status=%s", job_id, status)
