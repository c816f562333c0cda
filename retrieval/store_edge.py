"""Embedded backend: Qdrant's engine in-process (qdrant-edge-py), one persistent shard per collection."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from retrieval.settings import IndexSettings
from retrieval.store import IndexedChunk, ScrollingStore, StoredPoint, StoreQuery, StoreUnavailable
from retrieval.types import SearchMode

log = logging.getLogger(__name__)
_KEYWORD_FIELDS = ("acl", "doc_id", "source", "content_hash", "tags")


class ShardOwner:
    """Holds one open EdgeShard behind a lock; closing flushes it first."""

    def __init__(self) -> None:
        self._shard: qe.EdgeShard | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._shard is not None:
                self._shard.flush()
                self._shard.close()
                self._shard = None


class EdgeStore(ScrollingStore, ShardOwner):
    """Owns one EdgeShard directory; only one process may open it (the shard holds a WAL lock)."""

    def __init__(self, settings: IndexSettings, path: Path | None = None) -> None:
        ShardOwner.__init__(self)
        self.settings = settings
        self.path = path or settings.shard_dir

    def _exists(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def _config(self, dim: int) -> qe.EdgeConfig:
        # Exact dense search (m=0): at <=100k chunks it is fast enough and optimize() stays cheap
        # (notes/qdrant-edge.md: 9.5 s instead of 539 s at 100k).
        return qe.EdgeConfig(
            vectors={self.settings.dense_vector: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)},
            hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10000),
        )

    def ensure_collection(self, dim: int) -> None:
        with self._lock:
            if self._shard is not None:
                return
            try:
                if self._exists():
                    self._shard = qe.EdgeShard.load(str(self.path))
                    self._index_new_fields(self._shard)
                    return
                self.path.mkdir(parents=True, exist_ok=True)
                shard = qe.EdgeShard.create(str(self.path), self._config(dim))
            except Exception as exc:  # the engine raises plain runtime errors
                raise StoreUnavailable(f"cannot open the Qdrant Edge shard at {self.path}: {exc}") from exc
            for name in _KEYWORD_FIELDS:
                shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
            # Default word tokenizer: the stored field is pre-tokenised by retrieval.bm25.tokenize.
            shard.update(
                qe.UpdateOperation.create_field_index(self.settings.text_field, qe.TextIndexParams(scoring=True))
            )
            self._shard = shard
            log.info("edge.create path=%s dim=%d", self.path, dim)

    @staticmethod
    def _index_new_fields(shard: qe.EdgeShard) -> None:
        """A shard made before a keyword field existed (`tags`) gets its index when it is opened."""
        present = set(shard.info().payload_schema)
        for name in _KEYWORD_FIELDS:
            if name not in present:
                shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
                log.info("edge.index_field field=%s", name)

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            if self._exists():
                self.ensure_collection(0)
            else:
                raise StoreUnavailable(f"the index at {self.path} does not exist yet: ingest documents first")
        assert self._shard is not None
        return self._shard

    def upsert(self, points: list[IndexedChunk]) -> None:
        if not points:
            return
        ops = [
            qe.Point(
                p.id,
                {self.settings.dense_vector: p.vector},
                {**p.chunk.payload(), self.settings.text_field: p.bm25_text},
            )
            for p in points
        ]
        self.shard.update(qe.UpdateOperation.upsert_points(ops))

    def delete_doc(self, doc_id: str, keep_hash: str | None = None) -> None:
        must_not: list[qe.ConditionType] | None = (
            [qe.FieldCondition(key="content_hash", match=qe.MatchValue(keep_hash))] if keep_hash else None
        )
        flt = qe.Filter(must=[qe.FieldCondition(key="doc_id", match=qe.MatchValue(doc_id))], must_not=must_not)
        self.shard.update(qe.UpdateOperation.delete_points_by_filter(flt))

    def set_acl(self, doc_id: str, acl: list[str]) -> None:
        flt = qe.Filter(must=[qe.FieldCondition(key="doc_id", match=qe.MatchValue(doc_id))])
        self.shard.update(qe.UpdateOperation.set_payload_by_filter(flt, {"acl": acl}))

    def set_tags(self, doc_id: str, tags: list[str]) -> None:
        flt = qe.Filter(must=[qe.FieldCondition(key="doc_id", match=qe.MatchValue(doc_id))])
        self.shard.update(qe.UpdateOperation.set_payload_by_filter(flt, {"tags": list(tags)}))

    def query(self, request: StoreQuery) -> list[StoredPoint]:
        # The ACL condition is always there; a tag filter is one more `must`, so it can only narrow.
        must: list[qe.ConditionType] = [qe.FieldCondition(key="acl", match=qe.MatchAny(list(request.acl_groups)))]
        if request.tags:
            must.append(qe.FieldCondition(key="tags", match=qe.MatchAny(list(request.tags))))
        where = qe.Filter(must=must)
        dense = qe.Query.Nearest(request.dense, using=self.settings.dense_vector) if request.dense else None
        bm25 = qe.TextQuery(
            self.settings.text_field, request.text, qe.Bm25Params(k=self.settings.bm25_k1, b=self.settings.bm25_b)
        )
        if request.mode == SearchMode.DENSE:
            req = qe.QueryRequest(limit=request.limit, query=dense, filter=where, with_payload=True)
        elif request.mode == SearchMode.BM25:
            req = qe.QueryRequest(limit=request.limit, query=bm25, filter=where, with_payload=True)
        else:
            req = qe.QueryRequest(
                limit=request.limit,
                with_payload=True,
                filter=where,
                query=qe.Fusion.Rrf(k=request.rrf_k, weights=list(request.weights)),  # type: ignore[arg-type]
                prefetches=[
                    qe.Prefetch(limit=request.dense_prefetch, query=dense, filter=where),
                    qe.Prefetch(limit=request.bm25_prefetch, query=bm25, filter=where),
                ],
            )
        try:
            points = self.shard.query(req)
        except Exception as exc:
            raise StoreUnavailable(f"Qdrant Edge query failed: {exc}") from exc
        return [StoredPoint(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def retrieve(self, ids: list[str]) -> list[StoredPoint]:
        if not ids:
            return []
        try:
            records = self.shard.retrieve(list(ids), with_payload=True, with_vector=False)
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"Qdrant Edge retrieve failed: {exc}") from exc
        return [StoredPoint(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    def _filter(self, doc_id: str | None) -> qe.Filter | None:
        if doc_id is None:
            return None
        return qe.Filter(must=[qe.FieldCondition(key="doc_id", match=qe.MatchValue(doc_id))])

    def count(self, doc_id: str | None = None) -> int:
        if self._shard is None and not self._exists():
            return 0  # nothing was ever written to this version
        return int(self.shard.count(qe.CountRequest(filter=self._filter(doc_id), exact=True)))

    def _scroll(self, doc_id: str | None, with_payload: bool) -> Iterator[Any]:
        if self._shard is None and not self._exists():
            return  # nothing was ever written to this version
        offset = None
        while True:
            records, offset = self.shard.scroll(
                qe.ScrollRequest(offset=offset, limit=1000, filter=self._filter(doc_id), with_payload=with_payload)
            )
            yield from records
            if offset is None:
                return

    def optimize(self) -> None:
        # Optimised segments reopen in <1 s; an appendable segment with a text index takes seconds.
        self.shard.optimize()

    def ping(self) -> None:
        try:
            self.shard.info()
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"Qdrant Edge shard is not answering: {exc}") from exc
