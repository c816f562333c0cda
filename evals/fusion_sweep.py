"""Fusion curve: hybrid quality over RRF k x BM25 weight, the length-adaptive rule, and DBSF, per dataset."""

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

RRF_KS = (1, 2, 3, 5, 10, 20, 60)
BM25_WEIGHTS = (1.0, 0.5, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)  # fixed weights, the dense side at 1.0
ADAPTIVE_KS = (1, 2, 3, 5)
ADAPTIVE_WEIGHTS = (0.15, 0.2, 0.25, 0.3, 0.35)  # BM25 weight at the reference query length
REFERENCE_TERMS = (6, 8, 10, 12, 14)
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
    run = run_retriever(retriever, dataset.judged_queries, [mode])[mode]
    return score_run(dataset.qrels, run.docs)


def fusion_grid(base: FusionSettings) -> list[tuple[str, FusionSettings]]:
    """Every RRF fusion the sweep scores: fixed weights, the length-adaptive rule, and the default settings."""
    grid = [
        (f"fixed k={k} w={w}", replace(base, rrf_k=k, dense_weight=1.0, bm25_weight=w, adaptive=False))
        for k in RRF_KS
        for w in BM25_WEIGHTS
    ]
    grid += [
        (
            f"adaptive k={k} w={w} ref={ref}",
            replace(base, rrf_k=k, dense_weight=1.0, bm25_weight=w, adaptive=True, reference_terms=ref),
        )
        for k in ADAPTIVE_KS
        for w in ADAPTIVE_WEIGHTS
        for ref in REFERENCE_TERMS
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
            limit=CHUNK_LIMIT,
            query=qe.Fusion.Dbsf(),  # type: ignore[arg-type]  # the stub omits Fusion's inner classes
            prefetches=prefetches,
            filter=acl,
            with_payload=["doc_id"],
        )
        docs[qid] = doc_ranking(str((p.payload or {})["doc_id"]) for p in store.shard.query(request))
    return score_run(dataset.qrels, docs)


def sweep(
    dataset: BeirDataset, settings: IndexSettings, cache_dir: Path, embedder: Embedder | None = None
) -> dict[str, Any]:
    """Score dense, bm25, every fusion in `fusion_grid` and DBSF on `dataset`; JSON-ready."""
    embedder = QueryCachingEmbedder(embedder or Embedder(settings.embedder))
    store = build_index(dataset, settings, cache_dir, embedder=embedder)
    try:
        singles = {
            mode.value: _evaluate(store, embedder, settings, dataset, mode, settings.fusion)
            for mode in (SearchMode.DENSE, SearchMode.BM25)
        }
        rows: list[dict[str, Any]] = [
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
    dense_ndcg = singles["dense"]["ndcg@10"]
    best_r20 = max(row["recall@20"] for row in singles.values())
    for row in rows:
        row["ndcg@10_vs_dense"] = round(row["ndcg@10"] - dense_ndcg, 4)
        row["recall@20_vs_best_single"] = round(row["recall@20"] - best_r20, 4)
    return {"dataset": dataset.name, "queries": len(dataset.judged_queries), "single": singles, "hybrid": rows}


def worst_case(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fusion, its worst nDCG@10 gain over dense and worst recall@20 gain over the better single mode
    across the datasets: a setting holds only if both stay >= 0 everywhere."""
    names = [row["name"] for row in results[0]["hybrid"]]
    table = []
    for name in names:
        rows = [next(r for r in result["hybrid"] if r["name"] == name) for result in results]
        table.append(
            {
                "name": name,
                "min_ndcg@10_vs_dense": min(r["ndcg@10_vs_dense"] for r in rows),
                "min_recall@20_vs_best_single": min(r["recall@20_vs_best_single"] for r in rows),
            }
        )
    return table


def _delta(row: dict[str, Any]) -> str:
    return f"{row['ndcg@10_vs_dense']:+.3f}/{row['recall@20_vs_best_single']:+.3f}"


def _worst(row: dict[str, Any]) -> str:
    return f"{row['min_ndcg@10_vs_dense']:+.3f}/{row['min_recall@20_vs_best_single']:+.3f}"


def format_sweep(results: list[dict[str, Any]]) -> str:
    """Per dataset: single modes, then nDCG@10 - dense / recall@20 - best single for every fusion."""
    lines: list[str] = []
    for result in results:
        by_name = {row["name"]: row for row in result["hybrid"]}
        lines.append(f"{result['dataset']} ({result['queries']} queries); cells: nDCG@10 - dense / R@20 - best single")
        for mode, row in result["single"].items():
            lines.append(f"  {mode:<7}" + "  ".join(f"{m} {row[m]:.3f}" for m in SHOWN))
        lines.append("  fixed      " + "".join(f"{'w=' + str(w):<15}" for w in BM25_WEIGHTS))
        for k in RRF_KS:
            cells = "".join(f"{_delta(by_name[f'fixed k={k} w={w}']):<15}" for w in BM25_WEIGHTS)
            lines.append(f"  k={k:<9}{cells}")
        lines.append("  adaptive   " + "".join(f"{'ref=' + str(ref):<15}" for ref in REFERENCE_TERMS))
        for k in ADAPTIVE_KS:
            for w in ADAPTIVE_WEIGHTS:
                cells = "".join(f"{_delta(by_name[f'adaptive k={k} w={w} ref={ref}']):<15}" for ref in REFERENCE_TERMS)
                lines.append(f"  k={k} w={w:<5}{cells}")
        for name in ("dbsf", "default"):
            row = by_name[name]
            lines.append(f"  {name:<8}" + "  ".join(f"{m} {row[m]:.3f}" for m in SHOWN) + f"  ({_delta(row)})")
        lines.append("")
    if len(results) > 1:
        table = worst_case(results)
        holding = [r for r in table if r["min_ndcg@10_vs_dense"] >= 0 and r["min_recall@20_vs_best_single"] >= 0]
        default = next(r for r in table if r["name"] == "default")
        lines.append(f"settings that hold on every dataset (nDCG@10 >= dense, R@20 >= best single): {len(holding)}")
        for row in sorted(holding, key=lambda r: -r["min_ndcg@10_vs_dense"])[:8]:
            lines.append(f"  {row['name']:<30} worst {_worst(row)}")
        lines.append(f"  default worst case {_worst(default)}")
    return "\n".join(lines)
