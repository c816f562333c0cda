"""Tag filters in the engine on both backends (Qdrant Edge, and qdrant-client's local mode as the server
stand-in): a filter narrows what the caller's ACL lets through and never widens it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retrieval import store_edge
from retrieval.bm25 import bm25_field_text
from retrieval.embedder import Embedder
from retrieval.search import Retriever
from retrieval.settings import IndexSettings
from retrieval.store import IndexedChunk, Store
from retrieval.store_edge import EdgeStore
from retrieval.store_server import QdrantServerStore
from retrieval.types import Chunk, Principal, SearchMode

OUTSIDER = Principal("visitor")
HR = Principal("hr-person", ("hr",))
DOCS = [
    ("vacation", "Employees get 25 vacation days per year.", ("public",), ("leave", "policy")),
    ("parental", "Parental leave lasts 16 weeks at full pay.", ("public",), ("leave",)),
    ("salaries", "Salary bands and pay reviews happen every April.", ("hr",), ("pay", "leave")),
    ("laptop", "Report a lost laptop to security within one hour.", ("public",), ()),
]


@pytest.fixture(params=["edge", "server"])
def retriever(request: pytest.FixtureRequest, tmp_path: Path, embedder: Embedder) -> Iterator[Retriever]:
    local = str(tmp_path / "local") if request.param == "server" else ""
    settings = IndexSettings(data_dir=tmp_path, qdrant_path=local)
    store: Store = EdgeStore(settings) if request.param == "edge" else QdrantServerStore(settings)
    store.ensure_collection(embedder.dim)
    points = []
    for doc, text, acl, tags in DOCS:
        chunk = Chunk(doc_id=doc, source="s", ordinal=0, text=text, content_hash="h", acl=acl, title=doc, tags=tags)
        points.append(IndexedChunk(chunk, embedder.embed_query(text), bm25_field_text(text)))
    store.upsert(points)
    yield Retriever(store, embedder, settings)
    store.close()


def found(r: Retriever, query: str, who: Principal, mode: SearchMode, tags: list[str] | None) -> list[str]:
    return sorted(h.chunk.doc_id for h in r.search(query, who, mode, 10, tags=tags))


@pytest.mark.parametrize("mode", list(SearchMode))
def test_a_tag_filter_keeps_only_documents_with_one_of_the_tags(retriever: Retriever, mode: SearchMode) -> None:
    query = "vacation parental leave pay salary laptop"
    assert found(retriever, query, OUTSIDER, mode, None) == ["laptop", "parental", "vacation"]
    assert found(retriever, query, OUTSIDER, mode, ["leave"]) == ["parental", "vacation"]
    assert found(retriever, query, OUTSIDER, mode, ["policy", "nothing-has-this"]) == ["vacation"]
    assert found(retriever, query, OUTSIDER, mode, ["nothing-has-this"]) == []
    hits = retriever.search(query, OUTSIDER, mode, 10, tags=["policy"])
    assert hits[0].chunk.tags == ("leave", "policy") and hits[0].citation.tags == ("leave", "policy")


@pytest.mark.parametrize("mode", list(SearchMode))
def test_a_tag_filter_never_reveals_what_the_acl_hides(retriever: Retriever, mode: SearchMode) -> None:
    query = "salary bands pay reviews"
    # The HR-only document is the only one tagged `pay`: an outsider filtering on it gets nothing at all.
    assert found(retriever, query, OUTSIDER, mode, ["pay"]) == []
    assert "salaries" not in found(retriever, query, OUTSIDER, mode, ["leave", "pay"])
    assert found(retriever, query, HR, mode, ["pay"]) == ["salaries"]
    broad = "vacation parental leave pay salary"
    assert found(retriever, broad, HR, mode, ["leave"]) == ["parental", "salaries", "vacation"]


def test_changing_a_documents_tags_changes_what_the_filter_finds(retriever: Retriever) -> None:
    retriever.store.set_tags("laptop", ["security"])
    assert found(retriever, "lost laptop", OUTSIDER, SearchMode.HYBRID, ["security"]) == ["laptop"]
    retriever.store.set_tags("laptop", [])
    assert found(retriever, "lost laptop", OUTSIDER, SearchMode.HYBRID, ["security"]) == []
    # set_tags leaves the ACL alone.
    assert found(retriever, "salary", OUTSIDER, SearchMode.BM25, None) == []


def test_an_edge_shard_made_before_tags_gets_their_index_when_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = IndexSettings(data_dir=tmp_path)
    with monkeypatch.context() as m:
        m.setattr(store_edge, "_KEYWORD_FIELDS", ("acl", "doc_id", "source", "content_hash"))  # the old schema
        old = EdgeStore(settings)
        old.ensure_collection(4)
        assert "tags" not in old.shard.info().payload_schema
        old.close()
    reopened = EdgeStore(settings)
    reopened.ensure_collection(4)
    assert "tags" in reopened.shard.info().payload_schema
    reopened.close()
