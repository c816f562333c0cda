"""How much to trust each side of the hybrid query, decided per query from its terms at no extra cost."""

from __future__ import annotations

from retrieval.settings import FusionSettings

# The length scale stays within these bounds: a one-word query gets at most 2x the reference BM25 weight,
# a 40-word paste at least half of it, so neither side is ever switched off.
MIN_SCALE = 0.5
MAX_SCALE = 2.0


def fusion_weights(settings: FusionSettings, terms: list[str]) -> tuple[float, float]:
    """(dense, bm25) RRF weights for a query whose distinct BM25 terms are `terms`.

    Qdrant's weighted RRF scores a hit 1 / (k - 1 + rank / weight) per list, so a weight stretches ranks:
    with BM25 at 0.2, its first hit counts like the dense list's fifth. BM25 adds one contribution per query
    term, so a long natural-language question piles up matches on common words and its ranking is noisy,
    while a short keyword query's is sharp: the BM25 weight scales with reference_terms / len(terms).
    With the defaults a 4-term query puts BM25's top hit level with dense rank 2.5, a 16-term one with 10.
    """
    if not settings.adaptive or not terms:
        return settings.dense_weight, settings.bm25_weight
    scale = min(MAX_SCALE, max(MIN_SCALE, settings.reference_terms / len(terms)))
    return settings.dense_weight, settings.bm25_weight * scale


def fused_agreement(score: float, rrf_k: int, weights: tuple[float, float]) -> float:
    """How far both lists agree on the top hit: its fused score over the best possible one (first in both
    lists), in [0, 1]. Near 1 when BM25 and dense both rank it first; at most about a half when only one does."""
    best = sum(1.0 / (rrf_k - 1 + 1.0 / w) for w in weights if w > 0)
    return min(1.0, score / best) if best > 0 else 0.0
