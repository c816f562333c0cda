"""Where semantic-cache entries live: a small Qdrant collection beside the index, in either backend."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from retrieval.store import StoredPoint, StoreUnavailable
from retrieval.store_edge import ShardOwner

log = logging.getLogger(__name__)
_KEYWORDS = ("mode", "kind", "tag_filter")
_FLOATS = ("created_at", "expires_at")
VECTOR = "q"


class CacheTable(Protocol):
    """Vectors of earlier questions with their answers as payload."""

    def ensure(self, dim: int) -> None: ...

    def put(self, entry_id: str, vector: list[float], payload: dict[str, Any]) -> None: ...

    def nearest(
        self, vector: list[float], limit: int, min_score: float, match: dict[str, str | int], now: float
    ) -> list[StoredPoint]:
        """Unexpired entries matching `match` exactly, at least `min_score` cosine to `vector`, best first."""
        ...

    def delete(self, ids: list[str]) -> None: ...

    def delete_expired(self, now: float) -> None: ...

    def oldest(self, n: int) -> list[str]:
        """Ids of the `n` entries created first."""
        ...

    def count(self) -> int: ...

    def clear(self) -> None: ...

    def close(self) -> None: ...


class EdgeCacheTable(ShardOwner):
    """A Qdrant Edge shard of its own (the process that owns the index owns this one too)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def ensure(self, dim: int) -> None:
        import qdrant_edge as qe

        with self._lock:
            if self._shard is not None:
                return
            try:
                if self.path.is_dir() and any(self.path.iterdir()):
                    self._shard = qe.EdgeShard.load(str(self.path))
                    return
                self.path.mkdir(parents=True, exist_ok=True)
                shard = qe.EdgeShard.create(
                    str(self.path),
                    qe.EdgeConfig(vectors={VECTOR: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)}),
                )
            except Exception as exc:
                raise StoreUnavailable(f"cannot open the cache shard at {self.path}: {exc}") from exc
            for name in _KEYWORDS:
                shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
            for name in _FLOATS:
                shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Float))
            shard.update(qe.UpdateOperation.create_field_index("index_version", qe.PayloadSchemaType.Integer))
            self._shard = shard
            log.info("cache.create path=%s dim=%d", self.path, dim)

    @property
    def shard(self) -> Any:
        if self._shard is None:
            raise StoreUnavailable("the cache shard is not open: call ensure() first")
        return self._shard

    def put(self, entry_id: str, vector: list[float], payload: dict[str, Any]) -> None:
        import qdrant_edge as qe

        self.shard.update(qe.UpdateOperation.upsert_points([qe.Point(entry_id, {VECTOR: vector}, payload)]))

    def _filter(self, match: dict[str, str | int], now: float) -> Any:
        import qdrant_edge as qe

        must: list[Any] = [qe.FieldCondition(key=k, match=qe.MatchValue(v)) for k, v in match.items()]
        must.append(qe.FieldCondition(key="expires_at", range=qe.RangeFloat(gt=now)))
        return qe.Filter(must=must)

    def nearest(
        self, vector: list[float], limit: int, min_score: float, match: dict[str, str | int], now: float
    ) -> list[StoredPoint]:
        import qdrant_edge as qe

        req = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(vector, using=VECTOR),
            filter=self._filter(match, now),
            score_threshold=min_score,
            with_payload=True,
        )
        return [StoredPoint(str(p.id), float(p.score), dict(p.payload or {})) for p in self.shard.query(req)]

    def delete(self, ids: list[str]) -> None:
        import qdrant_edge as qe

        if ids:
            self.shard.update(qe.UpdateOperation.delete_points(list(ids)))

    def delete_expired(self, now: float) -> None:
        import qdrant_edge as qe

        flt = qe.Filter(must=[qe.FieldCondition(key="expires_at", range=qe.RangeFloat(lte=now))])
        self.shard.update(qe.UpdateOperation.delete_points_by_filter(flt))

    def oldest(self, n: int) -> list[str]:
        import qdrant_edge as qe

        records, _ = self.shard.scroll(qe.ScrollRequest(limit=n, order_by=qe.OrderBy("created_at"), with_payload=False))
        return [str(r.id) for r in records]

    def count(self) -> int:
        import qdrant_edge as qe

        return int(self.shard.count(qe.CountRequest(exact=True)))

    def clear(self) -> None:
        import qdrant_edge as qe

        self.shard.update(qe.UpdateOperation.delete_points_by_filter(qe.Filter(must=[])))


class ServerCacheTable:
    """A collection on the Qdrant server the index lives on, shared by every API process."""

    def __init__(self, client: Any, collection: str) -> None:
        self.client = client
        self.collection = collection

    def ensure(self, dim: int) -> None:
        from qdrant_client import models

        from retrieval.store_server import UNAVAILABLE

        try:
            if self.client.collection_exists(self.collection):
                return
            self.client.create_collection(
                self.collection,
                vectors_config={VECTOR: models.VectorParams(size=dim, distance=models.Distance.COSINE)},
            )
            for name in _KEYWORDS:
                self.client.create_payload_index(self.collection, name, models.PayloadSchemaType.KEYWORD)
            for name in _FLOATS:
                self.client.create_payload_index(self.collection, name, models.PayloadSchemaType.FLOAT)
            self.client.create_payload_index(self.collection, "index_version", models.PayloadSchemaType.INTEGER)
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot create the cache collection {self.collection}: {exc}") from exc

    def put(self, entry_id: str, vector: list[float], payload: dict[str, Any]) -> None:
        from qdrant_client import models

        point = models.PointStruct(id=entry_id, vector={VECTOR: vector}, payload=payload)
        self.client.upsert(self.collection, [point], wait=True)

    def _filter(self, match: dict[str, str | int], now: float) -> Any:
        from qdrant_client import models

        must: list[models.Condition] = [
            models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in match.items()
        ]
        must.append(models.FieldCondition(key="expires_at", range=models.Range(gt=now)))
        return models.Filter(must=must)

    def nearest(
        self, vector: list[float], limit: int, min_score: float, match: dict[str, str | int], now: float
    ) -> list[StoredPoint]:
        resp = self.client.query_points(
            self.collection,
            query=vector,
            using=VECTOR,
            query_filter=self._filter(match, now),
            score_threshold=min_score,
            limit=limit,
            with_payload=True,
        )
        return [StoredPoint(str(p.id), float(p.score), dict(p.payload or {})) for p in resp.points]

    def delete(self, ids: list[str]) -> None:
        from qdrant_client import models

        if ids:
            self.client.delete(self.collection, models.PointIdsList(points=list(ids)), wait=True)

    def delete_expired(self, now: float) -> None:
        from qdrant_client import models

        flt = models.Filter(must=[models.FieldCondition(key="expires_at", range=models.Range(lte=now))])
        self.client.delete(self.collection, models.FilterSelector(filter=flt), wait=True)

    def oldest(self, n: int) -> list[str]:
        from qdrant_client import models

        records, _ = self.client.scroll(
            self.collection, limit=n, order_by=models.OrderBy(key="created_at"), with_payload=False
        )
        return [str(r.id) for r in records]

    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def clear(self) -> None:
        from qdrant_client import models

        self.client.delete(self.collection, models.FilterSelector(filter=models.Filter(must=[])), wait=True)

    def close(self) -> None:
        """The client belongs to the index versions, which close it."""
