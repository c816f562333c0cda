"""Fusion curve: hybrid quality over RRF k x BM25 weight (and DBSF, and the adaptive rule) on one dataset."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from evals.beir import BeirDataset
from evals.index import build_index
from evals.metrics import score_run
from evals.retrieval_bench import run_retriever
from retrieval.embedder import Embedder
from retrieval.search import Retriever
from retrieval.settings import FusionSettings, IndexSettings
from retrieval.store_edge import EdgeStore
from retrieval.types import SearchMode

RRF_KS = (1, 2, 5, 10, 20, 60)
BM25_WEIGHTS = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05)  # with the dense side at 1.0
SHOWN = ("ndcg@10", "recall@20", "recall@100")


class QueryCachingEmbedder(Embedder):
    """An Embedder that encodes each distinct query once: a sweep asks the same questions many times."""

    def __init__(self, inner: Embedder) -> None:
        super().__init__(inner.settings)
        self._inner = inner
        self._queries: dict[str, list[float]] = {}

    def warm_up(self) -> None:
        self._inner.warm_up()
        self._model = self._inner.model

    def embed_query(self, text: str) -> list[float]:
        if text not in self._queries:
            self._queries[text] = self._inner.embed_query(text)
        return self._queries[text]


def _evaluate(store: EdgeStore, embedder: Embedder, settings: IndexSettings, dataset: BeirDataset,
              mode: SearchMode, fusion: FusionSettings) -> dict[str, float]:
    retriever = Retriever(store, embedder, replace(settings, fusion=fusion))
    run = run_retriever(retriever, dataset.judged_queries, mode)
    return score_run(dataset.qrels, run.docs)


def fusion_grid(base: FusionSettings) -> list[tuple[str, FusionSettings]]:
    """Every fusion the sweep scores: the RRF grid with fixed weights, DBSF, and the default (adaptive) rule."""
    grid = [
        (f"rrf k={k} w_bm25={w}", replace(base, method="rrf", rrf_k=k, dense_weight=1.0, bm25_weight=w, adaptive=False))
        for k in RRF_KS
        for w in BM25_WEIGHTS
    ]
    grid.append(("dbsf", replace(base, method="dbsf", adaptive=False)))
    grid.append(("default", base))
    return grid


def sweep(dataset: BeirDataset, settings: IndexSettings, cache_dir: Path, embedder: Embedder | None = None) -> dict[str, Any]:
    """Score dense, bm25 and every fusion in `fusion_grid` on `dataset`; JSON-ready."""
    embedder = QueryCachingEmbedder(embedder or Embedder(settings.embedder))
    store = build_index(dataset, settings, cache_dir, embedder=embedder)
    try:
        singles = {mode.value: _evaluate(store, embedder, settings, dataset, mode, settings.fusion)
                   for mode in (SearchMode.DENSE, SearchMode.BM25)}
        rows = [
            {"name": name, "fusion": asdict(fusion), **_evaluate(store, embedder, settings, dataset, SearchMode.HYBRID, fusion)}
            for name, fusion in fusion_grid(settings.fusion)
        ]
    finally:
        store.close()
    return {"dataset": dataset.name, "queries": len(dataset.judged_queries), "single": singles, "hybrid": rows}


def format_sweep(results: list[dict[str, Any]]) -> str:
    """Per dataset: the single modes, an nDCG@10 grid (k x BM25 weight), then DBSF and the default rule."""
    lines: list[str] = []
    for result in results:
        lines.append(f"{result['dataset']} ({result['queries']} queries)")
        for mode, row in result["single"].items():
            lines.append(f"  {mode:<8}" + "  ".join(f"{m} {row[m]:.3f}" for m in SHOWN))
        by_name = {row["name"]: row for row in result["hybrid"]}
        lines.append("  nDCG@10   " + "".join(f"w_bm25={w:<6}" for w in BM25_WEIGHTS))
        for k in RRF_KS:
            cells = "".join(f"{by_name[f'rrf k={k} w_bm25={w}']['ndcg@10']:<13.3f}" for w in BM25_WEIGHTS)
            lines.append(f"  rrf k={k:<4}{cells}")
        for name in ("dbsf", "default"):
            row = by_name[name]
            lines.append(f"  {name:<8}" + "  ".join(f"{m} {row[m]:.3f}" for m in SHOWN))
        lines.append("")
    return "\n".join(lines)
