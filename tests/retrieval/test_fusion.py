"""The per-query fusion rule: BM25's weight follows how keyword-like (short) the query is, within bounds."""

from __future__ import annotations

from retrieval.fusion import fusion_weights
from retrieval.settings import FusionSettings


def test_short_keyword_queries_lean_on_bm25_more_than_long_questions() -> None:
    settings = FusionSettings()
    short = fusion_weights(settings, ["select_related"])
    medium = fusion_weights(settings, [f"t{i}" for i in range(8)])
    long = fusion_weights(settings, [f"t{i}" for i in range(40)])
    assert short[0] == medium[0] == long[0] == settings.dense_weight
    assert short[1] > medium[1] > long[1] > 0
    assert medium[1] == settings.bm25_weight
    assert short[1] == 2 * settings.bm25_weight and long[1] == 0.5 * settings.bm25_weight  # bounded both ways


def test_fixed_weights_when_adaptive_is_off() -> None:
    settings = FusionSettings(adaptive=False, bm25_weight=0.7)
    assert fusion_weights(settings, ["a"]) == fusion_weights(settings, ["a"] * 30) == (1.0, 0.7)
