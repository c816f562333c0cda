"""The semantic cache never serves an answer made under one tag filter to a question asked under another (or
none), on both backends; and the answer service keys what it caches by the filter."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.services import AnswerService
from retrieval.cache import CacheSettings, SemanticCache
from retrieval.embedder import Embedder
from retrieval.rerank import Reranker, RerankSettings
from retrieval.search import Retriever
from retrieval.settings import IndexSettings
from retrieval.store import IndexedChunk
from retrieval.types import Chunk, Hit, Principal
from retrieval.versions import LiveStore, open_versions
from tests.retrieval.test_cache import Clock, make_cache

ANYONE = Principal("anyone")
QUESTION = "How many vacation days do employees get each year?"


def tagged(embedder: Embedder, doc: str, text: str, tags: tuple[str, ...]) -> IndexedChunk:
    chunk = Chunk(doc_id=doc, source="s", ordinal=0, text=text, content_hash="v1", acl=("public",), tags=tags)
    return IndexedChunk(chunk, embedder.embed_query(text), "")


@pytest.fixture(params=["edge", "server"])
def live(request: pytest.FixtureRequest, tmp_path: Path, embedder: Embedder) -> Iterator[LiveStore]:
    path = str(tmp_path / "qdrant-local") if request.param == "server" else ""
    store = LiveStore(open_versions(IndexSettings(data_dir=tmp_path, qdrant_path=path)))
    store.ensure_collection(embedder.dim)
    store.upsert(
        [
            tagged(embedder, "vacation", "Employees get 25 vacation days per year.", ("leave",)),
            tagged(embedder, "vacation-2025", "In 2025 employees got 23 vacation days per year.", ("archive",)),
        ]
    )
    yield store
    store.close()


def hit(live: LiveStore, doc: str) -> Hit:
    point = next(p for p in live.retrieve(live.point_ids()) if p.payload["doc_id"] == doc)
    return Hit(Chunk.from_payload(point.payload), 1.0, point.id)


def test_an_answer_is_served_only_under_the_tag_filter_it_was_made_under(live: LiveStore, embedder: Embedder) -> None:
    cache = make_cache(live, embedder, Clock())
    vec = embedder.embed_query(QUESTION)
    cache.put(vec, QUESTION, "hybrid", [hit(live, "vacation-2025")], {"text": "23 days [1]"}, tags=["archive"])
    assert cache.lookup(vec, ANYONE, "hybrid") is None  # no filter: it might have found another document
    assert cache.lookup(vec, ANYONE, "hybrid", ["leave"]) is None
    assert cache.lookup(vec, ANYONE, "hybrid", ["archive", "leave"]) is None
    served = cache.lookup(vec, ANYONE, "hybrid", ["archive"])
    assert served is not None and served.answer["text"] == "23 days [1]"

    cache.put(vec, QUESTION, "hybrid", [hit(live, "vacation")], {"text": "25 days [1]"})
    unfiltered = cache.lookup(vec, ANYONE, "hybrid")
    assert unfiltered is not None and unfiltered.answer["text"] == "25 days [1]"
    again = cache.lookup(vec, ANYONE, "hybrid", ["archive"])
    assert again is not None and again.answer["text"] == "23 days [1]"


def test_a_passage_that_lost_the_filters_tags_invalidates_the_entry(live: LiveStore, embedder: Embedder) -> None:
    cache = make_cache(live, embedder, Clock())
    vec = embedder.embed_query(QUESTION)
    cache.put(vec, QUESTION, "hybrid", [hit(live, "vacation")], {"text": "25 days [1]"}, tags=["leave"])
    assert cache.lookup(vec, ANYONE, "hybrid", ["leave"]) is not None
    live.set_tags("vacation", ["archive"])  # an admin re-tagged the document after the answer was cached
    assert cache.lookup(vec, ANYONE, "hybrid", ["leave"]) is None
    assert cache.count() == 0


def test_the_answer_service_does_not_reuse_an_answer_across_tag_filters(tmp_path: Path, embedder: Embedder) -> None:
    settings = IndexSettings(data_dir=tmp_path)
    store = LiveStore(open_versions(settings))
    store.ensure_collection(embedder.dim)
    store.upsert(
        [
            tagged(embedder, "vacation", "Employees get 25 vacation days per year.", ("leave",)),
            tagged(embedder, "vacation-2025", "In 2025 employees got 23 vacation days per year.", ("archive",)),
        ]
    )
    cache = SemanticCache(store.versions.cache_table(), store.retrieve, lambda: store.version, CacheSettings())
    cache.ensure(embedder.dim)
    service = AnswerService(Retriever(store, embedder, settings), embedder, Reranker(RerankSettings()), cache=cache)

    def wait_for(entries: int) -> None:
        deadline = time.time() + 10
        while cache.count() < entries and time.time() < deadline:  # the write happens beside the answer
            time.sleep(0.05)

    try:
        archived = service.answer(ANYONE, QUESTION, tags=["archive"])
        assert not archived.usage.cache_hit and {c.doc_id for c in archived.citations} == {"vacation-2025"}
        assert all(c.tags == ("archive",) for c in archived.citations)
        wait_for(1)
        current = service.answer(ANYONE, QUESTION, tags=["leave"])
        assert not current.usage.cache_hit and {c.doc_id for c in current.citations} == {"vacation"}
        wait_for(2)
        repeated = service.answer(ANYONE, QUESTION, tags=["archive"])
        assert repeated.usage.cache_hit and repeated.text == archived.text
        assert repeated.citations == archived.citations  # tags survive the cache's JSON round trip
    finally:
        cache.close()
        store.close()
