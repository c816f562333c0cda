"""The one `Store` interface both Qdrant backends implement, and the request it answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from retrieval.types import Chunk, SearchMode

_POINT_NAMESPACE = uuid.UUID("6f1c2a52-9a55-4d0e-9a51-2f1ad0b8f0c1")


class StoreUnavailable(Exception):
    """The Qdrant engine cannot be reached or opened; the API answers 503 with this message."""


def point_id(doc_id: str, ordinal: int, content_hash: str) -> str:
    """Deterministic id: a retried task writes the same points, never duplicates."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{doc_id}\x1f{ordinal}\x1f{content_hash}"))


@dataclass(frozen=True)
class IndexedChunk:
    """A chunk with its dense vector, ready to upsert."""

    chunk: Chunk
    vector: list[float]
    bm25_text: str

    @property
    def id(self) -> str:
        return point_id(self.chunk.doc_id, self.chunk.ordinal, self.chunk.content_hash)


@dataclass(frozen=True)
class StoreQuery:
    """One engine query: a mode, its inputs, the caller's ACL groups (always applied), an optional tag filter
    (a hit has at least one of `tags`; it narrows the ACL filter, never replaces it) and fusion knobs."""

    mode: SearchMode
    acl_groups: list[str]
    limit: int
    tags: list[str] | None = None
    dense: list[float] | None = None
    text: str = ""
    rrf_k: int = 2
    dense_prefetch: int = 100
    bm25_prefetch: int = 100
    weights: tuple[float, float] = (1.0, 1.0)  # (dense, bm25)


@dataclass(frozen=True)
class StoredPoint:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


class ScrollingStore:
    """`point_ids` and `chunks` for a backend that implements `_scroll` over its records."""

    def _scroll(self, doc_id: str | None, with_payload: bool) -> Iterator[Any]:
        raise NotImplementedError

    def point_ids(self, doc_id: str | None = None) -> list[str]:
        return [str(r.id) for r in self._scroll(doc_id, with_payload=False)]

    def chunks(self) -> Iterator[Chunk]:
        for record in self._scroll(None, with_payload=True):
            yield Chunk.from_payload(dict(record.payload or {}))


class Store(Protocol):
    """What ingestion writes through and search reads through, whichever engine runs underneath."""

    def ensure_collection(self, dim: int) -> None: ...

    def upsert(self, points: list[IndexedChunk]) -> None: ...

    def delete_doc(self, doc_id: str, keep_hash: str | None = None) -> None:
        """Delete a document's chunks; with `keep_hash`, only those of other versions."""
        ...

    def set_acl(self, doc_id: str, acl: list[str]) -> None: ...

    def set_tags(self, doc_id: str, tags: list[str]) -> None:
        """Replace the `tags` of every chunk of a document (no re-embedding)."""
        ...

    def query(self, request: StoreQuery) -> list[StoredPoint]: ...

    def retrieve(self, ids: list[str]) -> list[StoredPoint]:
        """The points with these ids that exist, with their current payload (score 0)."""
        ...

    def count(self, doc_id: str | None = None) -> int: ...

    def point_ids(self, doc_id: str | None = None) -> list[str]: ...

    def chunks(self) -> Iterator[Chunk]:
        """Every stored chunk with its payload, in the engine's order (for mining training pairs)."""
        ...

    def optimize(self) -> None: ...

    def ping(self) -> None:
        """Raise StoreUnavailable when the engine cannot answer."""
        ...

    def close(self) -> None: ...
