"""Knowledge notes for the agents: Markdown files in the `notes` source, indexed before a step returns, and the
tools that create, update and delete them (each undone by restoring the file as it was)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from agents.tools import Applied, Plan, Target, Tool, ToolContext
from ingestion import catalog
from ingestion.models import Document, Source
from ingestion.pipeline import IngestPipeline
from retrieval.types import PUBLIC_GROUP, Principal

NOTES_SOURCE = "notes"
NOTE_NAME = r"^[a-z0-9][a-z0-9-]{0,63}$"


class NoteError(RuntimeError):
    """A note cannot be written or indexed; the message says what to do."""


def _readable(acl: list[str], principal: Principal) -> bool:
    return "admin" in principal.scopes or PUBLIC_GROUP in acl or bool(set(acl) & set(principal.groups))


class NoteBook:
    """Notes as Markdown files in the `notes` source, indexed at once through the ingestion pipeline.

    Indexing runs `pipeline.run_job` in the calling thread: the same pipeline object the embedded Celery worker
    uses, so its write lock keeps a note's re-index and a worker's job from writing the shard at once."""

    def __init__(self, sessions: sessionmaker[Session], pipeline: IngestPipeline, folder: Path) -> None:
        self.sessions = sessions
        self.pipeline = pipeline
        self.folder = folder
        self._lock = threading.Lock()  # one note change (file + re-index) at a time

    @staticmethod
    def doc_id(name: str) -> str:
        return f"{NOTES_SOURCE}:{name}.md"

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.md"

    def read(self, name: str) -> str | None:
        path = self.path(name)
        return path.read_text(encoding="utf-8") if path.exists() else None

    def acl(self, name: str) -> list[str] | None:
        """The note's ACL as indexed (None when the note does not exist or is not indexed)."""
        with self.sessions() as db:
            row = db.get(Document, self.doc_id(name))
            return list(row.acl) if row is not None else None

    @staticmethod
    def render(title: str, text: str, acl: list[str]) -> str:
        title = " ".join(title.split())
        return f"---\ntitle: {title}\nacl: [{', '.join(acl)}]\n---\n# {title}\n\n{text.strip()}\n"

    def write(self, name: str, content: str | None) -> dict[str, object]:
        """Write (or, with None, remove) a note's file and re-index the notes source before returning."""
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.path(name)
            if content is None:
                path.unlink(missing_ok=True)
            else:
                tmp = path.with_suffix(".md.part")
                tmp.write_text(content, encoding="utf-8")
                tmp.replace(path)  # the indexer never sees half a note
            return self._reindex()

    def _reindex(self) -> dict[str, object]:
        with self.sessions() as db:
            if db.get(Source, NOTES_SOURCE) is None:
                # Public source: each note narrows it to its author's groups in front matter.
                catalog.create_source(db, NOTES_SOURCE, str(self.folder.resolve()), [PUBLIC_GROUP])
            job_id = catalog.open_job(db, NOTES_SOURCE).id
        done = self.pipeline.run_job(job_id)
        if done.get("status") != "succeeded" or done.get("docs_failed"):
            with self.sessions() as db:
                failures = catalog.job_failures(db, job_id)
            raise NoteError(f"re-indexing notes failed (job {job_id}): {done.get('error') or failures}")
        return done


class CreateNoteInput(BaseModel):
    name: str = Field(pattern=NOTE_NAME, description="the note's id: lowercase letters, digits and '-'")
    title: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=100_000)


class _NoteTool:
    def __init__(self, notes: NoteBook) -> None:
        self.notes = notes

    def targets(self, input: Any) -> list[Target]:
        """Every note step touches the notes source and its own document."""
        return [Target("source", NOTES_SOURCE), Target("document", NoteBook.doc_id(input.name))]

    def _readable_note(self, name: str, principal: Principal) -> tuple[str, list[str]]:
        text, acl = self.notes.read(name), self.notes.acl(name)
        if text is None or acl is None or not _readable(acl, principal):
            raise NoteError(f"no note {name!r} that {principal.name!r} may read; list notes with search_kb")
        return text, acl


class CreateNote(_NoteTool, Tool[CreateNoteInput]):
    """A new note readable by the caller's groups (public when the caller has none); undo deletes it."""

    name = "create_note"
    description = "Create a knowledge note (Markdown), indexed at once and readable by the caller's groups."
    input_model = CreateNoteInput
    scope = "notes"
    effect = "write"

    def plan(self, input: CreateNoteInput, ctx: ToolContext) -> Plan:
        if self.notes.read(input.name) is not None:
            raise NoteError(f"note {input.name!r} already exists; use update_note")
        acl = sorted(ctx.principal.groups) or [PUBLIC_GROUP]
        return Plan(f"create note {input.name!r}", {"doc_id": NoteBook.doc_id(input.name), "acl": acl})

    def apply(self, input: CreateNoteInput, ctx: ToolContext) -> Applied:
        details = self.plan(input, ctx).details
        self.notes.write(input.name, NoteBook.render(input.title, input.text, details["acl"]))
        return Applied(details, {"name": input.name})

    def compensate(self, undo: dict[str, Any], ctx: ToolContext) -> None:
        self.notes.write(undo["name"], None)


class UpdateNoteInput(BaseModel):
    name: str = Field(pattern=NOTE_NAME)
    title: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=100_000)


class UpdateNote(_NoteTool, Tool[UpdateNoteInput]):
    """Replace a note's title and text (its ACL stays); undo restores the old file."""

    name = "update_note"
    description = "Replace the title and text of a knowledge note the caller may read."
    input_model = UpdateNoteInput
    scope = "notes"
    effect = "write"
    idempotent = True

    def plan(self, input: UpdateNoteInput, ctx: ToolContext) -> Plan:
        before, acl = self._readable_note(input.name, ctx.principal)
        return Plan(f"update note {input.name!r}", {"doc_id": NoteBook.doc_id(input.name), "acl": acl})

    def apply(self, input: UpdateNoteInput, ctx: ToolContext) -> Applied:
        before, acl = self._readable_note(input.name, ctx.principal)
        self.notes.write(input.name, NoteBook.render(input.title, input.text, acl))
        return Applied({"doc_id": NoteBook.doc_id(input.name)}, {"name": input.name, "before": before})

    def compensate(self, undo: dict[str, Any], ctx: ToolContext) -> None:
        self.notes.write(undo["name"], undo["before"])


class DeleteNoteInput(BaseModel):
    name: str = Field(pattern=NOTE_NAME)


class DeleteNote(_NoteTool, Tool[DeleteNoteInput]):
    """Delete a note (waits for approval); undo writes it back and re-indexes it."""

    name = "delete_note"
    description = "Delete a knowledge note the caller may read."
    input_model = DeleteNoteInput
    scope = "notes"
    effect = "destructive"

    def plan(self, input: DeleteNoteInput, ctx: ToolContext) -> Plan:
        text, acl = self._readable_note(input.name, ctx.principal)
        return Plan(f"delete note {input.name!r}", {"doc_id": NoteBook.doc_id(input.name), "chars": len(text)})

    def apply(self, input: DeleteNoteInput, ctx: ToolContext) -> Applied:
        before, _acl = self._readable_note(input.name, ctx.principal)
        self.notes.write(input.name, None)
        return Applied({"deleted": NoteBook.doc_id(input.name)}, {"name": input.name, "before": before})

    def compensate(self, undo: dict[str, Any], ctx: ToolContext) -> None:
        self.notes.write(undo["name"], undo["before"])
