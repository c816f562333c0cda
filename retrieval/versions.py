"""Index versions: the live store, a new one built beside it, and an atomic switch between them.

Embedded: one Edge shard directory per version (`<collection>_vN`) and a pointer file naming the live one.
Server: one collection per version behind an alias (`<collection>` → `<collection>_vN`).
Queries always go through `LiveStore`, so a full re-index never shows a half-built index.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from retrieval.cache_tables import CacheTable, EdgeCacheTable, ServerCacheTable
from retrieval.settings import IndexSettings
from retrieval.store import IndexedChunk, Store, StoredPoint, StoreQuery, StoreUnavailable
from retrieval.types import Chunk

log = logging.getLogger(__name__)


class IndexVersions(Protocol):
    """Where versions of the index live and how the live one is chosen."""

    def open_live(self) -> tuple[int, Store]: ...

    def create(self, version: int) -> Store: ...

    def next_version(self) -> int: ...

    def point_to(self, version: int) -> None:
        """Make `version` the one queries and restarts use; atomic."""
        ...

    def drop(self, version: int, store: Store) -> None: ...

    def cache_table(self) -> CacheTable:
        """Where the semantic cache lives, beside the index versions."""
        ...

    def close(self) -> None: ...


class EdgeVersions:
    def __init__(self, settings: IndexSettings) -> None:
        self.settings = settings
        self.root = settings.data_dir / "qdrant"
        self.pointer = self.root / f"{settings.collection}.live.json"

    def _path(self, version: int) -> Path:
        return self.root / f"{self.settings.collection}_v{version}"

    def _store(self, version: int) -> Store:
        from retrieval.store_edge import EdgeStore

        return EdgeStore(self.settings, path=self._path(version))

    def open_live(self) -> tuple[int, Store]:
        version = json.loads(self.pointer.read_text())["version"] if self.pointer.exists() else 1
        return version, self._store(version)

    def next_version(self) -> int:
        pattern = re.compile(rf"^{re.escape(self.settings.collection)}_v(\d+)$")
        names = [p.name for p in self.root.iterdir()] if self.root.exists() else []
        found = [int(m.group(1)) for name in names if (m := pattern.match(name))]
        return max([*found, self.open_live()[0]]) + 1

    def create(self, version: int) -> Store:
        shutil.rmtree(self._path(version), ignore_errors=True)  # leftovers of an abandoned build
        return self._store(version)

    def point_to(self, version: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.pointer.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": version}))
        os.replace(tmp, self.pointer)  # atomic on POSIX: a restart sees the old or the new version, never none

    def drop(self, version: int, store: Store) -> None:
        store.close()
        shutil.rmtree(self._path(version), ignore_errors=True)

    def cache_table(self) -> CacheTable:
        return EdgeCacheTable(self.root / f"{self.settings.collection}_cache")

    def close(self) -> None:
        """Each version's store closes itself."""


class ServerVersions:
    def __init__(self, settings: IndexSettings) -> None:
        from retrieval.store_server import QdrantServerStore

        self.settings = settings
        self.alias = settings.collection
        self._admin = QdrantServerStore(settings)

    def _name(self, version: int) -> str:
        return f"{self.alias}_v{version}"

    def _store(self, version: int) -> Store:
        from retrieval.store_server import QdrantServerStore

        return QdrantServerStore(self.settings, collection=self._name(version), client=self._admin.client)

    def _live_version(self) -> int | None:
        for alias in self._admin.client.get_aliases().aliases:
            if alias.alias_name == self.alias:
                return int(alias.collection_name.rsplit("_v", 1)[1])
        return None

    def open_live(self) -> tuple[int, Store]:
        from retrieval.store_server import UNAVAILABLE

        try:
            version = self._live_version() or 1
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Qdrant server at {self.settings.qdrant_url} is not answering: {exc}") from exc
        return version, self._store(version)

    def next_version(self) -> int:
        pattern = re.compile(rf"^{re.escape(self.alias)}_v(\d+)$")
        names = [c.name for c in self._admin.client.get_collections().collections]
        return max([int(m.group(1)) for n in names if (m := pattern.match(n))] + [0]) + 1

    def create(self, version: int) -> Store:
        if self._admin.client.collection_exists(self._name(version)):
            self._admin.client.delete_collection(self._name(version))
        return self._store(version)

    def point_to(self, version: int) -> None:
        from qdrant_client import models

        ops: list[models.AliasOperations] = []
        if self._live_version() is not None:
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.alias)))
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=self._name(version), alias_name=self.alias)
            )
        )
        self._admin.client.update_collection_aliases(change_aliases_operations=ops)  # one atomic switch

    def drop(self, version: int, store: Store) -> None:
        self._admin.client.delete_collection(self._name(version))

    def cache_table(self) -> CacheTable:
        return ServerCacheTable(self._admin.client, f"{self.alias}_cache")

    def close(self) -> None:
        self._admin.close()


