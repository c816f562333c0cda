"""Pick the Store backend the settings ask for."""

from __future__ import annotations

from retrieval.settings import IndexSettings
from retrieval.store import Store


def open_store(settings: IndexSettings) -> Store:
    """Embedded Qdrant Edge by default; qdrant-client when a server URL (or local-mode path) is set."""
    if settings.backend == "server":
        from retrieval.store_server import QdrantServerStore

        return QdrantServerStore(settings)
    from retrieval.store_edge import EdgeStore

    return EdgeStore(settings)
