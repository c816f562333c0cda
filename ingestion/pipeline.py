"""The ingestion job: load → chunk → embed in batches across documents → upsert, driven by content hashes."""

from __future__ import annotations

import bisect
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from ingestion.chunking import Chunker
from ingestion.inflight import InFlight
from ingestion.labels import Labels, Overrides, effective_acl, front_matter_tags
from ingestion.loaders import LoadError, load_file
from ingestion.models import Document, Job, JobFailure, Source, utcnow
from ingestion.sources import DirectorySource, SourceError, SourceFile, file_hash
from ingestion.web import crawl, read_url_map
from retrieval.bm25 import bm25_field_text
from retrieval.embedder import TextEmbedder
from retrieval.settings import IndexSettings
from retrieval.store import IndexedChunk, Store, StoreQuery
from retrieval.types import Chunk, SearchMode
from retrieval.versions import LiveStore

log = logging.getLogger(__name__)
PREFETCH_DOCS = 16
_DONE = object()


class JobNotFound(Exception):
    pass


class JobCancelled(Exception):
    """An operator cancelled the job; it stops between documents."""


class RebuildCheckFailed(Exception):
    """The new index version did not pass its checks; the live version stays."""


@dataclass
class _Run:
    """One job's execution: where it writes, what it may skip, and (for a rebuild) the rows it will commit."""

    job_id: str
    store: Store
    force: bool = False  # rebuild: embed everything into the new version, trust no hash
    staged: dict[str, Document] | None = None  # rebuild: documents table rows, written at the switch
    computed: dict[str, Labels] = field(default_factory=dict)  # rebuild: each document's labels from its source
    urls: dict[str, str] = field(default_factory=dict)  # web source: file name -> URL (the citation's path)


@dataclass
class _Pending:
    """A document whose chunks wait for the next embedding batch."""

    file: SourceFile
    doc_id: str
    content_hash: str
    title: str
    computed: Labels  # from the source's ACL and the front matter
    overrides: Overrides  # as SQL had them when the document was prepared
    path: str = ""
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def labels(self) -> Labels:
        return self.overrides.apply(self.computed)


