"""Search and answer services: what the routes and the CLI call."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from retrieval.embedder import TextEmbedder
from retrieval.search import Retriever
from retrieval.types import Citation, Hit, Principal, SearchMode, Usage

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])|\n{2,}")
NO_ANSWER = "I could not find this in the documents you can read."


@dataclass
class Answer:
    """An answer with the passages it cites; `extractive` says it is quoted, not generated."""

    text: str
    citations: list[Citation]
    hits: list[Hit]
    extractive: bool = True
    usage: Usage = field(default_factory=Usage)


def split_sentences(text: str) -> list[str]:
    """Sentences of a passage: paragraphs are re-joined across hard line wraps; headings are dropped."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in paragraph.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        sentences.extend(p.strip() for p in _SENTENCE_END.split(" ".join(lines)))
    return [s for s in sentences if len(s) >= 3]


class SearchService:
    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    def search(self, principal: Principal, query: str, top_k: int, mode: SearchMode) -> list[Hit]:
        return self.retriever.search(query, principal, mode, top_k)


class AnswerService:
    """Extractive answers: the sentences of the top hits closest to the question, each cited."""

    def __init__(self, retriever: Retriever, embedder: TextEmbedder, max_sentences: int = 4, passages: int = 5) -> None:
        self.retriever = retriever
        self.embedder = embedder
        self.max_sentences = max_sentences
        self.passages = passages

    def answer(self, principal: Principal, question: str, mode: SearchMode = SearchMode.HYBRID) -> Answer:
        usage = Usage()
        t0 = time.perf_counter()
        hits = self.retriever.search(question, principal, mode, self.passages)
        usage.stages_ms["retrieve"] = (time.perf_counter() - t0) * 1000
        if not hits:
            return Answer(NO_ANSWER, [], [], usage=usage)
        t1 = time.perf_counter()
        candidates = [(rank, s) for rank, hit in enumerate(hits) for s in split_sentences(hit.chunk.text)]
        if not candidates:
            return Answer(NO_ANSWER, [], hits, usage=usage)
        qvec = np.asarray(self.embedder.embed_query(question), dtype=np.float32)
        svecs = self.embedder.embed_documents([s for _, s in candidates])
        # Similarity to the question, with a small prior for passages the retriever ranked higher.
        scores = svecs @ qvec - 0.02 * np.array([rank for rank, _ in candidates], dtype=np.float32)
        chosen = sorted(np.argsort(-scores)[: self.max_sentences].tolist(), key=lambda i: (candidates[i][0], i))
        numbers: dict[int, int] = {}
        parts = []
        for i in chosen:
            rank, sentence = candidates[i]
            numbers.setdefault(rank, len(numbers) + 1)
            parts.append(f"{sentence} [{numbers[rank]}]")
        citations = [hits[rank].citation for rank in sorted(numbers, key=numbers.__getitem__)]
        usage.stages_ms["extract"] = (time.perf_counter() - t1) * 1000
        return Answer(" ".join(parts), citations, hits, usage=usage)
