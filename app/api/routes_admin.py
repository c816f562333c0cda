"""Admin routes: sources and re-index jobs."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import AdminDep, ContainerDep
from app.api.schemas import JobOut, SourceIn, SourceOut, SourcePatch
from ingestion import catalog
from ingestion.models import Source

router = APIRouter(prefix="/v1", tags=["admin"])


def _source_out(source: Source) -> SourceOut:
    return SourceOut(name=source.id, kind=source.kind, path=source.location, acl=list(source.acl))


@router.get("/sources", response_model=list[SourceOut])
def list_sources(_: AdminDep, container: ContainerDep) -> list[SourceOut]:
    with container.sessions() as db:
        return [_source_out(s) for s in catalog.list_sources(db)]


@router.post("/sources", response_model=SourceOut, status_code=status.HTTP_201_CREATED)
def create_source(body: SourceIn, _: AdminDep, container: ContainerDep) -> SourceOut:
    with container.sessions() as db:
        return _source_out(catalog.create_source(db, body.name, body.path, body.acl))


@router.patch("/sources/{name}", response_model=SourceOut)
def update_source(name: str, body: SourcePatch, _: AdminDep, container: ContainerDep) -> SourceOut:
    with container.sessions() as db:
        return _source_out(catalog.update_source(db, name, body.path, body.acl))


@router.post("/sources/{name}/reindex", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED)
def reindex(name: str, _: AdminDep, container: ContainerDep) -> JobOut:
    """Queue an incremental re-index of the source; follow it with GET /v1/jobs/{id}."""
    with container.sessions() as db:
        job = catalog.open_job(db, name)
        progress = job.progress()
    container.enqueue(job.id)
    return JobOut(**progress)


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, _: AdminDep, container: ContainerDep) -> JobOut:
    with container.sessions() as db:
        job = catalog.get_job(db, job_id)
        return JobOut(**job.progress(), failures=catalog.job_failures(db, job_id))


@router.get("/index")
def index_stats(_: AdminDep, container: ContainerDep) -> dict[str, object]:
    """What the engine holds against what SQL expects: equal counts mean no lost and no duplicate chunk."""
    with container.sessions() as db:
        expected = catalog.expected_chunks(db)
    return {"backend": container.settings.index.backend, "points": container.store.count(), **expected}
