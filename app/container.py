"""Explicit wiring: build every component once from Settings, and start/stop the embedded worker."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path

from celery import Celery, Task
from sqlalchemy import select

from agents.models import AgentRun
from agents.registry import Registry
from agents.runner import Runner
from app.agent_proposals import RunProposer
from app.agent_tools import builtin_tools
from app.chat import ChatService
from app.conversations import ConversationStore
from app.db import init_db
from app.load import LoadGovernor
from app.metrics import AnswerMetrics
from app.quotas import Quotas, RedisCounter, SqlCounter
from app.services import AnswerService, SearchService
from app.settings import Settings
from app.tiers import build_tiers
from ingestion import catalog
from ingestion.adapt_job import AdaptRunner
from ingestion.celery_app import adapt_job, configure_celery, ingest_job, set_pipeline
from ingestion.models import Source, utcnow
from ingestion.pipeline import IngestPipeline
from retrieval.adapt import Scorer, active_reranker, cross_encoder_scorer
from retrieval.cache import SemanticCache
from retrieval.embedder import make_embedder
from retrieval.rerank import Reranker, RerankSettings
from retrieval.search import Retriever
from retrieval.store import StoreUnavailable
from retrieval.versions import LiveStore, open_versions

log = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """The Celery broker refused the job; the API answers 503."""


class Container:
    """Owns the index (store), the models, SQL sessions and the Celery app for one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.sessions = init_db(settings.sql_url)
        self.store = LiveStore(open_versions(settings.index), grace_seconds=settings.reindex_grace_seconds)
        self.embedder = make_embedder(settings.index.embedder)
        self.retriever = Retriever(self.store, self.embedder, settings.index)
        self.search = SearchService(self.retriever)
        self.reranker = Reranker(
            RerankSettings(
                model=settings.rerank_model or str(active_reranker(settings.models_dir) or ""),
                max_depth=settings.rerank_depth,
                latency_budget_ms=settings.rerank_budget_ms,
                backend=settings.rerank_backend,
                onnx_int8=settings.rerank_onnx_int8,
                cache_dir=str(settings.data_dir / "onnx"),
            )
        )
        self.metrics = AnswerMetrics(self._feedback_counts)
        self.tiers = build_tiers(settings.tier_settings, self.embedder.count_tokens)
        generating = [t for t in self.tiers if t.generates]
        self.rewriter = generating[0] if generating else None  # the cheapest model rewrites follow-ups; else a rule
        self.cache = SemanticCache(
            self.store.versions.cache_table(), self.store.retrieve, lambda: self.store.version, settings.cache
        )
        self.governor = LoadGovernor(settings.load, on_change=self.metrics.degradation_changed)
        self.metrics.watch_load(self.governor)
        self.answers = AnswerService(
            self.retriever,
            self.embedder,
            self.reranker,
            self.tiers,
            settings.answer,
            router=settings.route,
            cache=self.cache,
            governor=self.governor,
        )
        self.conversations = ConversationStore(self.sessions)
        counter = RedisCounter(settings.quota_redis_url) if settings.quota_redis_url else SqlCounter(self.sessions)
        self.quotas = Quotas(counter, settings.daily_token_quota)
        self.chat = ChatService(
            self.answers, self.conversations, self.rewriter, on_answer=self.metrics.observe, quotas=self.quotas
        )
        self.pipeline = IngestPipeline(
            self.sessions,
            self.store,
            self.embedder,
            settings.index,
            max_file_bytes=settings.max_file_bytes,
            work_dir=settings.data_dir,
        )
        self.adapter = AdaptRunner(
            self.sessions,
            self.store,
            self.retriever,
            self.embedder,
            base_model=settings.adapt_base_model or settings.index.embedder.resolved_model(),
            models_dir=settings.models_dir,
            settings=settings.adapt,
            current=self._current_scorer,
            on_promoted=self._use_reranker,
        )
        self.celery: Celery = configure_celery(settings.broker)
        self.tools = Registry(
            builtin_tools(
                self.sessions,
                self.pipeline,
                self.retriever,
                self.enqueue,
                notes_dir=settings.data_dir / "notes",
                webhook_hosts=settings.agent_webhook_hosts.split(","),
            )
        )
        self.runner = Runner(self.tools, self.sessions)
        self.proposer = RunProposer(
            self.tiers,
            self.tools,
            self.runner,
            self.retriever,
            settings.proposals,
            quotas=self.quotas,
            on_proposal=self.metrics.observe_proposal,
        )
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()

    def _feedback_counts(self) -> dict[str, int]:
        return self.conversations.feedback_counts()

    def warm_up(self) -> None:
        """Load the model and open the index before the first request, not during it."""
        self.embedder.warm_up()
        for tier in self.tiers:
            if tier.llm is not None and tier.tokens is not None:
                exact = tier.tokens.exact  # loads the served model's tokenizer now, not on the first question
                log.info(
                    "llm.configured tier=%s url=%s model=%s exact_token_counts=%s",
                    tier.name,
                    tier.llm.settings.base_url,
                    tier.llm.settings.model,
                    exact,
                )
        if self.reranker.enabled:
            self.reranker.warm_up()
        try:
            self.store.ensure_collection(self.embedder.dim)
            self.cache.ensure(self.embedder.dim)
        except StoreUnavailable as exc:
            # Start anyway: /readyz and every query say 503 with the reason until Qdrant answers.
            log.error("qdrant.unavailable at_start error=%s", exc)

    def _current_scorer(self) -> Scorer | None:
        """What a newly trained reranker must beat: the reranker in use, else (None) the embedder's cosine."""
        return cross_encoder_scorer(self.reranker.settings.model) if self.reranker.enabled else None

    def _use_reranker(self, path: Path) -> None:
        if self.settings.rerank_model:
            log.warning("reranker.promoted path=%s kept_configured=%s", path, self.settings.rerank_model)
            return  # an explicitly configured model wins over what adapt trained
        self.reranker.use_model(str(path))

    def _task(self, job_id: str) -> Task:
        with self.sessions() as db:
            job = catalog.get_job(db, job_id)
            return adapt_job if job.kind == "adapt" else ingest_job

    def enqueue(self, job_id: str) -> None:
        task = self._task(job_id)
        try:
            task.apply_async(args=[job_id], retry=False)
        except Exception as exc:  # kombu raises OperationalError and friends
            raise BrokerUnavailable(f"the task broker is not reachable ({exc}); is Redis running?") from exc

    def run_inline(self, job_id: str) -> dict[str, object]:
        """Run a job in this process through the same task code (the CLI with no server)."""
        set_pipeline(self.pipeline, self.adapter)
        result = self._task(job_id).apply(args=[job_id], throw=True)
        return dict(result.get())

    def start_worker(self) -> None:
        """A Celery worker in a thread of this process, which owns the shard (notes/celery-embedded.md)."""
        set_pipeline(self.pipeline, self.adapter)
        app = self.celery

        def run() -> None:
            app.finalize()
            app.set_current()
            app.set_default()
            worker = app.WorkController(
                pool="threads",
                concurrency=self.settings.worker_concurrency,
                loglevel=self.settings.log_level,
                without_heartbeat=True,
                without_mingle=True,
                without_gossip=True,
                queues=["kb-ingest"],
            )
            worker.start()

        self._worker = threading.Thread(target=run, name="celery-worker", daemon=True)
        self._worker.start()
        log.info("worker.started broker=%s", self.settings.broker_url or "filesystem")
        self._watchdog = threading.Thread(target=self._watch_jobs, name="job-watchdog", daemon=True)
        self._watchdog.start()

    def requeue_stale_jobs(self) -> list[str]:
        """Re-queue unfinished jobs that show no progress for longer than the broker would take to redeliver.

        Covers what a broker cannot: the filesystem broker never redelivers a task whose worker died, and a
        Redis that restarts without persistence forgets queued and unacked tasks. Jobs are idempotent, so a
        duplicate delivery costs nothing.
        """
        cutoff = utcnow() - dt.timedelta(seconds=self.settings.job_stale_seconds)
        with self.sessions() as db:
            stale = [j for j in catalog.stale_jobs(db, cutoff) if not self._running_here(j)]
        for job_id in stale:
            log.warning("job.requeue job=%s reason=no_progress_for_%ss", job_id, self.settings.job_stale_seconds)
            try:
                self.enqueue(job_id)
                self.pipeline.touch(job_id)
            except BrokerUnavailable as exc:
                log.error("job.requeue_failed job=%s error=%s", job_id, exc)
        return stale

    def _running_here(self, job_id: str) -> bool:
        return self.pipeline.is_running(job_id) or self.adapter.is_running(job_id)

    def _watch_jobs(self) -> None:
        while not self._stopping.wait(self.settings.job_watchdog_seconds):
            try:
                self.requeue_stale_jobs()
            except Exception:  # keep watching: a failed sweep must not end recovery for good
                log.exception("job.watchdog_failed")

    def ingest_sample(self) -> str | None:
        """Index the sample corpus that ships with the project (make run), once."""
        with self.sessions() as db:
            if db.get(Source, "sample") is not None:
                return None
            catalog.create_source(db, "sample", str(self.settings.sample_dir.resolve()), ["public"])
            job = catalog.open_job(db, "sample")
        log.info("sample.ingest job=%s dir=%s", job.id, self.settings.sample_dir)
        self.enqueue(job.id)
        return job.id

    def recover_runs(self) -> list[str]:
        """Roll back agent runs a dead process left mid-way. Only safe where this process is the only one that
        runs tools (embedded index: `kb serve` owns the shard), since at start no run of its own is in flight."""
        with self.sessions() as db:
            stuck = list(db.scalars(select(AgentRun.id).where(AgentRun.status.in_(["running", "rolling_back"]))))
        for run_id in stuck:
            try:
                run = self.runner.recover(run_id)
            except Exception:  # one run that cannot be recovered must not keep the service from starting
                log.exception("agent.run_recover_failed run=%s", run_id)
                continue
            log.warning("agent.run_recovered run=%s status=%s", run_id, run.status)
        return stuck

    def stop_worker(self) -> None:
        if self._worker is None:
            return
        from celery.worker import state

        self._stopping.set()
        state.should_stop = 0  # warm shutdown: running tasks finish first
        self._worker.join(120)
        self._worker = None

    async def close_clients(self) -> None:
        for tier in self.tiers:
            if tier.llm is not None:
                await tier.llm.close()

    def close(self) -> None:
        self.stop_worker()
        self.cache.close()
        self.store.close()
