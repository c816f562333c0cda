"""The BM25 reference: rank-bm25's BM25Okapi over exactly the chunks and tokens the index holds."""

from __future__ import annotations

import math

import numpy as np
from rank_bm25 import BM25Okapi

from evals.index import StoredChunk
from retrieval.bm25 import query_terms


class LuceneIdfBM25(BM25Okapi):
    """rank-bm25's BM25Okapi with Lucene's IDF, ln(1 + (N - n + .5) / (n + .5)), the one Qdrant uses.

    BM25Okapi's own IDF is ln((N - n + .5) / (n + .5)), floored at 0.25 x the mean IDF for terms in more than
    half the documents; that makes common words ("the", "how") count for less than in Qdrant. Everything else
    (tf saturation, length normalisation, average length) is rank-bm25's own code.
    """

    def _calc_idf(self, nd: dict[str, int]) -> None:
        for word, freq in nd.items():
            self.idf[word] = math.log(1.0 + (self.corpus_size - freq + 0.5) / (freq + 0.5))


class ReferenceBm25:
    """rank-bm25 over stored chunks; the tokens are the index's pre-tokenised BM25 field, split on spaces.

    Query terms are deduplicated the way the Retriever sends them to Qdrant, so both score the same bag of terms.
    `lucene_idf` swaps in Qdrant's IDF (see LuceneIdfBM25).
    """

    def __init__(self, chunks: list[StoredChunk], k1: float = 1.2, b: float = 0.75, lucene_idf: bool = False) -> None:
        self.chunks = chunks
        model = LuceneIdfBM25 if lucene_idf else BM25Okapi
        self._bm25 = model([c.bm25_text.split() for c in chunks], k1=k1, b=b)

    def top(self, query: str, limit: int) -> list[tuple[StoredChunk, float]]:
        """The `limit` best chunks with a positive score, best first (ties broken by point id)."""
        terms = query_terms(query)
        if not terms:
            return []
        scores = self._bm25.get_scores(terms)
        # Stable sort on -score: equal scores keep the chunks' point-id order, like the engine's tie order.
        order = np.argsort(-scores, kind="stable")[:limit]
        return [(self.chunks[i], float(scores[i])) for i in order if scores[i] > 0]


def overlap_at(a: list[str], b: list[str], k: int = 10) -> float:
    """|A ∩ B| / k for the top-k ids of two rankings (1.0 when both are empty)."""
    top_a, top_b = set(a[:k]), set(b[:k])
    size = max(len(top_a), len(top_b))
    return 1.0 if size == 0 else len(top_a & top_b) / min(k, size)
