"""Ingestion through the real pipeline into a real Qdrant Edge shard, with SQLite state."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.db import init_db
from ingestion import catalog
from ingestion.models import Document
from ingestion.pipeline import IngestPipeline
from retrieval.embedder import Embedder
from retrieval.search import Retriever
from retrieval.settings import IndexSettings
from retrieval.types import Principal, SearchMode
from retrieval.versions import EdgeVersions, LiveStore

PUBLIC = Principal("visitor")
HR = Principal("hr-person", groups=("hr",))


@dataclass
class Env:
    pipeline: IngestPipeline
    retriever: Retriever
    store: LiveStore
    corpus: Path

    def ingest(self, acl: tuple[str, ...] = ("public",)) -> dict[str, object]:
        with self.pipeline.sessions() as db:
            try:
                catalog.create_source(db, "docs", str(self.corpus), list(acl))
            except catalog.Conflict:
                catalog.update_source(db, "docs", acl=list(acl))
            job_id = catalog.open_job(db, "docs").id
        return self.pipeline.run_job(job_id)

    def doc_ids(self, query: str, mode: SearchMode = SearchMode.HYBRID, who: Principal = PUBLIC) -> list[str]:
        return [h.chunk.doc_id for h in self.retriever.search(query, who, mode, 10)]


@pytest.fixture
def env(tmp_path: Path, corpus: Path, embedder: Embedder) -> Iterator[Env]:
    settings = IndexSettings(data_dir=tmp_path / "data")
    store = LiveStore(EdgeVersions(settings))
    sessions = init_db(f"sqlite:///{tmp_path / 'kb.sqlite'}")
    pipeline = IngestPipeline(sessions, store, embedder, settings, batch_chunks=4)
    yield Env(pipeline, Retriever(store, embedder, settings), store, corpus)
    store.close()


@pytest.mark.parametrize("mode", list(SearchMode))
def test_a_known_passage_is_found_in_every_mode(env: Env, mode: SearchMode) -> None:
    result = env.ingest()
    assert result["status"] == "succeeded" and result["docs_failed"] == 0
    assert env.doc_ids("How many vacation days does a full-time employee get per year?", mode)[0] == (
        "docs:vacation-policy.md"
    )
    assert env.doc_ids("daily meal allowance on business trips abroad", mode)[0] == "docs:expenses.md"


def test_reingesting_unchanged_documents_embeds_nothing(env: Env, embedder: Embedder) -> None:
    first = env.ingest()
    before_points, before_embedded = sorted(env.store.point_ids()), embedder.texts_embedded
    second = env.ingest()
    assert second["chunks_embedded"] == 0 and second["docs_skipped"] == first["docs_done"]
    assert embedder.texts_embedded == before_embedded
    assert sorted(env.store.point_ids()) == before_points


def test_editing_a_file_replaces_only_its_chunks(env: Env) -> None:
    env.ingest()
    office_before = set(env.store.point_ids("docs:office.txt"))
    others_before = set(env.store.point_ids()) - office_before
    (env.corpus / "office.txt").write_text("Office hours\n\nThe office now opens at 6:30 and has a rooftop garden.\n")
    result = env.ingest()
    assert result["chunks_embedded"] == 1
    office_after = set(env.store.point_ids("docs:office.txt"))
    assert office_after and not office_after & office_before
    assert set(env.store.point_ids()) - office_after == others_before
    assert env.doc_ids("rooftop garden", SearchMode.BM25) == ["docs:office.txt"]


def test_deleting_a_file_removes_its_chunks(env: Env) -> None:
    env.ingest()
    assert env.store.count("docs:security.md") > 0
    (env.corpus / "security.md").unlink()
    result = env.ingest()
    assert result["docs_deleted"] == 1
    assert env.store.count("docs:security.md") == 0
    assert "docs:security.md" not in env.doc_ids("password manager multi-factor authentication")
    with env.pipeline.sessions() as db:
        assert db.get(Document, "docs:security.md") is None


def test_a_retried_job_writes_no_duplicate_points(env: Env) -> None:
    with env.pipeline.sessions() as db:
        catalog.create_source(db, "docs", str(env.corpus), ["public"])
        job_id = catalog.open_job(db, "docs").id
    env.pipeline.run_job(job_id)
    count = env.store.count()
    # A redelivered task after a crash: the job is marked running again and re-run from the top.
    env.pipeline._update(job_id, status="running")
    with env.pipeline.sessions() as db:
        for doc in db.query(Document):
            doc.content_hash = ""  # force re-embedding: same chunks, same deterministic ids
        db.commit()
    rerun = env.pipeline.run_job(job_id)
    assert rerun["chunks_embedded"] > 0
    assert env.store.count() == count
    assert len(set(env.store.point_ids())) == count


def test_restricted_document_never_reaches_an_outsider(env: Env) -> None:
    env.ingest()
    query = "engineering level 2 salary range"
    for mode in SearchMode:
        assert "docs:salary-bands.md" not in env.doc_ids(query, mode, PUBLIC), mode
        assert env.doc_ids(query, mode, HR)[0] == "docs:salary-bands.md", mode


def test_changing_only_the_acl_updates_payloads_without_embedding(env: Env) -> None:
    env.ingest(acl=("public",))
    assert "docs:office.txt" in env.doc_ids("office opening hours kitchen coffee")
    result = env.ingest(acl=("staff",))
    assert result["chunks_embedded"] == 0
    assert "docs:office.txt" not in env.doc_ids("office opening hours kitchen coffee")
    assert "docs:office.txt" in env.doc_ids("office opening hours kitchen coffee", who=Principal("s", ("staff",)))
    # The HR document narrowed itself to `hr`, which is not within `staff`: it is now refused.
    assert "docs:salary-bands.md" not in env.doc_ids("salary", SearchMode.BM25, Principal("h", ("hr", "staff")))


def test_bad_files_fail_alone_with_a_reason(env: Env) -> None:
    (env.corpus / "broken.pdf").write_bytes(b"%PDF-1.4\n this is not really a pdf")
    (env.corpus / "binary.txt").write_bytes(b"\x00\x01\x02\x03" * 100)
    (env.corpus / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    result = env.ingest()
    assert result["status"] == "succeeded"
    assert result["docs_failed"] == 3 and result["docs_done"] == 6
    with env.pipeline.sessions() as db:
        failures = {f["path"]: f["reason"] for f in catalog.job_failures(db, str(result["id"]))}
    assert "PDF" in failures["broken.pdf"]
    assert "binary" in failures["binary.txt"]
    assert "image.png" in failures
    assert env.doc_ids("vacation days")[0] == "docs:vacation-policy.md"


def test_full_rebuild_switches_atomically_while_queries_keep_getting_complete_answers(env: Env) -> None:
    import threading

    first = env.ingest()
    old_version = env.store.version
    baseline = env.doc_ids("vacation days carry over", SearchMode.HYBRID)
    assert len(baseline) == 5  # every public document (the sixth is HR-only)
    seen: list[list[str]] = []
    stop = threading.Event()

    def query_loop() -> None:
        while not stop.is_set():
            seen.append(env.doc_ids("vacation days carry over", SearchMode.HYBRID))

    reader = threading.Thread(target=query_loop)
    reader.start()
    try:
        with env.pipeline.sessions() as db:
            job_id = catalog.open_rebuild(db).id
        result = env.pipeline.run_job(job_id)
    finally:
        stop.set()
        reader.join()
    assert result["status"] == "succeeded" and result["chunks_embedded"] == first["chunks_indexed"]
    assert env.store.version == old_version + 1
    assert len(seen) > 3
    for hits in seen:  # never empty, never partial: every answer holds the whole index
        assert sorted(hits) == sorted(baseline)
    assert env.doc_ids("vacation days carry over", SearchMode.HYBRID) == baseline
    with env.pipeline.sessions() as db:
        assert db.query(Document).count() == 6
    # After the switch, incremental jobs write to the new version and still skip unchanged documents.
    assert env.ingest()["chunks_embedded"] == 0


def test_a_rebuild_that_fails_its_check_keeps_the_live_index(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.ingest()
    version = env.store.version
    monkeypatch.setattr(env.pipeline, "_check_rebuild", _raise_check)
    with env.pipeline.sessions() as db:
        job_id = catalog.open_rebuild(db).id
    result = env.pipeline.run_job(job_id)
    assert result["status"] == "failed" and "live index kept" in str(result["error"])
    assert env.store.version == version
    assert env.doc_ids("vacation days")[0] == "docs:vacation-policy.md"
    assert not (env.store.versions.root / f"kb_v{version + 1}").exists()  # type: ignore[attr-defined]


def _raise_check(run: object) -> None:
    from ingestion.pipeline import RebuildCheckFailed

    raise RebuildCheckFailed("new index holds 0 chunks, expected 7; live index kept")


def test_a_cancelled_job_stops_between_documents(env: Env) -> None:
    with env.pipeline.sessions() as db:
        catalog.create_source(db, "docs", str(env.corpus), ["public"])
        job_id = catalog.open_job(db, "docs").id
        catalog.cancel_job(db, job_id)
    result = env.pipeline.run_job(job_id)
    assert result["status"] == "cancelled" and result["docs_done"] == 0
    assert env.store.count() == 0


def test_retry_reprocesses_only_the_failed_documents(env: Env) -> None:
    (env.corpus / "notes.txt").write_bytes(b"\x00binary")
    first = env.ingest()
    assert first["docs_failed"] == 1
    (env.corpus / "notes.txt").write_text("Team notes: the retrospective is on Fridays.")
    with env.pipeline.sessions() as db:
        retry_id = catalog.open_retry(db, str(first["id"])).id
    retry = env.pipeline.run_job(retry_id)
    assert retry["docs_total"] == 1 and retry["docs_done"] == 1 and retry["chunks_embedded"] == 1
    assert env.doc_ids("retrospective Fridays", SearchMode.BM25) == ["docs:notes.txt"]
