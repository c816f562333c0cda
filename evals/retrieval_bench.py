"""Retrieval benchmark: bm25, dense and hybrid through the real Retriever, plus the rank-bm25 reference."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from evals.adapt_bench import adapted_reranker
from evals.beir import BeirDataset
from evals.bm25_ref import ReferenceBm25, overlap_at
from evals.index import build_index, stored_chunks
from evals.metrics import METRICS, doc_ranking, percentile_ms, score_run
from retrieval.adapt import AdaptSettings
from retrieval.embedder import Embedder
from retrieval.rerank import Reranker, RerankSettings
from retrieval.search import Retriever
from retrieval.settings import IndexSettings
from retrieval.types import Principal, SearchMode

log = logging.getLogger(__name__)

EVAL_PRINCIPAL = Principal("eval", ())
CHUNK_LIMIT = 100
REFERENCE = "bm25_ref"
RERANK = "hybrid_rerank"  # hybrid, then the cross-encoder over the top hits (depth set by the latency budget)
EVAL_MODES = (*(m.value for m in SearchMode), RERANK)


@dataclass
class ModeRun:
    """One mode's answers to every query: document rankings, top chunk ids and time per query."""

    docs: dict[str, dict[str, float]] = field(default_factory=dict)
    chunks: dict[str, list[str]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)  # seconds per stage, when it has several

    def summary(self, qrels: dict[str, dict[str, int]]) -> dict[str, float]:
        """Metrics by ranx plus latency percentiles, the row a table and the JSON show."""
        return {
            **score_run(qrels, self.docs),
            "p50_ms": percentile_ms(self.seconds, 50),
            "p95_ms": percentile_ms(self.seconds, 95),
        }

    def stage_summary(self) -> dict[str, dict[str, float]]:
        return {
            name: {"p50_ms": percentile_ms(values, 50), "p95_ms": percentile_ms(values, 95)}
            for name, values in self.stages.items()
        }


def run_retriever(
    retriever: Retriever,
    queries: dict[str, str],
    modes: list[str],
    limit: int = CHUNK_LIMIT,
    reranker: Reranker | None = None,
) -> dict[str, ModeRun]:
    """Search every query in every mode, timing the whole search (and rerank), ranking documents by best chunk.

    Modes take turns query by query, so a busy machine slows them alike and their latencies stay comparable.
    """
    results = {mode: ModeRun() for mode in modes}
    for qid, text in queries.items():
        for mode in modes:
            run = results[mode]
            started = time.perf_counter()
            search_mode = SearchMode.HYBRID if mode == RERANK else SearchMode(mode)
            hits = retriever.search(text, EVAL_PRINCIPAL, mode=search_mode, limit=limit)
            if mode == RERANK:
                if reranker is None or not reranker.enabled:
                    raise ValueError(f"mode {RERANK} needs a reranker model")
                searched = time.perf_counter()
                hits = [r.hit for r in reranker.rerank(text, hits)]
                run.stages.setdefault("retrieve", []).append(searched - started)
                run.stages.setdefault("rerank", []).append(time.perf_counter() - searched)
            run.seconds.append(time.perf_counter() - started)
            run.docs[qid] = doc_ranking(h.chunk.doc_id for h in hits)
            run.chunks[qid] = [h.point_id for h in hits]
    return results


def run_reference(reference: ReferenceBm25, queries: dict[str, str], limit: int = CHUNK_LIMIT) -> ModeRun:
    """The rank-bm25 reference over the same chunks, aggregated the same way."""
    result = ModeRun()
    for qid, text in queries.items():
        started = time.perf_counter()
        top = reference.top(text, limit)
        result.seconds.append(time.perf_counter() - started)
        result.docs[qid] = doc_ranking(chunk.doc_id for chunk, _ in top)
        result.chunks[qid] = [chunk.point_id for chunk, _ in top]
    return result


def mean_overlap(a: ModeRun, b: ModeRun, k: int = 10) -> float:
    """Top-k chunk overlap |A∩B|/k between two runs, averaged over queries."""
    values = [overlap_at(a.chunks.get(qid, []), b.chunks.get(qid, []), k) for qid in a.chunks]
    return round(sum(values) / len(values), 4) if values else 1.0


