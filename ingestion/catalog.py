"""Sources and jobs in SQL: create, update, look up, and open a job for a re-index."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ingestion.models import Document, Job, JobFailure, Source

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_GROUP = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
_TAG = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
MAX_TAGS = 32


class CatalogError(ValueError):
    """Bad source or job input; `field` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class NotFound(LookupError):
    pass


class Conflict(Exception):
    pass


def validate_acl(acl: list[str]) -> list[str]:
    groups = sorted({g.strip() for g in acl if g.strip()})
    if not groups:
        raise CatalogError("acl", "a source needs at least one ACL group (use 'public' for everyone)")
    for group in groups:
        if not _GROUP.match(group):
            raise CatalogError("acl", f"invalid group name {group!r}: use letters, digits and _ . : @ -")
    return groups


def validate_tags(tags: list[str]) -> list[str]:
    """Tags as stored and matched: lowercased, deduplicated, sorted; an empty list is no tags."""
    clean = sorted({t.strip().lower() for t in tags if t.strip()})
    for tag in clean:
        if not _TAG.match(tag):
            raise CatalogError(
                "tags",
                f"invalid tag {tag!r}: use 1-64 letters, digits and _ . : - (starting with a letter or digit; "
                "case is ignored)",
            )
    if len(clean) > MAX_TAGS:
        raise CatalogError("tags", f"{len(clean)} tags given; a document or a filter takes at most {MAX_TAGS}")
    return clean


SOURCE_KINDS = ("directory", "upload", "web")


def validate_location(kind: str, location: str) -> str:
    location = location.strip()
    if kind == "web":
        if not re.match(r"^https?://[^/\s]+", location):
            raise CatalogError("url", f"a web source needs an http(s) URL, got {location!r}")
    elif not location:
        raise CatalogError("path", f"a {kind} source needs a path")
    return location


def validate_options(kind: str, options: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    if kind != "web":
        return {}
    for key, low, high, default in (("max_depth", 0, 5, 1), ("max_pages", 1, 10_000, 200)):
        value = options.get(key, default)
        if not isinstance(value, int) or not low <= value <= high:
            raise CatalogError(key, f"{key} must be an integer from {low} to {high}")
        options[key] = value
    return {k: options[k] for k in ("max_depth", "max_pages")}


def create_source(
    db: Session,
    name: str,
    location: str,
    acl: list[str],
    kind: str = "directory",
    options: dict[str, Any] | None = None,
) -> Source:
    if not _NAME.match(name):
        raise CatalogError("name", f"invalid source name {name!r}: lowercase letters, digits, _ . - (max 64)")
    if kind not in SOURCE_KINDS:
        raise CatalogError("kind", f"unknown source kind {kind!r}; use one of {', '.join(SOURCE_KINDS)}")
    location = validate_location(kind, location)
    if db.get(Source, name) is not None:
        raise Conflict(f"source {name!r} already exists; PATCH /v1/sources/{name} to change it")
    source = Source(
        id=name, kind=kind, location=location, acl=validate_acl(acl), options=validate_options(kind, options)
    )
    db.add(source)
    db.commit()
    return source


def update_source(
    db: Session,
    name: str,
    location: str | None = None,
    acl: list[str] | None = None,
    options: dict[str, Any] | None = None,
) -> Source:
    source = get_source(db, name)
    if location is not None:
        if source.kind == "upload":
            raise CatalogError("path", "an upload source's folder is managed by the service")
        source.location = validate_location(source.kind, location)
    if acl is not None:
        source.acl = validate_acl(acl)
    if options is not None:
        source.options = validate_options(source.kind, {**(source.options or {}), **options})
    db.commit()
    return source


def get_source(db: Session, name: str) -> Source:
    source = db.get(Source, name)
    if source is None:
        raise NotFound(f"source {name!r} does not exist; create it with POST /v1/sources")
    return source


def list_sources(db: Session) -> list[Source]:
    return list(db.scalars(select(Source).order_by(Source.id)))


def open_job(db: Session, source_id: str) -> Job:
    """An incremental re-index of one source."""
    get_source(db, source_id)
    job = Job(id=uuid.uuid4().hex, source_id=source_id, kind="incremental", status="queued")
    db.add(job)
    db.commit()
    return job


def open_rebuild(db: Session) -> Job:
    """A full re-index of every source into a new index version, switched in when complete."""
    job = Job(id=uuid.uuid4().hex, source_id=None, kind="rebuild", status="queued")
    db.add(job)
    db.commit()
    return job


def open_adapt(db: Session, time_budget_s: float) -> Job:
    """Train a reranker on pairs mined from the index; at most one such job runs or waits at a time."""
    busy = db.scalars(
        select(Job.id).where(Job.kind == "adapt", Job.status.in_(["queued", "running", "cancelling"]))
    ).first()
    if busy is not None:
        raise Conflict(f"reranker adaptation {busy} is still running; wait for it or cancel it")
    job = Job(
        id=uuid.uuid4().hex, source_id=None, kind="adapt", status="queued", detail={"time_budget_s": time_budget_s}
    )
    db.add(job)
    db.commit()
    return job


def open_retry(db: Session, job_id: str) -> Job:
    """A job that retries only the documents an earlier job failed on."""
    previous = get_job(db, job_id)
    if previous.status not in {"succeeded", "failed", "cancelled"}:
        raise Conflict(f"job {job_id} is still {previous.status}; retry it when it has ended")
    paths = [f["path"] for f in job_failures(db, job_id)]
    if not paths:
        raise Conflict(f"job {job_id} has no failed documents to retry")
    if previous.source_id is None:
        raise Conflict(f"a {previous.kind} job cannot be retried document by document; start a new one")
    job = Job(id=uuid.uuid4().hex, source_id=previous.source_id, kind="retry", only_paths=paths, status="queued")
    db.add(job)
    db.commit()
    return job


def cancel_job(db: Session, job_id: str) -> Job:
    """Ask a job to stop: it ends `cancelled` between two documents (what it indexed stays consistent)."""
    job = get_job(db, job_id)
    if job.status in {"succeeded", "failed", "cancelled"}:
        raise Conflict(f"job {job_id} already ended ({job.status})")
    job.status = "cancelling"
    db.commit()
    return job


def delete_source(db: Session, name: str) -> None:
    source = get_source(db, name)
    db.query(Job).filter(Job.source_id == name).delete()
    db.delete(source)
    db.commit()


def get_job(db: Session, job_id: str) -> Job:
    job = db.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} does not exist")
    return job


def job_failures(db: Session, job_id: str) -> list[dict[str, str]]:
    rows = db.scalars(select(JobFailure).where(JobFailure.job_id == job_id).order_by(JobFailure.id))
    return [{"path": r.path, "reason": r.reason} for r in rows]


def stale_jobs(db: Session, older_than: dt.datetime) -> list[str]:
    """Unfinished jobs with no sign of life since `older_than`: their task was lost with a worker or broker."""
    last_seen = func.coalesce(Job.heartbeat_at, Job.created_at)
    rows = db.scalars(
        select(Job.id)
        .where(Job.status.in_(["queued", "running", "cancelling"]), last_seen < older_than)
        .order_by(Job.created_at)
    )
    return list(rows)


def expected_chunks(db: Session) -> dict[str, int]:
    """Indexed documents and the chunks they should have in the engine."""
    docs, chunks = db.execute(
        select(func.count(Document.id), func.coalesce(func.sum(Document.chunk_count), 0)).where(
            Document.status == "indexed"
        )
    ).one()
    return {"documents": int(docs), "chunks_expected": int(chunks)}
