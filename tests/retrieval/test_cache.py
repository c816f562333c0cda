"""Semantic cache on a real Qdrant index (Edge, and qdrant-client's local mode as the server stand-in)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retrieval.bm25 import bm25_field_text
from retrieval.cache import CacheSettings, SemanticCache
from retrieval.settings import IndexSettings
from retrieval.store import IndexedChunk
from retrieval.types import Chunk, Hit, Principal
from retrieval.versions import LiveStore, open_versions

HR = Principal("hr-user", ("hr",))
PUBLIC = Principal("anyone")
QUESTION = "How many vacation days do employees get each year?"
PARAPHRASE = "How many vacation days do employees get per year?"
OTHER = "Who do I call when my laptop is stolen?"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def indexed(embedder, doc: str, text: str, acl: tuple[str, ...], content_hash: str = "v1") -> IndexedChunk:  # type: ignore[no-untyped-def]
    chunk = Chunk(doc_id=doc, source="s", ordinal=0, text=text, content_hash=content_hash, acl=acl, title=doc)
    return IndexedChunk(chunk, embedder.embed_query(text), bm25_field_text(text))


@pytest.fixture(params=["edge", "server"])
def live(request: pytest.FixtureRequest, tmp_path: Path, embedder) -> Iterator[LiveStore]:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "qdrant-local") if request.param == "server" else ""
    store = LiveStore(open_versions(IndexSettings(data_dir=tmp_path, qdrant_path=path)))
    store.ensure_collection(embedder.dim)
    store.upsert(
        [
            indexed(embedder, "vacation", "Employees get 25 vacation days per year.", ("public",)),
            indexed(embedder, "salaries", "Salary bands are reviewed every April.", ("hr",)),
        ]
    )
    yield store
    store.close()


def make_cache(live: LiveStore, embedder, clock: Clock, **kw: object) -> SemanticCache:  # type: ignore[no-untyped-def]
    cache = SemanticCache(
        live.versions.cache_table(),
        live.retrieve,
        lambda: live.version,
        CacheSettings(**kw),
        clock,  # type: ignore[arg-type]
    )
    cache.ensure(embedder.dim)
    return cache


def hits_for(live: LiveStore, *docs: str) -> list[Hit]:
    points = {p.payload["doc_id"]: p for p in live.retrieve(live.point_ids())}
    return [Hit(Chunk.from_payload(points[d].payload), 1.0, points[d].id) for d in docs]


def test_a_close_question_gets_the_earlier_answer_and_a_different_one_does_not(live: LiveStore, embedder) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(live, embedder, Clock())
    cache.put(embedder.embed_query(QUESTION), QUESTION, "hybrid", hits_for(live, "vacation"), {"text": "25 days [1]"})
    hit = cache.lookup(embedder.embed_query(PARAPHRASE), PUBLIC, "hybrid")
    assert hit is not None and hit.answer["text"] == "25 days [1]" and hit.similarity >= 0.95
    assert [h.chunk.doc_id for h in hit.hits] == ["vacation"]
    assert cache.lookup(embedder.embed_query(OTHER), PUBLIC, "hybrid") is None
    assert cache.lookup(embedder.embed_query(QUESTION), PUBLIC, "bm25") is None  # another search mode


def test_an_answer_from_passages_the_caller_may_not_read_is_never_served(live: LiveStore, embedder) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(live, embedder, Clock())
    vec = embedder.embed_query("When are salary bands reviewed?")
    cache.put(
        vec, "When are salary bands reviewed?", "hybrid", hits_for(live, "salaries", "vacation"), {"text": "April"}
    )
    assert cache.lookup(vec, PUBLIC, "hybrid") is None  # one source is HR-only
    assert cache.lookup(vec, HR, "hybrid") is not None
    live.set_acl("salaries", ["finance"])  # the ACL changed after the answer was cached
    assert cache.lookup(vec, HR, "hybrid") is None
    assert cache.lookup(vec, Principal("cfo", ("finance",)), "hybrid") is not None


def test_reindexing_a_cited_document_invalidates_the_entry(live: LiveStore, embedder) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(live, embedder, Clock())
    vec = embedder.embed_query(QUESTION)
    cache.put(vec, QUESTION, "hybrid", hits_for(live, "vacation"), {"text": "25 days"})
    assert cache.count() == 1
    # what ingestion does when the file changed: new chunks under the new hash, then the old ones go
    live.upsert([indexed(embedder, "vacation", "Employees get 30 vacation days per year.", ("public",), "v2")])
    live.delete_doc("vacation", keep_hash="v2")
    assert cache.lookup(vec, PUBLIC, "hybrid") is None
    assert cache.count() == 0  # the stale entry was dropped


def test_a_new_index_version_misses(live: LiveStore, embedder) -> None:  # type: ignore[no-untyped-def]
    version = {"v": 1}
    cache = SemanticCache(live.versions.cache_table(), live.retrieve, lambda: version["v"], CacheSettings(), Clock())
    cache.ensure(embedder.dim)
    vec = embedder.embed_query(QUESTION)
    cache.put(vec, QUESTION, "hybrid", hits_for(live, "vacation"), {"text": "25 days"})
    version["v"] = 2  # a full re-index was promoted
    assert cache.lookup(vec, PUBLIC, "hybrid") is None


def test_entries_expire_and_the_table_keeps_its_size(live: LiveStore, embedder) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    cache = make_cache(live, embedder, clock, ttl_seconds=60.0, max_entries=10)
    vec = embedder.embed_query(QUESTION)
    cache.put(vec, QUESTION, "hybrid", hits_for(live, "vacation"), {"text": "first"})
    clock.now += 61
    assert cache.lookup(vec, PUBLIC, "hybrid") is None  # expired
    questions = [f"Question number {i} about the office kitchen?" for i in range(14)]
    for q in questions:
        clock.now += 1
        cache.put(embedder.embed_query(q), q, "hybrid", hits_for(live, "vacation"), {"text": q})
    assert 0 < cache.count() <= 10
    newest = cache.lookup(embedder.embed_query(questions[-1]), PUBLIC, "hybrid")
    assert newest is not None and newest.answer["text"] == questions[-1]
    oldest = cache.lookup(embedder.embed_query(questions[0]), PUBLIC, "hybrid")
    assert oldest is None or oldest.answer["text"] != questions[0]  # evicted first


def test_put_refuses_an_answer_without_its_passages(live: LiveStore, embedder) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(live, embedder, Clock())
    with pytest.raises(ValueError, match="point ids"):
        cache.put(embedder.embed_query(QUESTION), QUESTION, "hybrid", [], {"text": "x"})
