"""How much to trust each side of the hybrid query."""

from __future__ import annotations

from retrieval.settings import FusionSettings


def fusion_weights(settings: FusionSettings, terms: list[str]) -> tuple[float, float]:
    """(dense, bm25) RRF weights for a query."""
    return settings.dense_weight, settings.bm25_weight
