"""The built-in agent tools: they act on this service's own data (search, document ACLs and tags, re-index; the
note tools live in app/agent_notes.py) and on an allow-listed webhook, each with a plan that changes nothing and
an undo that restores what it changed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from agents.tools import Applied, Plan, Target, Tool, ToolContext
from app.agent_notes import CreateNote, DeleteNote, NoteBook, UpdateNote
from ingestion import catalog
from ingestion.models import Document
from ingestion.pipeline import IngestPipeline
from retrieval.search import Retriever
from retrieval.types import SearchMode

log = logging.getLogger(__name__)


class SearchInput(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    top_k: int = Field(default=5, ge=1, le=20)


class SearchKb(Tool[SearchInput]):
    """Hybrid search with the run's principal, so the ACL filter in the engine holds for agents too."""

    name = "search_kb"
    description = "Search the knowledge base; returns the top passages the caller may read."
    input_model = SearchInput
    scope = "read"
    effect = "read"
    idempotent = True

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    def plan(self, input: SearchInput, ctx: ToolContext) -> Plan:
        return Plan(f"search for {input.query!r}", {"top_k": input.top_k})

    def apply(self, input: SearchInput, ctx: ToolContext) -> Applied:
        hits = self.retriever.search(input.query, ctx.principal, SearchMode.HYBRID, input.top_k)
        found = [
            {
                "doc_id": h.chunk.doc_id,
                "title": h.chunk.title,
                "path": h.chunk.path,
                "tags": list(h.chunk.tags),
                "text": h.chunk.text[:500],
            }
            for h in hits
        ]
        # Retrieved text is data for the caller: nothing here turns it into a step.
        return Applied({"hits": found}, {}, records=0)


class DocumentAclInput(BaseModel):
    doc_id: str = Field(min_length=1, max_length=512)
    acl: list[str] = Field(min_length=1, description="groups that may read the document, or ['public']")


class DocumentTagsInput(BaseModel):
    doc_id: str = Field(min_length=1, max_length=512)
    tags: list[str] = Field(max_length=catalog.MAX_TAGS, description="the document's tags; [] for none")


class _DocumentLabel:
    """Shared by the tools that override one label (`acl` or `tags`) of an indexed document: in its SQL row,
    as an override that later re-indexes keep, and in every chunk's payload. Undo restores the label and the
    override exactly as they were, "no override" included."""

    label: str  # the Document column and input field: "acl" or "tags"; its override is "<label>_override"
    noun: str  # how the plan names it

    @staticmethod
    def validate(values: list[str]) -> list[str]:
        raise NotImplementedError

    def plan(self, input: Any, ctx: ToolContext) -> Plan:
        value = self.validate(getattr(input, self.label))
        before, _override = self._current(input.doc_id)
        return Plan(f"set the {self.noun} of {input.doc_id} to {value}", {"before": before, "after": value})

    def apply(self, input: Any, ctx: ToolContext) -> Applied:
        value, before = self.validate(getattr(input, self.label)), self._current(input.doc_id)
        self._set(input.doc_id, value, value)
        return Applied({"doc_id": input.doc_id, self.label: value}, self._undo(input.doc_id, before))

    def compensate(self, undo: dict[str, Any], ctx: ToolContext) -> None:
        self._restore(undo)

    def __init__(self, sessions: sessionmaker[Session], pipeline: IngestPipeline) -> None:
        self.sessions = sessions
        self.pipeline = pipeline

    def targets(self, input: Any) -> list[Target]:
        return [Target("document", input.doc_id)]

    def _current(self, doc_id: str) -> tuple[list[str], list[str] | None]:
        """The label as indexed, and its override (None: none)."""
        with self.sessions() as db:
            row = db.get(Document, doc_id)
            if row is None or row.status != "indexed":
                raise catalog.NotFound(f"no indexed document {doc_id!r}; search for its doc_id first")
            override = getattr(row, f"{self.label}_override")
            return list(getattr(row, self.label) or []), list(override) if override is not None else None

    def _write_payload(self, doc_id: str, value: list[str]) -> None:
        if self.label == "acl":
            self.pipeline.store.set_acl(doc_id, value)
        else:
            self.pipeline.store.set_tags(doc_id, value)

    def _set(self, doc_id: str, value: list[str], override: list[str] | None) -> None:
        # Under the pipeline's labels lock, SQL first: a job that reads the override after this commit indexes
        # the new label, and one that read it before has written its payload already, which ours replaces.
        with self.pipeline.labels_lock, self.sessions() as db:
            row = db.get(Document, doc_id)
            if row is None:
                raise catalog.NotFound(f"document {doc_id!r} is gone")
            previous = (getattr(row, self.label), getattr(row, f"{self.label}_override"))
            setattr(row, self.label, value)
            setattr(row, f"{self.label}_override", override)
            db.commit()
            try:
                self._write_payload(doc_id, value)
            except Exception:
                setattr(row, self.label, previous[0])
                setattr(row, f"{self.label}_override", previous[1])
                db.commit()
                raise

    def _undo(self, doc_id: str, before: tuple[list[str], list[str] | None]) -> dict[str, Any]:
        return {"doc_id": doc_id, "before": before[0], "override_before": before[1]}

    def _restore(self, undo: dict[str, Any]) -> None:
        # Undo records from before overrides existed have no `override_before`: there was none.
        override = undo.get("override_before")
        self._set(undo["doc_id"], list(undo["before"]), list(override) if override is not None else None)


