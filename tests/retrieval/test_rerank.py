"""The reranker follows the cross-encoder's scores, stays within its latency budget, and calibrates confidence.

The model is a tiny random BERT built here: these tests prove the wiring, never ranking quality."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval.rerank import Reranker, RerankSettings, fit_calibration, write_calibration
from retrieval.types import Chunk, Hit

PASSAGES = [
    "Every full-time employee gets 25 vacation days per calendar year.",
    "Report a lost laptop to the security desk within one hour.",
    "The meal allowance abroad is 40 euros per day.",
    "Carried-over vacation days expire on March 31st.",
    "Sick days are not vacation days.",
    "Request vacation in the HR portal two weeks ahead.",
]


@pytest.fixture(scope="module")
def tiny_model(tiny_cross_encoder: Path) -> Path:
    return tiny_cross_encoder


@pytest.fixture(scope="module")
def reranker(tiny_model: Path) -> Reranker:
    r = Reranker(RerankSettings(model=str(tiny_model)))
    r.warm_up()
    return r


def _hits() -> list[Hit]:
    return [
        Hit(Chunk(doc_id=f"d{i}", source="s", ordinal=0, text=t, content_hash="h", acl=("public",)), 1.0 - i / 10)
        for i, t in enumerate(PASSAGES)
    ]


def _with_rate(reranker: Reranker, pairs_per_second: float, budget_ms: float, max_depth: int = 20) -> Reranker:
    """The same loaded model under other settings, with a throughput estimate we choose."""
    settings = RerankSettings(model=reranker.settings.model, max_depth=max_depth, latency_budget_ms=budget_ms)
    other = Reranker(settings)
    other._predict = reranker._predict
    other._pairs_per_second = pairs_per_second
    other._observe = lambda pairs, seconds: None  # type: ignore[method-assign]  # keep the chosen rate
    return other


def test_order_follows_cross_encoder_scores(reranker: Reranker) -> None:
    query = "how many vacation days do I get"
    hits = _hits()
    expected = reranker.score(query, [h.chunk.text for h in hits])

    ranked = reranker.rerank(query, hits)

    assert sorted(r.hit.chunk.doc_id for r in ranked) == sorted(h.chunk.doc_id for h in hits)
    assert [r.hit.chunk.doc_id for r in ranked] == [hits[i].chunk.doc_id for i in np.argsort(-expected, kind="stable")]
    assert [r.score for r in ranked] == pytest.approx(sorted(expected.tolist(), reverse=True), abs=1e-5)
    assert [r.hit.chunk.doc_id for r in ranked] != [h.chunk.doc_id for h in hits], "random model kept the order"


def test_depth_follows_latency_budget_and_tail_keeps_order(reranker: Reranker) -> None:
    slow = _with_rate(reranker, pairs_per_second=4.0, budget_ms=500)  # 2 pairs fit
    hits = _hits()

    ranked = slow.rerank("vacation", hits)

    assert slow.depth_for(len(hits)) == 2
    assert all(r.score is not None for r in ranked[:2])
    assert {r.hit.chunk.doc_id for r in ranked[:2]} == {"d0", "d1"}
    assert [r.hit.chunk.doc_id for r in ranked[2:]] == ["d2", "d3", "d4", "d5"]
    assert all(r.score is None and r.confidence is None for r in ranked[2:])

    assert _with_rate(reranker, 1000.0, 1500, max_depth=3).depth_for(len(hits)) == 3
    assert _with_rate(reranker, 1000.0, 1500).depth_for(len(hits), depth=4) == 4
    assert _with_rate(reranker, 0.1, 100).depth_for(len(hits)) == 1  # one pair still runs and measures


def test_throughput_estimate_moves_towards_measurements(tiny_model: Path) -> None:
    r = Reranker(RerankSettings(model=str(tiny_model), pairs_per_second=1e-3))
    r.warm_up()
    r.rerank("vacation", _hits())
    assert r.pairs_per_second > 1e-3


def test_disabled_reranker_passes_hits_through() -> None:
    hits = _hits()
    ranked = Reranker(RerankSettings()).rerank("vacation", hits)
    assert [r.hit for r in ranked] == hits
    assert all(r.score is None for r in ranked)


def test_confidence_is_a_probability_monotone_in_score(reranker: Reranker) -> None:
    logits = np.linspace(-20, 20, 41)
    conf = reranker.confidence(logits)
    assert np.all((conf > 0) & (conf < 1))
    assert np.all(np.diff(conf) > 0)
    ranked = reranker.rerank("vacation", _hits())
    assert all(0 < (r.confidence or 0) < 1 for r in ranked)
    assert [r.confidence for r in ranked] == sorted((r.confidence for r in ranked), reverse=True)  # type: ignore


def test_platt_fit_gives_positives_higher_confidence() -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(3.0, 0.5, 50), rng.normal(-1.0, 0.5, 50)])
    labels = np.concatenate([np.ones(50), np.zeros(50)])

    a, b = fit_calibration(scores, labels)

    conf = Reranker(RerankSettings(calibration_scale=a, calibration_bias=b)).confidence(scores)
    assert a > 0
    assert np.isfinite([a, b]).all()
    assert conf[:50].min() > conf[50:].max()
    assert conf[:50].mean() > 0.9 > 0.1 > conf[50:].mean()
    with pytest.raises(ValueError):
        fit_calibration([1.0, 2.0], [1, 1])


def test_onnx_backend_gives_the_torch_logits_and_order(tiny_model: Path, tmp_path: Path) -> None:
    hits = _hits()
    query = "how many vacation days do I get"
    torch_scores = Reranker(RerankSettings(model=str(tiny_model))).score(query, [h.chunk.text for h in hits])
    onnx = Reranker(RerankSettings(model=str(tiny_model), backend="onnx", cache_dir=str(tmp_path)))

    onnx_scores = onnx.score(query, [h.chunk.text for h in hits])

    assert onnx_scores == pytest.approx(torch_scores, abs=1e-4)
    assert [r.hit for r in onnx.rerank(query, hits)] == [hits[i] for i in np.argsort(-torch_scores, kind="stable")]
    assert len(list(tmp_path.glob("rerank-*.onnx"))) == 1, "the export is cached"
    again = Reranker(RerankSettings(model=str(tiny_model), backend="onnx", cache_dir=str(tmp_path)))
    assert again.score(query, [hits[0].chunk.text]) == pytest.approx(torch_scores[:1], abs=1e-4)


def test_a_missing_model_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="cannot load reranking model"):
        Reranker(RerankSettings(model="/nonexistent/cross-encoder")).warm_up()


def test_calibration_fitted_for_a_model_travels_with_it(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    write_calibration(folder, scale=2.0, bias=-1.0, pairs=40)

    fitted = Reranker(RerankSettings(model=str(folder)))
    fitted.warm_up()
    explicit = Reranker(RerankSettings(model=str(folder), calibration_scale=0.5, calibration_bias=0.0))
    explicit.warm_up()

    logits = np.array([-2.0, 0.0, 3.0])
    assert fitted.calibration == (2.0, -1.0)
    assert fitted.confidence(logits) == pytest.approx(1 / (1 + np.exp(-(2.0 * logits - 1.0))))
    assert explicit.calibration == (0.5, 0.0), "settings win over the file"
    fitted.use_model(str(tiny_model))
    assert fitted.calibration == (1.0, 0.0), "another model does not inherit the calibration"
