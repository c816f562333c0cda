"""Server backend: qdrant-client against a Qdrant server or cluster (or its local mode in tests)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from retrieval.settings import IndexSettings
from retrieval.store import IndexedChunk, ScrollingStore, StoredPoint, StoreQuery, StoreUnavailable
from retrieval.types import SearchMode

log = logging.getLogger(__name__)
_KEYWORD_FIELDS = ("acl", "doc_id", "source", "content_hash", "tags")
UNAVAILABLE = (ResponseHandlingException, UnexpectedResponse, ConnectionError, TimeoutError)


class QdrantServerStore(ScrollingStore):
    """One collection on a Qdrant server (`qdrant_url`) or in qdrant-client's local mode (`qdrant_path`)."""

    def __init__(
        self, settings: IndexSettings, collection: str | None = None, client: QdrantClient | None = None
    ) -> None:
        self.settings = settings
        self.collection = collection or settings.collection
        self._owns_client = client is None
        if client is not None:
            self.client = client
        elif settings.qdrant_url:
            self.client = QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key or None, timeout=10)
        else:
            self.client = QdrantClient(path=settings.qdrant_path or ":memory:")

    def ensure_collection(self, dim: int) -> None:
        try:
            if self.client.collection_exists(self.collection):
                self._index_new_fields()
                return
            self.client.create_collection(
                self.collection,
                vectors_config={
                    self.settings.dense_vector: models.VectorParams(size=dim, distance=models.Distance.COSINE)
                },
            )
            for name in _KEYWORD_FIELDS:
                self.client.create_payload_index(self.collection, name, models.PayloadSchemaType.KEYWORD)
            self.client.create_payload_index(
                self.collection,
                self.settings.text_field,
                models.TextIndexParams(type=models.TextIndexType.TEXT, scoring=True),
            )
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Qdrant server at {self.settings.qdrant_url} is not answering: {exc}") from exc
        log.info("qdrant.create collection=%s dim=%d", self.collection, dim)

    def _index_new_fields(self) -> None:
        """A collection made before a keyword field existed (`tags`) gets its index when it is opened."""
        present = set(self.client.get_collection(self.collection).payload_schema or {})
        for name in _KEYWORD_FIELDS:
            if name not in present:
                self.client.create_payload_index(self.collection, name, models.PayloadSchemaType.KEYWORD)

    def upsert(self, points: list[IndexedChunk]) -> None:
        if not points:
            return
        structs = [
            models.PointStruct(
                id=p.id,
                vector={self.settings.dense_vector: p.vector},
                payload={**p.chunk.payload(), self.settings.text_field: p.bm25_text},
            )
            for p in points
        ]
        self.client.upsert(self.collection, structs, wait=True)

    def delete_doc(self, doc_id: str, keep_hash: str | None = None) -> None:
        must_not: list[models.Condition] | None = (
            [models.FieldCondition(key="content_hash", match=models.MatchValue(value=keep_hash))] if keep_hash else None
        )
        flt = models.Filter(
            must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))], must_not=must_not
        )
        self.client.delete(self.collection, models.FilterSelector(filter=flt), wait=True)

    def set_acl(self, doc_id: str, acl: list[str]) -> None:
        flt = models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))])
        self.client.set_payload(self.collection, {"acl": acl}, points=flt, wait=True)

    def set_tags(self, doc_id: str, tags: list[str]) -> None:
        flt = models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))])
        self.client.set_payload(self.collection, {"tags": list(tags)}, points=flt, wait=True)

    def query(self, request: StoreQuery) -> list[StoredPoint]:
        # The ACL condition is always there; a tag filter is one more `must`, so it can only narrow.
        must: list[models.Condition] = [
            models.FieldCondition(key="acl", match=models.MatchAny(any=list(request.acl_groups)))
        ]
        if request.tags:
            must.append(models.FieldCondition(key="tags", match=models.MatchAny(any=list(request.tags))))
        where = models.Filter(must=must)
        bm25 = models.TextQuery(
            text=models.TextQueryInput(
                query=request.text,
                scoring=models.Bm25Scoring(bm25=models.Bm25Params(k=self.settings.bm25_k1, b=self.settings.bm25_b)),
            )
        )
        try:
            if request.mode == SearchMode.DENSE:
                resp = self.client.query_points(
                    self.collection,
                    query=request.dense,
                    using=self.settings.dense_vector,
                    query_filter=where,
                    limit=request.limit,
                    with_payload=True,
                )
            elif request.mode == SearchMode.BM25:
                resp = self.client.query_points(
                    self.collection,
                    query=bm25,
                    using=self.settings.text_field,
                    query_filter=where,
                    limit=request.limit,
                    with_payload=True,
                )
            else:
                resp = self.client.query_points(
                    self.collection,
                    prefetch=[
                        models.Prefetch(
                            query=request.dense,
                            using=self.settings.dense_vector,
                            filter=where,
                            limit=request.dense_prefetch,
                        ),
                        models.Prefetch(
                            query=bm25, using=self.settings.text_field, filter=where, limit=request.bm25_prefetch
                        ),
                    ],
                    query=models.RrfQuery(rrf=models.Rrf(k=request.rrf_k, weights=list(request.weights))),
                    query_filter=where,
                    limit=request.limit,
                    with_payload=True,
                )
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Qdrant server query failed: {exc}") from exc
        return [StoredPoint(str(p.id), float(p.score), dict(p.payload or {})) for p in resp.points]

    def retrieve(self, ids: list[str]) -> list[StoredPoint]:
        if not ids:
            return []
        try:
            records = self.client.retrieve(self.collection, ids=list(ids), with_payload=True, with_vectors=False)
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Qdrant server retrieve failed: {exc}") from exc
        return [StoredPoint(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    def _filter(self, doc_id: str | None) -> models.Filter | None:
        if doc_id is None:
            return None
        return models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))])

    def count(self, doc_id: str | None = None) -> int:
        return int(self.client.count(self.collection, count_filter=self._filter(doc_id), exact=True).count)

    def _scroll(self, doc_id: str | None, with_payload: bool) -> Iterator[Any]:
        offset = None
        while True:
            records, offset = self.client.scroll(
                self.collection,
                scroll_filter=self._filter(doc_id),
                limit=1000,
                offset=offset,
                with_payload=with_payload,
            )
            yield from records
            if offset is None:
                return

    def optimize(self) -> None:
        """The server optimises segments itself."""

    def ping(self) -> None:
        try:
            self.client.get_collections()
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Qdrant server at {self.settings.qdrant_url} is not answering: {exc}") from exc

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
