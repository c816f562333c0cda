"""Hybrid retriever: one engine query per search, always under the caller's ACL filter."""

from __future__ import annotations

import logging
import time

from retrieval.bm25 import query_terms
from retrieval.embedder import TextEmbedder
from retrieval.fusion import fused_agreement, fusion_weights
from retrieval.settings import IndexSettings
from retrieval.store import Store, StoreQuery
from retrieval.types import Chunk, Hit, Principal, SearchMode

log = logging.getLogger(__name__)


class Retriever:
    """Turns a question into hits: embeds it, builds the one Qdrant query for the mode, maps points to hits."""

    def __init__(self, store: Store, embedder: TextEmbedder, settings: IndexSettings) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings

    def build_query(
        self,
        query: str,
        principal: Principal,
        mode: SearchMode,
        limit: int,
        dense: list[float] | None = None,
        tags: list[str] | None = None,
    ) -> StoreQuery:
        fusion = self.settings.fusion
        terms = query_terms(query)
        if mode == SearchMode.BM25:
            dense = None
        elif dense is None:
            dense = self.embedder.embed_query(query)
        weights = fusion_weights(fusion, terms)
        return StoreQuery(
            mode=mode,
            acl_groups=principal.readable_groups,
            limit=limit,
            tags=list(tags) if tags else None,
            dense=dense,
            text=" ".join(terms),
            rrf_k=fusion.rrf_k,
            dense_prefetch=max(fusion.dense_prefetch, limit),
            bm25_prefetch=max(fusion.bm25_prefetch, limit),
            weights=weights,
        )

    def search(
        self,
        query: str,
        principal: Principal,
        mode: SearchMode = SearchMode.HYBRID,
        limit: int = 10,
        dense: list[float] | None = None,
        tags: list[str] | None = None,
    ) -> list[Hit]:
        """Top `limit` chunks the principal may read, best first (`dense`: the query's vector, if known;
        `tags`: only chunks of documents with at least one of these tags)."""
        started = time.perf_counter()
        request = self.build_query(query, principal, mode, limit, dense, tags)
        if mode == SearchMode.BM25 and not request.text:
            return []
        if mode == SearchMode.HYBRID and not request.text:
            request = StoreQuery(**{**request.__dict__, "mode": SearchMode.DENSE})
        points = self.store.query(request)
        hits = [Hit(chunk=Chunk.from_payload(p.payload), score=p.score, point_id=p.id) for p in points]
        log.debug("search mode=%s hits=%d ms=%.1f", mode.value, len(hits), (time.perf_counter() - started) * 1000)
        return hits

    def agreement(self, query: str, hits: list[Hit], mode: SearchMode) -> float | None:
        """BM25 and dense agreement on the top hit of a hybrid search (None in other modes), from its score."""
        terms = query_terms(query)
        if mode != SearchMode.HYBRID or not hits or not terms:
            return None
        weights = fusion_weights(self.settings.fusion, terms)
        return fused_agreement(hits[0].score, self.settings.fusion.rrf_k, weights)
