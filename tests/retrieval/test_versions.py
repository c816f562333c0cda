"""Index versions on the server backend: a new collection beside the live one, switched by one alias update."""

from __future__ import annotations

from pathlib import Path

from retrieval.bm25 import bm25_field_text
from retrieval.settings import IndexSettings
from retrieval.store import IndexedChunk
from retrieval.types import Chunk
from retrieval.versions import LiveStore, ServerVersions


def point(doc: str, text: str) -> IndexedChunk:
    chunk = Chunk(doc_id=doc, source="s", ordinal=0, text=text, content_hash="h", acl=("public",))
    return IndexedChunk(chunk, [1.0, 0.0, 0.0, 0.0], bm25_field_text(text))


def test_rebuild_on_the_server_backend_switches_the_alias(tmp_path: Path) -> None:
    settings = IndexSettings(data_dir=tmp_path, qdrant_path=str(tmp_path / "qdrant"), collection="kb")
    versions = ServerVersions(settings)
    live = LiveStore(versions, grace_seconds=60.0)  # close() drops the old version
    live.ensure_collection(4)
    live.upsert([point("a", "old text")])
    assert live.version == 1 and live.count() == 1
    version, target = live.begin_rebuild()
    target.ensure_collection(4)
    target.upsert([point("a", "new text"), point("b", "more text")])
    assert live.count() == 1  # the half-built version is invisible until the switch
    live.promote(version, target)
    assert live.version == 2 and live.count() == 2
    aliases = {a.alias_name: a.collection_name for a in versions._admin.client.get_aliases().aliases}
    assert aliases == {"kb": "kb_v2"}
    live.close()
