"""Admin routes: sources (directory, upload, web), re-index jobs and the index itself."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path, PurePath

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.api.deps import AdminDep, ContainerDep
from app.api.errors import ApiError
from app.api.schemas import AdaptIn, JobOut, RerankerOut, SourceIn, SourceOut, SourcePatch
from app.container import Container
from ingestion import catalog
from ingestion.models import Job, Source

router = APIRouter(prefix="/v1", tags=["admin"])
TERMINAL = {"succeeded", "failed", "cancelled"}


def _source_out(source: Source) -> SourceOut:
    return SourceOut(
        name=source.id, kind=source.kind, path=source.location, acl=list(source.acl), options=source.options or {}
    )


def _job_out(container: Container, job_id: str) -> JobOut:
    with container.sessions() as db:
        job = catalog.get_job(db, job_id)
        return JobOut(**job.progress(), failures=catalog.job_failures(db, job_id))


def _queue(container: Container, open_job: Callable[[Session], Job]) -> JobOut:
    """Open a job in SQL, hand it to the broker, and answer with its progress."""
    with container.sessions() as db:
        job_id = open_job(db).id
    container.enqueue(job_id)
    return _job_out(container, job_id)


def _upload_dir(container: Container, name: str) -> Path:
    return container.settings.data_dir / "uploads" / name


@router.get("/sources", response_model=list[SourceOut])
def list_sources(_: AdminDep, container: ContainerDep) -> list[SourceOut]:
    with container.sessions() as db:
        return [_source_out(s) for s in catalog.list_sources(db)]


@router.post("/sources", response_model=SourceOut, status_code=status.HTTP_201_CREATED)
def create_source(body: SourceIn, _: AdminDep, container: ContainerDep) -> SourceOut:
    """Register a source: a server-side directory, an upload folder the service keeps, or a web site."""
    location = {"directory": body.path, "web": body.url}.get(body.kind) or str(_upload_dir(container, body.name))
    options = {"max_depth": body.max_depth, "max_pages": body.max_pages}
    with container.sessions() as db:
        source = catalog.create_source(db, body.name, location, body.acl, kind=body.kind, options=options)
    if body.kind == "upload":
        Path(location).mkdir(parents=True, exist_ok=True)
    return _source_out(source)


@router.patch("/sources/{name}", response_model=SourceOut)
def update_source(name: str, body: SourcePatch, _: AdminDep, container: ContainerDep) -> SourceOut:
    """Change a source; an ACL change is applied to its chunks by the next re-index, without re-embedding."""
    options = {k: v for k, v in (("max_depth", body.max_depth), ("max_pages", body.max_pages)) if v is not None}
    with container.sessions() as db:
        source = catalog.update_source(db, name, body.path or body.url, body.acl, options or None)
        return _source_out(source)


@router.delete("/sources/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_source(name: str, _: AdminDep, container: ContainerDep) -> Response:
    """Delete a source and every chunk it put into the index."""
    with container.sessions() as db:
        kind = catalog.get_source(db, name).kind
    container.pipeline.delete_source_chunks(name)
    with container.sessions() as db:
        catalog.delete_source(db, name)
    if kind == "upload":
        shutil.rmtree(_upload_dir(container, name), ignore_errors=True)
    if kind == "web":
        shutil.rmtree(container.settings.data_dir / "web" / name, ignore_errors=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/sources/{name}/files", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED)
async def upload_files(name: str, request: Request, _: AdminDep, container: ContainerDep) -> JobOut:
    """Upload one or more files (multipart field `files`) into an upload source and queue its re-index."""
    with container.sessions() as db:
        source = catalog.get_source(db, name)
    if source.kind != "upload":
        raise ApiError(409, "conflict", f"source {name!r} is a {source.kind} source; upload into an upload source")
    limit = container.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"upload of {declared} bytes is over the {limit}-byte limit")
    form = await request.form(max_files=100)
    uploads = [f for f in form.getlist("files") if not isinstance(f, str)]
    if not uploads:
        raise ApiError(422, "invalid_request", "send the files as multipart form field 'files'")
    folder = Path(source.location)
    folder.mkdir(parents=True, exist_ok=True)
    per_file = container.settings.max_file_bytes
    for upload in uploads:
        filename = PurePath(upload.filename or "").name
        if not filename or filename.startswith("."):
            raise ApiError(422, "invalid_request", f"unusable file name {upload.filename!r}")
        target, written = folder / (filename + ".part"), 0
        with target.open("wb") as out:
            while block := await upload.read(1 << 20):
                written += len(block)
                if written > per_file:
                    out.close()
                    target.unlink(missing_ok=True)
                    raise ApiError(413, "payload_too_large", f"{filename} is over the {per_file}-byte file limit")
                out.write(block)
        target.replace(folder / filename)  # whole files only: the indexer never sees a partial upload
    return _queue(container, lambda db: catalog.open_job(db, name))


@router.post("/sources/{name}/reindex", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED)
def reindex(name: str, _: AdminDep, container: ContainerDep) -> JobOut:
    """Queue an incremental re-index of the source; follow it with GET /v1/jobs/{id}."""
    return _queue(container, lambda db: catalog.open_job(db, name))


@router.post("/index/rebuild", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED)
def rebuild(_: AdminDep, container: ContainerDep) -> JobOut:
    """Full re-index of every source into a new index version, switched in atomically once checked."""
    return _queue(container, catalog.open_rebuild)


@router.post("/reranker/adapt", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED)
def adapt_reranker(_: AdminDep, container: ContainerDep, body: AdaptIn | None = None) -> JobOut:
    """Train a reranker on pairs mined from the index, within a time budget; it replaces the reranker in use
    only if it ranks held-back pairs better. Follow it with GET /v1/jobs/{id} (`detail` has the report)."""
    budget = container.settings.adapt_budget(body.minutes if body else None)
    return _queue(container, lambda db: catalog.open_adapt(db, budget))


@router.get("/reranker", response_model=RerankerOut)
def reranker(_: AdminDep, container: ContainerDep) -> RerankerOut:
    """Which cross-encoder reranks answers now, and where it came from."""
    model = container.reranker.settings.model
    source = "none" if not model else "configured" if model == container.settings.rerank_model else "adapted"
    return RerankerOut(model=model, source=source, pairs_per_second=round(container.reranker.pairs_per_second, 1))


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, _: AdminDep, container: ContainerDep) -> JobOut:
    return _job_out(container, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, _: AdminDep, container: ContainerDep) -> JobOut:
    """Stop a job between two documents."""
    with container.sessions() as db:
        catalog.cancel_job(db, job_id)
    return _job_out(container, job_id)


@router.post("/jobs/{job_id}/retry", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED)
def retry_job(job_id: str, _: AdminDep, container: ContainerDep) -> JobOut:
    """A new job that re-processes only the documents this job failed on."""
    return _queue(container, lambda db: catalog.open_retry(db, job_id))


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, request: Request, _: AdminDep, container: ContainerDep) -> StreamingResponse:
    """Server-sent events: a `progress` event whenever the job changes, ending with its final state."""
    first = await run_in_threadpool(_job_out, container, job_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        last, job = "", first
        while True:
            payload = job.model_dump_json()
            if payload != last:
                yield f"event: progress\ndata: {payload}\n\n"
                last = payload
            if job.status in TERMINAL or await request.is_disconnected():
                yield f"event: end\ndata: {json.dumps({'status': job.status})}\n\n"
                return
            await asyncio.sleep(0.5)
            job = await run_in_threadpool(_job_out, container, job_id)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/index")
def index_stats(_: AdminDep, container: ContainerDep) -> dict[str, object]:
    """What the engine holds against what SQL expects: equal counts mean no lost and no duplicate chunk."""
    with container.sessions() as db:
        expected = catalog.expected_chunks(db)
    return {
        "backend": container.settings.index.backend,
        "version": container.store.version,
        "points": container.store.count(),
        **expected,
    }
