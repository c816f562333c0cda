"""Search and answer services: what the routes and the CLI call."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from retrieval.compress import QUOTE_RANK_PRIOR, compress
from retrieval.embedder import TextEmbedder
from retrieval.rerank import Reranker
from retrieval.search import Retriever
from retrieval.types import Citation, Hit, Principal, SearchMode, Usage

NO_ANSWER = "I could not find this in the documents you can read."


@dataclass
class Answer:
    """An answer with the passages it cites; `extractive` says it is quoted, not generated."""

    text: str
    citations: list[Citation]
    hits: list[Hit]
    extractive: bool = True
    confidence: float | None = None  # the reranker's calibrated confidence in the top passage, when it ran
    usage: Usage = field(default_factory=Usage)


class SearchService:
    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    def search(self, principal: Principal, query: str, top_k: int, mode: SearchMode) -> list[Hit]:
        return self.retriever.search(query, principal, mode, top_k)


class AnswerService:
    """Extractive answers: retrieve, rerank (when a cross-encoder is configured), then keep the sentences
    closest to the question within a token budget, each cited with its document offsets."""

    def __init__(
        self,
        retriever: Retriever,
        embedder: TextEmbedder,
        reranker: Reranker,
        budget_tokens: int = 120,
        passages: int = 5,
        max_sentences: int = 4,
        relative_floor: float = 0.6,
    ) -> None:
        self.max_sentences = max_sentences
        self.relative_floor = relative_floor
        self.retriever = retriever
        self.embedder = embedder
        self.reranker = reranker
        self.budget_tokens = budget_tokens
        self.passages = passages

    def answer(self, principal: Principal, question: str, mode: SearchMode = SearchMode.HYBRID) -> Answer:
        usage = Usage()
        t0 = time.perf_counter()
        depth = max(self.passages, self.reranker.settings.max_depth) if self.reranker.enabled else self.passages
        hits = self.retriever.search(question, principal, mode, depth)
        usage.stages_ms["retrieve"] = (time.perf_counter() - t0) * 1000
        if not hits:
            return Answer(NO_ANSWER, [], [], usage=usage)
        t1 = time.perf_counter()
        ranked = self.reranker.rerank(question, hits)
        hits = [r.hit for r in ranked][: self.passages]
        confidence = ranked[0].confidence
        usage.stages_ms["rerank"] = (time.perf_counter() - t1) * 1000
        t2 = time.perf_counter()
        context = compress(
            question,
            hits,
            embed=self.embedder.embed_documents,
            query_vec=self.embedder.embed_query(question),
            count_tokens=self.embedder.count_tokens,
            budget_tokens=self.budget_tokens,
            rank_prior=QUOTE_RANK_PRIOR,
        )
        usage.stages_ms["compress"] = (time.perf_counter() - t2) * 1000
        # An answer quotes only the few sentences that are close to the best one, not the whole budget.
        scores = sorted((s.score for _, kept in context.passages for s in kept), reverse=True)
        floor = max(scores[0] * self.relative_floor, scores[min(len(scores), self.max_sentences) - 1]) if scores else 0
        parts: list[str] = []
        citations: list[Citation] = []
        for hit, kept in context.passages:
            sentences = [s for s in kept if s.score >= floor]
            if not sentences:
                continue
            citations.append(hit.citation)
            parts.extend(f"{' '.join(s.text.split())} [{len(citations)}]" for s in sentences)
        if not parts:
            return Answer(NO_ANSWER, [], hits, confidence=confidence, usage=usage)
        return Answer(" ".join(parts), citations, hits, confidence=confidence, usage=usage)
