"""A real indexing stack for tests of labels (ACL, tags): pipeline, live store, retriever and SQL, on the
Edge or the server backend (qdrant-client's local mode) and on SQLite or PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from agents.tools import ToolContext
from app.agent_tools import SetDocumentAcl, SetDocumentTags
from app.db import init_db
from ingestion import catalog
from ingestion.models import Document
from ingestion.pipeline import IngestPipeline
from retrieval.embedder import Embedder
from retrieval.search import Retriever
from retrieval.settings import IndexSettings
from retrieval.types import Principal, SearchMode
from retrieval.versions import LiveStore, open_versions
from tests.conftest import postgres_database
from tests.ingestion.test_pipeline import Env

ADMIN = Principal("root", scopes=("admin",))
OUTSIDER = Principal("visitor")
STAFF = Principal("sam", ("staff",))
HR = Principal("hana", ("hr",))
# (index backend, SQL): each backend once, each SQL dialect once.
STACKS = [("edge", "sqlite"), ("server", "sqlite"), ("edge", "postgresql")]


def tag_corpus(corpus: Path) -> None:
    """Front matter tags on two sample documents: a list with mixed case, and a comma-separated string."""
    vacation = corpus / "vacation-policy.md"
    vacation.write_text("---\ntags: [Leave, policy]\n---\n" + vacation.read_text())
    salary = corpus / "salary-bands.md"
    salary.write_text(salary.read_text().replace("acl: [hr]\n", "acl: [hr]\ntags: pay, leave\n"))


@dataclass
class Stack(Env):
    """test_pipeline's Env, with a rebuild, label reads and the label tools."""

    def rebuild(self) -> dict[str, object]:
        with self.pipeline.sessions() as db:
            job_id = catalog.open_rebuild(db).id
        return self.pipeline.run_job(job_id)

    def doc_ids(
        self,
        query: str,
        who: Principal = OUTSIDER,
        mode: SearchMode = SearchMode.HYBRID,
        tags: list[str] | None = None,
    ) -> list[str]:
        return [h.chunk.doc_id for h in self.retriever.search(query, who, mode, 10, tags=tags)]

    def row(self, doc_id: str) -> Document:
        with self.pipeline.sessions() as db:
            row = db.get(Document, doc_id)
            assert row is not None, doc_id
            return row

    def payload_labels(self, doc_id: str) -> set[tuple[tuple[str, ...], tuple[str, ...]]]:
        """The (acl, tags) every chunk of the document carries in the live index."""
        points = self.store.retrieve(self.store.point_ids(doc_id))
        return {(tuple(p.payload["acl"]), tuple(p.payload.get("tags") or ())) for p in points}

    def acl_tool(self) -> SetDocumentAcl:
        return SetDocumentAcl(self.pipeline.sessions, self.pipeline)

    def tags_tool(self) -> SetDocumentTags:
        return SetDocumentTags(self.pipeline.sessions, self.pipeline)


def admin_context() -> ToolContext:
    return ToolContext(ADMIN, uuid.uuid4().hex)


@contextmanager
def stack(tmp_path: Path, corpus: Path, embedder: Embedder, backend: str, sql: str) -> Iterator[Stack]:
    with ExitStack() as exits:
        if sql == "sqlite":
            url = f"sqlite:///{tmp_path / 'kb.sqlite'}"
        else:
            url = exits.enter_context(postgres_database("kb_labels"))
        sessions = init_db(url)
        exits.callback(sessions.kw["bind"].dispose)
        local = str(tmp_path / "qdrant-local") if backend == "server" else ""
        settings = IndexSettings(data_dir=tmp_path / "data", qdrant_path=local)
        store = LiveStore(open_versions(settings))
        exits.callback(store.close)
        pipeline = IngestPipeline(sessions, store, embedder, settings, batch_chunks=4, work_dir=tmp_path / "work")
        yield Stack(pipeline, Retriever(store, embedder, settings), store, corpus)