def open_versions(settings: IndexSettings) -> IndexVersions:
    return ServerVersions(settings) if settings.backend == "server" else EdgeVersions(settings)


class LiveStore:
    """The Store everyone reads and writes through: it forwards to the live version, swapped atomically."""

    def __init__(self, versions: IndexVersions, grace_seconds: float = 30.0) -> None:
        self.versions = versions
        self.grace_seconds = grace_seconds
        self.version = 0
        self._live: Store | None = None
        try:
            self.version, self._live = versions.open_live()
        except StoreUnavailable as exc:  # start anyway; every call retries and says 503 until the engine answers
            log.error("index.unavailable at_start error=%s", exc)
        self._pointed = False
        self._lock = threading.RLock()
        self._timers: list[threading.Timer] = []

    @property
    def live(self) -> Store:
        if self._live is None:
            with self._lock:
                if self._live is None:
                    self.version, self._live = self.versions.open_live()
        return self._live

    def begin_rebuild(self) -> tuple[int, Store]:
        """A new, empty version beside the live one."""
        version = self.versions.next_version()
        return version, self.versions.create(version)

    def promote(self, version: int, store: Store) -> None:
        """Switch queries to `version`; the old version is dropped after the grace period (in-flight reads end)."""
        with self._lock:
            old_version, old_store = self.version, self.live
            self.versions.point_to(version)
            self.version, self._live, self._pointed = version, store, True
        log.info("index.promoted version=%d previous=%d grace_s=%.0f", version, old_version, self.grace_seconds)
        timer = threading.Timer(self.grace_seconds, self.versions.drop, args=(old_version, old_store))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def abandon(self, version: int, store: Store) -> None:
        self.versions.drop(version, store)

    # Store protocol: forward to the live version.
    def ensure_collection(self, dim: int) -> None:
        self.live.ensure_collection(dim)
        if not self._pointed:
            with self._lock:
                self.versions.point_to(self.version)  # first start: the pointer / alias names version 1
                self._pointed = True

    def upsert(self, points: list[IndexedChunk]) -> None:
        self.live.upsert(points)

    def delete_doc(self, doc_id: str, keep_hash: str | None = None) -> None:
        self.live.delete_doc(doc_id, keep_hash)

    def set_acl(self, doc_id: str, acl: list[str]) -> None:
        self.live.set_acl(doc_id, acl)

    def set_tags(self, doc_id: str, tags: list[str]) -> None:
        self.live.set_tags(doc_id, tags)

    def query(self, request: StoreQuery) -> list[StoredPoint]:
        return self.live.query(request)

    def retrieve(self, ids: list[str]) -> list[StoredPoint]:
        return self.live.retrieve(ids)

    def count(self, doc_id: str | None = None) -> int:
        return self.live.count(doc_id)

    def point_ids(self, doc_id: str | None = None) -> list[str]:
        return self.live.point_ids(doc_id)

    def chunks(self) -> Iterator[Chunk]:
        return self.live.chunks()

    def optimize(self) -> None:
        self.live.optimize()

    def ping(self) -> None:
        self.live.ping()

    def close(self) -> None:
        for timer in self._timers:
            if timer.is_alive():
                timer.cancel()
                timer.function(*timer.args)  # drop now: nothing reads an old version after shutdown
        if self._live is not None:
            self._live.close()
        self.versions.close()
