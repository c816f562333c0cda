"""Ingestion's SQL tables: sources, documents with their content hash, jobs and their failures."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(value: dt.datetime) -> dt.datetime:
    """SQLite hands datetimes back without a zone; every time here is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    pass


class Source(Base):
    """Where documents come from, and who may read them by default."""

    __tablename__ = "sources"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="directory")  # directory | upload | web
    location: Mapped[str] = mapped_column(Text)  # a directory, or the start URL of a web source
    acl: Mapped[list[str]] = mapped_column(JSON, default=list)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # web: max_depth, max_pages
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Document(Base):
    """One indexed (or failed) file; its content hash decides whether re-ingest must embed it again.

    `acl` and `tags` are what the index holds. An admin's `acl_override` / `tags_override` (set by the agent
    tools) replace what a re-index computes from the source and front matter until they are cleared (NULL)."""

    __tablename__ = "documents"
    id: Mapped[str] = mapped_column(String(512), primary_key=True)
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text, default="")
    content_hash: Mapped[str] = mapped_column(String(64), default="")
    acl: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Added after the first release: nullable, so init_db adds them to an existing table in place.
    tags: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    acl_override: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    tags_override: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="indexed")
    error: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Job(Base):
    """A re-index of one source, with the progress an operator follows."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    source_id: Mapped[str | None] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="incremental")  # incremental | retry | rebuild | adapt
    only_paths: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # retry: just these files
    status: Mapped[str] = mapped_column(String(16), default="queued")
    docs_total: Mapped[int] = mapped_column(Integer, default=0)
    docs_done: Mapped[int] = mapped_column(Integer, default=0)
    docs_failed: Mapped[int] = mapped_column(Integer, default=0)
    docs_skipped: Mapped[int] = mapped_column(Integer, default=0)
    docs_deleted: Mapped[int] = mapped_column(Integer, default=0)
    chunks_indexed: Mapped[int] = mapped_column(Integer, default=0)
    chunks_embedded: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Jobs that are not document-by-document (reranker adaptation): fraction done and the final report.
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    def progress(self) -> dict[str, Any]:
        processed = self.docs_done + self.docs_failed
        end = aware(self.finished_at) if self.finished_at else utcnow()
        elapsed = (end - aware(self.started_at)).total_seconds() if self.started_at else 0.0
        rate = processed / elapsed if elapsed > 0 else 0.0
        remaining = max(self.docs_total - processed, 0)
        eta = remaining / rate if rate > 0 and self.status == "running" else None
        return {
            "id": self.id,
            "source": self.source_id or "",
            "kind": self.kind,
            "status": self.status,
            "docs_per_second": round(rate, 2),
            "chunks_per_second": round(self.chunks_indexed / elapsed, 2) if elapsed > 0 else 0.0,
            "eta_seconds": round(eta, 1) if eta is not None else None,
            "docs_total": self.docs_total,
            "docs_done": self.docs_done,
            "docs_failed": self.docs_failed,
            "docs_skipped": self.docs_skipped,
            "docs_deleted": self.docs_deleted,
            "chunks_indexed": self.chunks_indexed,
            "chunks_embedded": self.chunks_embedded,
            "error": self.error,
            "detail": self.detail or {},
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


class JobFailure(Base):
    """A document a job could not index, and why."""

    __tablename__ = "job_failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
