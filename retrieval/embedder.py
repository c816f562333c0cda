"""Sentence-transformers embedder: loads once, embeds in batches, counts what it computed."""

from __future__ import annotations

import copy
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from retrieval.settings import EmbedderSettings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


class TextEmbedder(Protocol):
    """What the pipeline, retriever and services need from an embedder (torch or ONNX Runtime backend)."""

    settings: EmbedderSettings
    texts_embedded: int

    def warm_up(self) -> None: ...

    @property
    def dim(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def embed_documents(self, texts: list[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> list[float]: ...


class TokenCounter:
    """Counts word pieces with a private copy of a tokenizer.

    Hugging Face fast tokenizers keep padding/truncation state and are not safe to share between threads:
    the chunker counts tokens in the prefetch thread while the embedder encodes batches in another.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = copy.deepcopy(tokenizer)
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        with self._lock:
            return len(self._tokenizer.encode(text, add_special_tokens=False))


class Embedder:
    """Dense vectors for chunks and queries from any sentence-transformers model (name or local path)."""

    def __init__(self, settings: EmbedderSettings) -> None:
        self.settings = settings
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        self.texts_embedded = 0  # chunks embedded since start; tests use it to prove skips
        self._counter: TokenCounter | None = None

    def warm_up(self) -> None:
        """Load the model (offline: weights come from a local folder or the local cache)."""
        with self._lock:
            if self._model is not None:
                return
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()

            name = self.settings.resolved_model()
            log.info("embedder.load model=%s device=%s", name, self.settings.device)
            try:
                self._model = SentenceTransformer(str(name), device=self.settings.device)
            except OSError as exc:
                raise RuntimeError(
                    f"cannot load embedding model {name!r}: {exc}. Set KB_EMBEDDING_MODEL to a local "
                    "sentence-transformers folder or a model present in the Hugging Face cache."
                ) from exc

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            self.warm_up()
        assert self._model is not None
        return self._model

    @property
    def dim(self) -> int:
        dim = self.model.get_embedding_dimension()
        assert dim is not None
        return int(dim)

    @property
    def max_tokens(self) -> int:
        """Word pieces the model reads before truncating (chunks must fit)."""
        return int(self.model.max_seq_length or 512)

    def count_tokens(self, text: str) -> int:
        """Word pieces of `text` in the model's own tokenizer (no special tokens)."""
        if self._counter is None:
            self._counter = TokenCounter(self.model.tokenizer)
        return self._counter.count(text)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Normalised vectors for chunks, batched by the configured batch size."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.settings.batch_size,
            normalize_embeddings=self.settings.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        self.texts_embedded += len(texts)
        return np.asarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> list[float]:
        vector = self.model.encode(
            [text], normalize_embeddings=self.settings.normalize, convert_to_numpy=True, show_progress_bar=False
        )
        return [float(x) for x in vector[0]]


if TYPE_CHECKING:
    pass


def make_embedder(settings: EmbedderSettings) -> TextEmbedder:
    """The embedder `settings.backend` names: "torch" (sentence-transformers) or "onnx" (ONNX Runtime)."""
    if settings.backend == "torch":
        return Embedder(settings)
    if settings.backend == "onnx":
        from retrieval.embedder_onnx import OnnxEmbedder

        return OnnxEmbedder(settings)
    raise ValueError(f"unknown embedder backend {settings.backend!r}: use 'torch' or 'onnx'")
