"""The answer service with a real cache, called the way the CLI and the evals call it (one answer, then stop)."""

from __future__ import annotations

import time
from pathlib import Path

from app.services import AnswerService
from retrieval.cache import CacheSettings, SemanticCache
from retrieval.rerank import Reranker, RerankSettings
from retrieval.search import Retriever
from retrieval.settings import IndexSettings
from retrieval.types import Principal
from retrieval.versions import LiveStore, open_versions
from tests.retrieval.test_cache import indexed


def test_a_second_identical_question_in_process_is_a_cache_hit(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    settings = IndexSettings(data_dir=tmp_path)
    store = LiveStore(open_versions(settings))
    store.ensure_collection(embedder.dim)
    store.upsert([indexed(embedder, "vacation", "Employees get 25 vacation days per year.", ("public",))])
    cache = SemanticCache(store.versions.cache_table(), store.retrieve, lambda: store.version, CacheSettings())
    cache.ensure(embedder.dim)
    service = AnswerService(Retriever(store, embedder, settings), embedder, Reranker(RerankSettings()), cache=cache)
    try:
        first = service.answer(Principal("u"), "How many vacation days do employees get?")
        assert not first.abstained and not first.usage.cache_hit and "25 vacation days" in first.text
        deadline = time.time() + 10
        while cache.count() == 0 and time.time() < deadline:  # the write happens beside the answer
            time.sleep(0.05)
        second = service.answer(Principal("u"), "How many vacation days do employees get?")
        assert second.usage.cache_hit and second.text == first.text and second.citations == first.citations
        assert "retrieve" not in second.usage.stages_ms and second.usage.cost == 0
    finally:
        cache.close()
        store.close()


def test_sentence_vectors_are_computed_once_per_answer(embedder) -> None:  # type: ignore[no-untyped-def]
    from app.services import _SentenceVectors

    calls: list[list[str]] = []

    def embed(texts: list[str]):  # type: ignore[no-untyped-def]
        calls.append(list(texts))
        return embedder.embed_documents(texts)

    vectors = _SentenceVectors(embed)
    first = vectors(["Employees get 25 days.", "The office opens at 7."])
    again = vectors(["The office opens at 7.", "Employees get 25 days.", "Badges are blue."])
    assert calls == [["Employees get 25 days.", "The office opens at 7."], ["Badges are blue."]]
    assert (again[1] == first[0]).all() and again.shape == (3, embedder.dim)