def benchmark(
    dataset: BeirDataset,
    settings: IndexSettings,
    cache_dir: Path,
    modes: list[str],
    embedder: Embedder | None = None,
    reference: bool = True,
    rerank: RerankSettings | None = None,
    adapt_settings: AdaptSettings | None = None,
) -> dict[str, Any]:
    """Index (or reuse) the corpus, run each mode and the reference, and return the JSON-ready result.

    `hybrid_rerank` uses `rerank.model`, or when that is empty the reranker `kb adapt` trains on this corpus
    (cached beside the index) with `adapt_settings`.
    """
    embedder = embedder or Embedder(settings.embedder)
    store = build_index(dataset, settings, cache_dir, embedder=embedder)
    try:
        retriever = Retriever(store, embedder, settings)
        queries = dataset.judged_queries
        embedder.embed_query("warm up")  # model load and first-call costs stay out of the latencies
        extra: dict[str, Any] = {}
        reranker = None
        if RERANK in modes:
            rerank = rerank or RerankSettings()
            if not rerank.model:
                report = adapted_reranker(
                    dataset, settings, cache_dir, store, embedder, adapt_settings or AdaptSettings()
                )
                extra["adapt"] = report
                rerank = replace(rerank, model=report["candidate_path"])
            reranker = Reranker(rerank)
            reranker.warm_up()
            reranker.score("warm up", ["warm up"])
            extra["rerank"] = {
                "model": rerank.model,
                "max_depth": rerank.max_depth,
                "budget_ms": rerank.latency_budget_ms,
            }
        runs = run_retriever(retriever, queries, modes, reranker=reranker)
        result: dict[str, Any] = {
            "dataset": dataset.name,
            "queries": len(queries),
            "docs": len(dataset.corpus),
            "chunks": store.count(),
            "chunk_limit": CHUNK_LIMIT,
            "fusion": asdict(settings.fusion),
        }
        if reference:
            chunks = stored_chunks(store)
            k1, b = settings.bm25_k1, settings.bm25_b
            runs[REFERENCE] = run_reference(ReferenceBm25(chunks, k1, b), queries)
            if SearchMode.BM25.value in runs:
                ours = runs[SearchMode.BM25.value]
                result["bm25_overlap@10"] = mean_overlap(ours, runs[REFERENCE])
                # Same reference with Qdrant's IDF: what is left of the gap once the IDF variant is taken out.
                lucene = run_reference(ReferenceBm25(chunks, k1, b, lucene_idf=True), queries)
                result["bm25_overlap@10_lucene_idf"] = mean_overlap(ours, lucene)
        result["modes"] = {name: run.summary(dataset.qrels) for name, run in runs.items()}
        result["stages"] = {name: run.stage_summary() for name, run in runs.items() if run.stages}
        if reranker is not None:
            extra["rerank"]["pairs_per_second"] = round(reranker.pairs_per_second, 1)
        result.update(extra)
        return result
    finally:
        store.close()


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of one dataset's result, one row per mode."""
    columns = [*METRICS, "p50_ms", "p95_ms"]
    header = f"{result['dataset']} ({result['queries']} queries, {result['docs']} docs, {result['chunks']} chunks)"
    lines = [header, f"{'mode':<14}" + "".join(f"{c:>11}" for c in columns)]
    for mode, row in result["modes"].items():
        lines.append(
            f"{mode:<14}" + "".join(f"{row[c]:>11.3f}" if "ms" not in c else f"{row[c]:>11.1f}" for c in columns)
        )
    for mode, stages in result.get("stages", {}).items():
        parts = ", ".join(f"{name} p50 {v['p50_ms']:.0f} / p95 {v['p95_ms']:.0f} ms" for name, v in stages.items())
        lines.append(f"{mode} stages: {parts}")
    if "rerank" in result:
        r = result["rerank"]
        lines.append(
            f"reranker: {r['model']} (max depth {r['max_depth']}, budget {r['budget_ms']:.0f} ms, "
            f"{r['pairs_per_second']} pairs/s)"
        )
    if "adapt" in result:
        a = result["adapt"]
        lines.append(
            f"adapt: {a['pairs']} pairs, {a['minutes']} min; held-back MRR {a['before']['mrr']:.3f} (embedder) -> "
            f"{a['after']['mrr']:.3f} (trained), chance {a['after']['chance_mrr']:.3f}; promoted: {a['replaced']}"
        )
    if "bm25_overlap@10" in result:
        lines.append(
            f"top-10 chunk overlap, Qdrant BM25 vs rank-bm25 BM25Okapi: {result['bm25_overlap@10']:.3f}; "
            f"vs BM25Okapi with Qdrant's IDF ln(1+...): {result['bm25_overlap@10_lucene_idf']:.3f}"
        )
    return "\n".join(lines)
