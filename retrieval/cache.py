"""Semantic cache: a question close enough to an earlier one gets the earlier answer, with no retrieval or
generation, but only when the caller may read every passage that answer was built from, as they are now.

An entry keeps the ids of the passages its answer used. A hit reads those points from the live index and
checks that (1) every one still exists, so a re-index that changed a document (new content, new point ids) or
a full re-index that changed the chunks invalidates the entry, and (2) the caller's groups can read each one
under its current ACL (the sorted groups the sources required, which `required_groups` records). Entries also
carry the index version, the search mode and the tag filter the answer was made under (an answer made under
one filter is never served under another, nor without one), and expire after a TTL; the table is bounded in
size, oldest out.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from retrieval.cache_tables import CacheTable
from retrieval.store import StoredPoint
from retrieval.types import Chunk, Hit, Principal

log = logging.getLogger(__name__)
_PURGE_EVERY_S = 60.0


@dataclass(frozen=True)
class CacheSettings:
    enabled: bool = True
    # Cosine between two questions' embeddings at or above which the earlier answer is reused. 0.98 is the
    # lowest value on a 0.01 grid at which at most 1% of dev-set questions would hit a different question with
    # other relevant documents (`python -m evals cache`; BENCHMARKS.md, "Semantic cache"). FAQs hold near-twins
    # ("What Python version can I use" / "should I use", cosine 0.976) whose answers differ.
    threshold: float = 0.98
    ttl_seconds: float = 24 * 3600.0
    max_entries: int = 10_000
    candidates: int = 4  # nearest entries examined per lookup (the first one the caller may read wins)


def required_groups(acls: list[list[str]]) -> str:
    """The ACL fingerprint of an answer's sources: each passage's sorted groups, the passages sorted."""
    return "|".join(sorted({",".join(sorted(set(acl))) for acl in acls}))


def readable(acl: list[str], principal: Principal) -> bool:
    return bool(set(acl) & set(principal.readable_groups))


def tag_key(tags: list[str] | None) -> str:
    """The tag filter as an exact-match key: sorted, deduplicated; "" for no filter."""
    return ",".join(sorted(set(tags or [])))


@dataclass(frozen=True)
class CacheHit:
    """An earlier answer the caller may receive, with its passages as they are in the index now."""

    entry_id: str
    similarity: float
    question: str
    answer: dict[str, Any]
    hits: list[Hit]
    lookup_ms: float


class SemanticCache:
    """Lookups and writes go to `table`; `points` reads passages from the live index; `version` names it."""

    def __init__(
        self,
        table: CacheTable,
        points: Callable[[list[str]], list[StoredPoint]],
        version: Callable[[], int],
        settings: CacheSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.points = points
        self.version = version
        self.settings = settings or CacheSettings()
        self.clock = clock
        self._ready = False
        self._lock = threading.Lock()
        self._purged_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def ensure(self, dim: int) -> None:
        if self.enabled and not self._ready:
            self.table.ensure(dim)
            self._ready = True

    def lookup(
        self, vector: list[float], principal: Principal, mode: str, tags: list[str] | None = None
    ) -> CacheHit | None:
        """The closest earlier answer above the threshold that is still valid for this caller and made under the
        same tag filter (`tags`), else None."""
        if not self.enabled or not self._ready:
            return None
        t0 = time.perf_counter()
        s = self.settings
        match: dict[str, str | int] = {"mode": mode, "index_version": self.version(), "tag_filter": tag_key(tags)}
        for entry in self.table.nearest(vector, s.candidates, s.threshold, match, self.clock()):
            ids = [str(i) for i in entry.payload.get("points", [])]
            current = {p.id: p for p in self.points(ids)} if ids else {}
            if not ids or len(current) != len(ids):
                log.info("cache.stale entry=%s reason=passages_changed", entry.id)
                self.table.delete([entry.id])
                continue
            if not all(readable(list(p.payload.get("acl", [])), principal) for p in current.values()):
                continue  # another caller's answer from passages this one may not read
            if tags and not all(set(p.payload.get("tags") or []) & set(tags) for p in current.values()):
                log.info("cache.stale entry=%s reason=tags_changed", entry.id)
                self.table.delete([entry.id])  # a passage lost the filter's tags since: it would not be found now
                continue
            hits = [Hit(Chunk.from_payload(current[i].payload), 0.0, i) for i in ids]
            return CacheHit(
                entry.id,
                entry.score,
                str(entry.payload.get("question", "")),
                dict(entry.payload.get("answer", {})),
                hits,
                (time.perf_counter() - t0) * 1000,
            )
        return None

    def put(
        self,
        vector: list[float],
        question: str,
        mode: str,
        hits: list[Hit],
        answer: dict[str, Any],
        tags: list[str] | None = None,
    ) -> str:
        """Keep an answer built from `hits` (every passage its text may draw on) under the tag filter `tags`;
        returns the entry id."""
        if not self.enabled or not self._ready:
            return ""
        if not hits or any(not h.point_id for h in hits):
            raise ValueError("a cached answer needs the point ids of the passages it was built from")
        now = self.clock()
        entry_id = str(uuid.uuid4())
        payload = {
            "kind": "answer",
            "question": question,
            "question_sha": hashlib.sha256(question.encode()).hexdigest(),
            "mode": mode,
            "tag_filter": tag_key(tags),
            "index_version": self.version(),
            "points": [h.point_id for h in hits],
            "required_groups": required_groups([list(h.chunk.acl) for h in hits]),
            "answer": answer,
            "created_at": now,
            "expires_at": now + self.settings.ttl_seconds,
        }
        self.table.put(entry_id, vector, payload)
        self._bound(now)
        return entry_id

    def _bound(self, now: float) -> None:
        """Drop expired entries now and then, and the oldest ones whenever the table is over its size."""
        with self._lock:
            if now - self._purged_at >= _PURGE_EVERY_S:
                self.table.delete_expired(now)
                self._purged_at = now
            over = self.table.count() - self.settings.max_entries
            if over > 0:
                # a tenth of the bound at once, so a full table does not evict on every write
                n = over + max(1, self.settings.max_entries // 10)
                self.table.delete(self.table.oldest(min(n, self.settings.max_entries + over)))
                log.info("cache.evicted entries=%d max=%d", n, self.settings.max_entries)

    def count(self) -> int:
        return self.table.count() if self._ready else 0

    def clear(self) -> None:
        if self._ready:
            self.table.clear()

    def close(self) -> None:
        self.table.close()


def safe_lookup(
    cache: SemanticCache, vector: list[float], principal: Principal, mode: str, tags: list[str] | None = None
) -> CacheHit | None:
    """A lookup that never fails an answer: an engine error is logged and counts as a miss."""
    try:
        return cache.lookup(vector, principal, mode, tags)
    except Exception as exc:  # the engines raise plain runtime errors; a cache must never fail an answer
        log.warning("cache.lookup_failed error=%s", exc)
        return None
