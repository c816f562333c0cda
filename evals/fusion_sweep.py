"""Fusion curve: hybrid quality over RRF k x BM25 weight (and DBSF, and the adaptive rule) on one dataset."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from evals.beir import BeirDataset
from evals.index import build_index
from evals.metrics import doc_ranking, score_run
from evals.retrieval_bench import CHUNK_LIMIT, EVAL_PRINCIPAL, run_retriever
from retrieval.bm25 import query_terms
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


def _evaluate(
    store: EdgeStore,
    embedder: Embedder,
    settings: IndexSettings,
    dataset: BeirDataset,
    mode: SearchMode,
    fusion: FusionSettings,
) -> dict[str, float]:
    retriever = Retriever(store, embedder, replace(settings, fusion=fusion))
    run = run_retriever(retriever, dataset.judged_queries, mode)
    return score_run(dataset.qrels, run.docs)


def fusion_grid(base: FusionSettings) -> list[tuple[str, FusionSettings]]:
    """Every RRF fusion the sweep scores: the k x weight grid with fixed weights, then the default rule."""
    grid = [
        (f"rrf k={k} w_bm25={w}", replace(base, rrf_k=k, dense_weight=1.0, bm25_weight=w, adaptive=False))
        for k in RRF_KS
        for w in BM25_WEIGHTS
    ]
    grid.append(("default", base))
    return grid


def dbsf_run(store: EdgeStore, embedder: Embedder, settings: IndexSettings, dataset: BeirDataset) -> dict[str, float]:
    """Distribution-based score fusion of the same two prefetches, as one engine query.

    The Store interface has no DBSF (it lost to dense here, so it was not wired into the service); the sweep
    asks the shard directly with the prefetches and ACL filter EdgeStore.query builds.
    """
    acl = qe.Filter(must=[qe.FieldCondition(key="acl", match=qe.MatchAny(EVAL_PRINCIPAL.readable_groups))])
    bm25_params = qe.Bm25Params(k=settings.bm25_k1, b=settings.bm25_b)
    fusion = settings.fusion
    docs = {}
    for qid, text in dataset.judged_queries.items():
        prefetches = [
            qe.Prefetch(
                limit=fusion.dense_prefetch,
                query=qe.Query.Nearest(embedder.embed_query(text), using=settings.dense_vector),
                filter=acl,
            ),
            qe.Prefetch(
                limit=fusion.bm25_prefetch,
                query=qe.TextQuery(settings.text_field, " ".join(query_terms(text)), bm25_params),
                filter=acl,
            ),
        ]
        request = qe.QueryRequest(
            limit=CHUNK_LIMIT, query=qe.Fusion.Dbsf(), prefetches=prefetches, filter=acl, with_payload=["doc_id"]
        )
        docs[qid] = doc_ranking(str((p.payload or {})["doc_id"]) for p in store.shard.query(request))
    return score_run(dataset.qrels, docs)


def sweep(
    dataset: BeirDataset, settings: IndexSettings, cache_dir: Path, embedder: Embedder | None = None
) -> dict[str, Any]:
    """Score dense, bm25 and every fusion in `fusion_grid` on `dataset`; JSON-ready."""
    embedder = QueryCachingEmbedder(embedder or Embedder(settings.embedder))
    store = build_index(dataset, settings, cache_dir, embedder=embedder)
    try:
        singles = {
            mode.value: _evaluate(store, embedder, settings, dataset, mode, settings.fusion)
            for mode in (SearchMode.DENSE, SearchMode.BM25)
        }
        rows = [
            {
                "name": name,
                "fusion": asdict(fusion),
                **_evaluate(store, embedder, settings, dataset, SearchMode.HYBRID, fusion),
            }
            for name, fusion in fusion_grid(settings.fusion)
        ]
        rows.append({"name": "dbsf", "fusion": {"method": "dbsf"}, **dbsf_run(store, embedder, settings, dataset)})
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