class SetDocumentAcl(_DocumentLabel, Tool[DocumentAclInput]):
    """Change who may read an indexed document, in SQL and in every chunk's payload; undo restores it.
    The ACL is kept as an override: later re-indexes of its source keep it instead of recomputing it."""

    name = "set_document_acl"
    description = "Set the ACL groups of an indexed document (admin); re-indexes keep them."
    input_model = DocumentAclInput
    scope = "admin"
    effect = "write"
    idempotent = True
    label, noun = "acl", "ACL"

    @staticmethod
    def validate(values: list[str]) -> list[str]:
        return catalog.validate_acl(values)


class SetDocumentTags(_DocumentLabel, Tool[DocumentTagsInput]):
    """Replace an indexed document's tags (an empty list removes them), in SQL and in every chunk's payload;
    undo restores them. The tags are kept as an override: later re-indexes keep them instead of the front matter's."""

    name = "set_document_tags"
    description = "Set the tags of an indexed document (admin); [] removes them; re-indexes keep them."
    input_model = DocumentTagsInput
    scope = "admin"
    effect = "write"
    idempotent = True
    label, noun = "tags", "tags"

    @staticmethod
    def validate(values: list[str]) -> list[str]:
        return catalog.validate_tags(values)


class ReindexInput(BaseModel):
    source: str = Field(min_length=1, max_length=64)


class ReindexSource(Tool[ReindexInput]):
    """Queue an incremental re-index (what POST /v1/sources/{name}/reindex does)."""

    name = "reindex_source"
    description = "Queue an incremental re-index of a source (admin)."
    input_model = ReindexInput
    scope = "admin"
    effect = "write"
    idempotent = True

    def __init__(self, sessions: sessionmaker[Session], enqueue: Callable[[str], None]) -> None:
        self.sessions = sessions
        self.enqueue = enqueue

    def targets(self, input: ReindexInput) -> list[Target]:
        return [Target("source", input.source)]

    def plan(self, input: ReindexInput, ctx: ToolContext) -> Plan:
        with self.sessions() as db:
            source = catalog.get_source(db, input.source)
            return Plan(f"re-index source {source.id!r}", {"kind": source.kind})

    def apply(self, input: ReindexInput, ctx: ToolContext) -> Applied:
        with self.sessions() as db:
            job_id = catalog.open_job(db, input.source).id
        self.enqueue(job_id)
        return Applied({"job_id": job_id}, {"job_id": job_id, "source": input.source})

    def compensate(self, undo: dict[str, Any], ctx: ToolContext) -> None:
        # Nothing to restore: a re-index only makes the index match the source again, and running it (or not)
        # changes no document. The job is left to finish.
        log.info("agent.reindex_not_undone run=%s job=%s reason=idempotent", ctx.run_id, undo.get("job_id"))