class IngestPipeline:
    """Runs ingestion jobs; every step is idempotent so a redelivered task repeats no work and no points."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: LiveStore,
        embedder: TextEmbedder,
        settings: IndexSettings,
        max_file_bytes: int = 50_000_000,
        batch_chunks: int = 64,
        work_dir: Path = Path("data"),
    ) -> None:
        self.work_dir = work_dir
        self.sessions = sessions
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self.max_file_bytes = max_file_bytes
        self.batch_chunks = batch_chunks
        self._chunker: Chunker | None = None
        self._running = InFlight()
        # One writer at a time per index: a rebuild must not race an incremental job on the live version.
        self._write_lock = threading.Lock()
        # Held while labels (ACL, tags) go to the index and SQL together, by jobs and by the agent tools that
        # set overrides, so neither writes labels the other has just replaced. Held briefly, never while embedding.
        self.labels_lock = threading.RLock()

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:
            self._chunker = Chunker(self.embedder.count_tokens, self.settings.chunk_tokens, self.settings.chunk_overlap)
        return self._chunker

    @property
    def index_signature(self) -> str:
        """Settings that change chunks or vectors: a change re-embeds every document."""
        s = self.settings
        # fp32 ONNX gives the torch model's vectors; int8 ones differ slightly, so switching it re-embeds.
        int8 = "|int8" if s.embedder.backend == "onnx" and s.embedder.onnx_int8 else ""
        return f"v1|{s.embedder.resolved_model()}|{s.chunk_tokens}|{s.chunk_overlap}{int8}"

    def is_running(self, job_id: str) -> bool:
        return job_id in self._running

    def run_job(self, job_id: str) -> dict[str, object]:
        """Run (or resume) a job to the end; a job already finished is left as it is."""
        with self._running.claim(job_id) as claimed:
            if not claimed:
                log.info("job.skip_duplicate job=%s", job_id)
                return {"id": job_id, "status": "running"}
            with self._write_lock:
                return self._run(job_id)

    def _run(self, job_id: str) -> dict[str, object]:
        with self.sessions() as db:
            job = db.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"job {job_id} does not exist")
            if job.status in {"succeeded", "failed", "cancelled"}:
                return job.progress()
            if job.status == "cancelling":
                job.status, job.finished_at = "cancelled", utcnow()
                db.commit()
                return job.progress()
            job.status, job.started_at, job.attempts = "running", utcnow(), job.attempts + 1
            job.docs_total = job.docs_done = job.docs_failed = job.docs_skipped = job.docs_deleted = 0
            job.chunks_indexed = job.chunks_embedded = 0
            db.query(JobFailure).filter(JobFailure.job_id == job_id).delete()
            db.commit()
            kind, source_id, only = job.kind, job.source_id, job.only_paths
        started = time.perf_counter()
        try:
            if kind == "rebuild":
                self._rebuild(job_id)
            else:
                assert source_id is not None
                self.store.ensure_collection(self.embedder.dim)
                # An empty index with documents recorded in SQL (a lost or replaced data dir): trust no hash.
                run = _Run(job_id, self.store, force=self.store.count() == 0)
                self._ingest_source(run, source_id, only_paths=only)
                self.store.optimize()
        except JobCancelled:
            self._finish(job_id, "cancelled", "cancelled by an operator")
        except (SourceError, RebuildCheckFailed) as exc:
            self._finish(job_id, "failed", str(exc))
        else:
            self._finish(job_id, "succeeded")
        result = self._progress(job_id)
        log.info(
            "job.end job=%s kind=%s seconds=%.1f status=%s",
            job_id,
            kind,
            time.perf_counter() - started,
            result["status"],
        )
        return result

    def _ingest_source(self, run: _Run, source_id: str, only_paths: list[str] | None = None) -> None:
        with self.sessions() as db:
            source = db.get(Source, source_id)
            if source is None:
                raise SourceError(f"source {source_id!r} was deleted")
            source_acl, location, kind, options = list(source.acl), source.location, source.kind, source.options
        if kind == "web":
            location, run.urls = self._crawl(run, source_id, location, options or {})
        files = DirectorySource(location).files()
        if only_paths is not None:
            files = [f for f in files if f.relpath in set(only_paths)]
        self._bump(run.job_id, docs_total=len(files))
        pending: list[_Pending] = []
        for item in self._prepared(run, source_id, source_acl, files):
            if item is not None:
                pending.append(item)
            if sum(len(p.chunks) for p in pending) >= self.batch_chunks:
                self._flush(run, source_id, pending)
                pending = []
        self._flush(run, source_id, pending)
        if only_paths is None and run.staged is None:
            self._delete_vanished(run.job_id, source_id, {f"{source_id}:{f.relpath}" for f in files})

    def _prepared(
        self, run: _Run, source_id: str, source_acl: list[str], files: list[SourceFile]
    ) -> Iterator[_Pending | None]:
        """Load and chunk documents in a background thread while the caller embeds the previous batch.

        The queue is bounded, so parsing runs at most `PREFETCH_DOCS` documents ahead of embedding.
        """
        results: queue.Queue[object] = queue.Queue(maxsize=PREFETCH_DOCS)
        stop = threading.Event()

        def produce() -> None:
            try:
                for file in files:
                    if stop.is_set():
                        return
                    results.put(self._prepare(run, source_id, source_acl, file))
            except BaseException as exc:  # handed to the consumer, which re-raises it
                results.put(exc)
            finally:
                results.put(_DONE)

        producer = threading.Thread(target=produce, name=f"prepare-{run.job_id[:8]}", daemon=True)
        producer.start()
        try:
            while (item := results.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                self._check_cancelled(run.job_id)
                yield item  # type: ignore[misc]
        finally:
            stop.set()
            while producer.is_alive():  # unblock a producer waiting on a full queue, then let it end
                with contextlib.suppress(queue.Empty):
                    results.get(timeout=0.1)

    def _crawl(self, run: _Run, source_id: str, url: str, options: dict[str, int]) -> tuple[str, dict[str, str]]:
        """Mirror a web source into a folder (robots.txt honoured, same host, to a depth); failures are listed."""
        dest = self.work_dir / "web" / source_id
        result = crawl(
            url,
            dest,
            max_depth=options.get("max_depth", 1),
            max_pages=options.get("max_pages", 200),
            max_bytes=self.max_file_bytes,
        )
        for failed_url, reason in result.failures:
            with self.sessions() as db:
                db.add(JobFailure(job_id=run.job_id, path=failed_url, reason=reason))
                db.commit()
            self._bump(run.job_id, docs_failed=1, docs_total=1)
        log.info("crawl.done source=%s pages=%d failed=%d", source_id, len(result.pages), len(result.failures))
        return str(dest), read_url_map(dest)

    def _rebuild(self, job_id: str) -> None:
        """Full re-index into a new version beside the live one; check it, then switch atomically."""
        version, target = self.store.begin_rebuild()
        target.ensure_collection(self.embedder.dim)
        run = _Run(job_id, target, force=True, staged={})
        log.info("rebuild.start job=%s version=%d", job_id, version)
        try:
            with self.sessions() as db:
                source_ids = [s.id for s in db.scalars(select(Source).order_by(Source.id))]
            for source_id in source_ids:
                self._ingest_source(run, source_id)
            target.optimize()
            self._check_rebuild(run)
        except BaseException:
            self.store.abandon(version, target)
            raise
        with self.labels_lock:
            # An admin may have changed a document's overrides while the new version was being built.
            with self.sessions() as db:
                live = {d.id: Overrides.of(d) for d in db.scalars(select(Document))}
            self._carry_overrides(run, live)
            self._switch(run, version, target)

    def _switch(self, run: _Run, version: int, target: Store) -> None:
        with self.sessions() as db:
            # The switch: SQL rows and the live pointer change together, queries keep a complete index.
            db.query(Document).delete()
            for row in (run.staged or {}).values():
                db.add(row)
            self.store.promote(version, target)
            db.commit()

    def _carry_overrides(self, run: _Run, live: dict[str, Overrides]) -> None:
        """Give the new version the overrides the live rows have now, payloads included."""
        for doc_id, staged in (run.staged or {}).items():
            now = live.get(doc_id, Overrides())
            if now == Overrides(staged.acl_override, staged.tags_override):
                continue
            staged.acl_override, staged.tags_override = now.acl, now.tags
            if staged.status != "indexed" or doc_id not in run.computed:
                continue
            labels = now.apply(run.computed[doc_id])
            if labels.acl != sorted(staged.acl):
                run.store.set_acl(doc_id, labels.acl)
            if labels.tags != sorted(staged.tags or []):
                run.store.set_tags(doc_id, labels.tags)
            staged.acl, staged.tags = labels.acl, labels.tags
            log.info("rebuild.override_carried doc=%s", doc_id)

    def _check_rebuild(self, run: _Run) -> None:
        staged = run.staged or {}
        expected = sum(d.chunk_count for d in staged.values() if d.status == "indexed")
        count = run.store.count()
        if count != expected:
            raise RebuildCheckFailed(f"new index holds {count} chunks, expected {expected}; live index kept")
        if expected:
            probe = next(d for d in staged.values() if d.status == "indexed")
            vector = self.embedder.embed_query(probe.title or probe.path)
            request = StoreQuery(mode=SearchMode.DENSE, acl_groups=list(probe.acl), limit=1, dense=vector)
            if not run.store.query(request):
                raise RebuildCheckFailed("smoke query on the new index returned nothing; live index kept")

    def _check_cancelled(self, job_id: str) -> None:
        with self.sessions() as db:
            job = db.get(Job, job_id)
            if job is not None and job.status == "cancelling":
                raise JobCancelled(job_id)

    def _prepare(self, run: _Run, source_id: str, source_acl: list[str], file: SourceFile) -> _Pending | None:
        """Load one file; return it for embedding, or None when it was skipped, relabelled or failed."""
        doc_id = f"{source_id}:{file.relpath}"
        try:
            content_hash = file_hash(file.path, self.index_signature)
            loaded = load_file(file.path, self.max_file_bytes)
            narrowed = loaded.meta.get("acl")
            acl = effective_acl(source_acl, [narrowed] if isinstance(narrowed, str) else narrowed)
            computed = Labels(acl, front_matter_tags(loaded.meta.get("tags")))
        except (LoadError, OSError) as exc:
            reason = exc.reason if isinstance(exc, LoadError) else f"cannot read file: {exc}"
            self._fail_doc(run, source_id, doc_id, file, reason)
            return None
        with self.labels_lock, self.sessions() as db:
            # The live row (during a rebuild too: rows are replaced only at the switch) holds the overrides.
            row = db.get(Document, doc_id)
            overrides = Overrides.of(row)
            labels = overrides.apply(computed)
            unchanged = row is not None and row.status == "indexed" and row.content_hash == content_hash
            if unchanged and not run.force:
                assert row is not None
                # Label-only change: new payload, no embedding.
                if sorted(row.acl) != labels.acl:
                    run.store.set_acl(doc_id, labels.acl)
                    row.acl = labels.acl
                if sorted(row.tags or []) != labels.tags:
                    run.store.set_tags(doc_id, labels.tags)
                    row.tags = labels.tags
                db.commit()
                self._bump(run.job_id, docs_done=1, docs_skipped=1)
                return None
        spans = self.chunker.split(loaded.text)
        if not spans:
            self._fail_doc(run, source_id, doc_id, file, "document has no text to index")
            return None
        path = run.urls.get(file.relpath, str(file.path))
        item = _Pending(file, doc_id, content_hash, loaded.title, computed, overrides, path=path)
        offsets = [offset for offset, _ in loaded.headings]
        for ordinal, span in enumerate(spans):
            heading = bisect.bisect_right(offsets, span.start_char) - 1
            item.chunks.append(
                Chunk(
                    doc_id=doc_id,
                    source=source_id,
                    ordinal=ordinal,
                    text=span.text,
                    content_hash=content_hash,
                    acl=tuple(labels.acl),
                    tags=tuple(labels.tags),
                    title=loaded.title,
                    path=item.path,
                    section=loaded.headings[heading][1] if heading >= 0 else "",
                    start_char=span.start_char,
                    end_char=span.end_char,
                )
            )
        return item

    def _flush(self, run: _Run, source_id: str, pending: list[_Pending]) -> None:
        """Embed every pending chunk in one batch, upsert, then retire the documents' older versions."""
        if not pending:
            return
        texts = [embed_text(c) for p in pending for c in p.chunks]
        vectors = self.embedder.embed_documents(texts)
        with self.labels_lock:
            self._write_batch(run, source_id, pending, texts, vectors)
        if run.staged is None:
            # Another process (server mode) may have set an override during the write: apply it now.
            for p in self._refresh_overrides(pending):
                self._relabel(run.store, p.doc_id, p.labels)
        chunks = sum(len(p.chunks) for p in pending)
        self._bump(run.job_id, docs_done=len(pending), chunks_indexed=chunks, chunks_embedded=chunks)

    def _write_batch(self, run: _Run, source_id: str, pending: list[_Pending], texts: list[str], vectors: Any) -> None:
        """Upsert the batch with the labels SQL holds now (an admin may have set an override while it was
        embedded), then record the documents."""
        self._refresh_overrides(pending)
        chunks = [c for p in pending for c in p.chunks]
        points = [
            IndexedChunk(chunk=c, vector=[float(x) for x in v], bm25_text=bm25_field_text(t))
            for c, t, v in zip(chunks, texts, vectors, strict=True)
        ]
        run.store.upsert(points)
        with self.sessions() as db:
            for p in pending:
                row = Document(id=p.doc_id, source_id=source_id)
                if run.staged is None:
                    # New version first, then drop the old: a query never finds neither.
                    run.store.delete_doc(p.doc_id, keep_hash=p.content_hash)
                    row = db.get(Document, p.doc_id) or row
                labels = p.labels
                row.path, row.title, row.content_hash = p.path, p.title, p.content_hash
                row.acl, row.tags = labels.acl, labels.tags
                row.chunk_count, row.status, row.error = len(p.chunks), "indexed", ""
                if run.staged is None:
                    db.merge(row)  # a live row keeps its override columns as they are
                else:
                    row.acl_override, row.tags_override = p.overrides.acl, p.overrides.tags
                    run.staged[p.doc_id] = row
                    run.computed[p.doc_id] = p.computed
            db.commit()

    def _refresh_overrides(self, pending: list[_Pending]) -> list[_Pending]:
        """Re-read the overrides in SQL; the documents whose overrides changed get chunks with the new labels
        and are returned."""
        changed: list[_Pending] = []
        with self.sessions() as db:
            for p in pending:
                now = Overrides.of(db.get(Document, p.doc_id))
                if now == p.overrides:
                    continue
                p.overrides = now
                labels = p.labels
                p.chunks = [replace(c, acl=tuple(labels.acl), tags=tuple(labels.tags)) for c in p.chunks]
                changed.append(p)
        return changed

    def _relabel(self, store: Store, doc_id: str, labels: Labels) -> None:
        """Set a document's labels in every chunk's payload and in its SQL row."""
        with self.labels_lock, self.sessions() as db:
            store.set_acl(doc_id, labels.acl)
            store.set_tags(doc_id, labels.tags)
            row = db.get(Document, doc_id)
            if row is not None:
                row.acl, row.tags = labels.acl, labels.tags
                db.commit()

    def _delete_vanished(self, job_id: str, source_id: str, present: set[str]) -> None:
        with self.sessions() as db:
            gone = [
                d for d in db.scalars(select(Document).where(Document.source_id == source_id)) if d.id not in present
            ]
            for doc in gone:
                self.store.delete_doc(doc.id)
                db.delete(doc)
            db.commit()
        if gone:
            self._bump(job_id, docs_deleted=len(gone))

    def delete_source_chunks(self, source_id: str) -> int:
        """Remove every chunk of a source from the live index (the source is being deleted)."""
        with self._write_lock, self.sessions() as db:
            docs = list(db.scalars(select(Document).where(Document.source_id == source_id)))
            for doc in docs:
                self.store.delete_doc(doc.id)
                db.delete(doc)
            db.commit()
        return len(docs)

    def _fail_doc(self, run: _Run, source_id: str, doc_id: str, file: SourceFile, reason: str) -> None:
        log.warning("doc.failed job=%s path=%s reason=%s", run.job_id, file.relpath, reason)
        row = Document(id=doc_id, source_id=source_id)
        with self.sessions() as db:
            if run.staged is None:
                run.store.delete_doc(doc_id)
                row = db.get(Document, doc_id) or row
            row.path, row.status, row.error, row.content_hash, row.chunk_count = str(file.path), "failed", reason, "", 0
            if run.staged is None:
                db.merge(row)
            else:
                row.acl, row.tags, row.title = [], [], ""
                # A document that fails for now keeps its overrides for when it is fixed.
                kept = Overrides.of(db.get(Document, doc_id))
                row.acl_override, row.tags_override = kept.acl, kept.tags
                run.staged[doc_id] = row
            db.add(JobFailure(job_id=run.job_id, path=file.relpath, reason=reason))
            db.commit()
        self._bump(run.job_id, docs_failed=1)

    def _bump(self, job_id: str, **deltas: int) -> None:
        # One UPDATE with `col = col + delta`: the prefetch thread and the embedding loop both count.
        values: dict[str, object] = {name: getattr(Job, name) + delta for name, delta in deltas.items()}
        with self.sessions() as db:
            db.execute(update(Job).where(Job.id == job_id).values(**values, heartbeat_at=utcnow()))
            db.commit()

    def _update(self, job_id: str, **values: object) -> None:
        with self.sessions() as db:
            job = db.get(Job, job_id)
            assert job is not None
            for name, value in values.items():
                setattr(job, name, value)
            job.heartbeat_at = utcnow()
            db.commit()

    def touch(self, job_id: str) -> None:
        """Record a sign of life (a re-queue counts), so the watchdog waits a full period before the next."""
        self._update(job_id)

    def _finish(self, job_id: str, status: str, error: str = "") -> None:
        self._update(job_id, status=status, error=error, finished_at=utcnow())

    def _progress(self, job_id: str) -> dict[str, object]:
        with self.sessions() as db:
            job = db.get(Job, job_id)
            assert job is not None
            return job.progress()


def embed_text(chunk: Chunk) -> str:
    """What the embedder and BM25 see: title and section heading (when they add anything), then the text."""
    context = " — ".join(h for h in (chunk.title, chunk.section) if h and h not in chunk.text[:200])
    if context:
        return f"{context[:160]}\n{chunk.text}"  # bounded, so the context plus a full chunk fit the model
    return chunk.text
