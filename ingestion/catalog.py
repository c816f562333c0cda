"""Sources and jobs in SQL: create, update, look up, and open a job for a re-index."""

from __future__ import annotations

import datetime as dt
import re
import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ingestion.models import Document, Job, JobFailure, Source

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_GROUP = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")


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


def create_source(db: Session, name: str, location: str, acl: list[str]) -> Source:
    if not _NAME.match(name):
        raise CatalogError("name", f"invalid source name {name!r}: lowercase letters, digits, _ . - (max 64)")
    if not location.strip():
        raise CatalogError("path", "a directory source needs a path")
    if db.get(Source, name) is not None:
        raise Conflict(f"source {name!r} already exists; PATCH /v1/sources/{name} to change it")
    source = Source(id=name, kind="directory", location=location, acl=validate_acl(acl))
    db.add(source)
    db.commit()
    return source


def update_source(db: Session, name: str, location: str | None = None, acl: list[str] | None = None) -> Source:
    source = get_source(db, name)
    if location is not None:
        if not location.strip():
            raise CatalogError("path", "a directory source needs a path")
        source.location = location
    if acl is not None:
        source.acl = validate_acl(acl)
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


def open_retry(db: Session, job_id: str) -> Job:
    """A job that retries only the documents an earlier job failed on."""
    previous = get_job(db, job_id)
    if previous.status not in {"succeeded", "failed", "cancelled"}:
        raise Conflict(f"job {job_id} is still {previous.status}; retry it when it has ended")
    paths = [f["path"] for f in job_failures(db, job_id)]
    if not paths:
        raise Conflict(f"job {job_id} has no failed documents to retry")
    if previous.source_id is None:
        raise Conflict("a rebuild cannot be retried document by document; start a new rebuild")
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