class WebhookInput(BaseModel):
    url: str = Field(pattern=r"^https?://", max_length=2000)
    payload: dict[str, Any] = Field(default_factory=dict)
    undo_url: str = Field(pattern=r"^https?://", max_length=2000, description="called with the response id on undo")


def _host(url: str) -> str:
    return (urlparse(url).hostname or "").lower()


class Webhook(Tool[WebhookInput]):
    """POST JSON to an allow-listed host; undo POSTs `{id, run_id}` (the first call's response id) to `undo_url`."""

    name = "webhook"
    description = "POST a JSON payload to an allow-listed URL; undone by a call to undo_url."
    input_model = WebhookInput
    scope = "webhook"
    effect = "write"
    open_world = True

    def __init__(self, allowed_hosts: list[str], timeout_s: float = 10.0) -> None:
        self.allowed_hosts = {h.strip().lower() for h in allowed_hosts if h.strip()}
        self.timeout_s = timeout_s

    def targets(self, input: WebhookInput) -> list[Target]:
        return [Target("url_host", _host(input.url))]

    def _check(self, input: WebhookInput) -> None:
        for url in (input.url, input.undo_url):
            if _host(url) not in self.allowed_hosts:
                allowed = ", ".join(sorted(self.allowed_hosts)) or "(none: set KB_AGENT_WEBHOOK_HOSTS)"
                raise PermissionError(f"host {_host(url)!r} is not in the webhook allow-list: {allowed}")

    def plan(self, input: WebhookInput, ctx: ToolContext) -> Plan:
        self._check(input)
        return Plan(f"POST to {input.url}", {"url": input.url, "undo_url": input.undo_url})

    def apply(self, input: WebhookInput, ctx: ToolContext) -> Applied:
        self._check(input)
        resp = httpx.post(input.url, json=input.payload, timeout=self.timeout_s, follow_redirects=False)
        resp.raise_for_status()
        try:
            body = resp.json()
        except ValueError:
            body = {}
        sent_id = str(body.get("id", "")) if isinstance(body, dict) else ""
        return Applied(
            {"status": resp.status_code, "id": sent_id}, {"undo_url": input.undo_url, "id": sent_id, "url": input.url}
        )

    def compensate(self, undo: dict[str, Any], ctx: ToolContext) -> None:
        if _host(undo["undo_url"]) not in self.allowed_hosts:
            raise PermissionError(f"undo host {_host(undo['undo_url'])!r} left the allow-list; undo by hand")
        resp = httpx.post(undo["undo_url"], json={"id": undo["id"], "run_id": ctx.run_id}, timeout=self.timeout_s)
        resp.raise_for_status()


def builtin_tools(
    sessions: sessionmaker[Session],
    pipeline: IngestPipeline,
    retriever: Retriever,
    enqueue: Callable[[str], None],
    notes_dir: Path,
    webhook_hosts: list[str],
) -> list[Tool[Any]]:
    """Every built-in tool, wired to this process's components."""
    notes = NoteBook(sessions, pipeline, notes_dir)
    return [
        SearchKb(retriever),
        CreateNote(notes),
        UpdateNote(notes),
        DeleteNote(notes),
        SetDocumentAcl(sessions, pipeline),
        SetDocumentTags(sessions, pipeline),
        ReindexSource(sessions, enqueue),
        Webhook(webhook_hosts),
    ]
