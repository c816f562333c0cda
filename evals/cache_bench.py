"""Semantic cache: how often different questions would hit each other, and what a hit costs.

False hits: for every judged question, the most similar *other* question whose relevant documents share none
with its own. At threshold t that question would get a wrong cached answer when that neighbour's cosine is at
least t; the curve is the share of questions with such a neighbour, per t. The threshold rule: the lowest t on
a 0.01 grid at which no dataset exceeds 1% false hits.

Latency: every question is answered once through the real AnswerService with a real cache (a Qdrant Edge
shard beside the eval index), then asked again: the second answer is a hit. Reported per stage: the lookup
alone (vector search + reading the cited points back for their ACL and existence), and the whole hit
(embedding the question included), against the miss that built the entry.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.services import Answer, AnswerService
from evals.beir import BeirDataset, load_beir
from evals.index import build_index
from evals.retrieval_bench import EVAL_PRINCIPAL
from retrieval.cache import CacheSettings, SemanticCache
from retrieval.cache_tables import EdgeCacheTable
from retrieval.embedder import Embedder, TextEmbedder, make_embedder
from retrieval.rerank import Reranker, RerankSettings
from retrieval.search import Retriever
from retrieval.settings import EmbedderSettings, IndexSettings

THRESHOLDS = [round(0.80 + 0.01 * i, 2) for i in range(20)]
MAX_FALSE_HITS = 0.01


def false_hit_curve(dataset: BeirDataset, embedder: TextEmbedder) -> dict[str, Any]:
    queries = dataset.judged_queries
    qids = list(queries)
    relevant = [{d for d, s in dataset.qrels[q].items() if s > 0} for q in qids]
    vecs = np.asarray(embedder.embed_documents([queries[q] for q in qids]), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    sims = vecs @ vecs.T
    disjoint = np.array([[not (a & b) for b in relevant] for a in relevant])
    np.fill_diagonal(disjoint, False)
    worst = np.where(disjoint, sims, -1.0).max(axis=1)  # closest question with other relevant documents
    same = np.array([[bool(a & b) for b in relevant] for a in relevant])
    np.fill_diagonal(same, False)
    curve = [
        {
            "threshold": t,
            "false_hit_rate": round(float(np.mean(worst >= t)), 4),
            "false_hit_pairs": int(np.sum(np.triu(disjoint & (sims >= t)))),
            "same_answer_pairs": int(np.sum(np.triu(same & (sims >= t)))),
        }
        for t in THRESHOLDS
    ]
    return {"dataset": dataset.name, "questions": len(qids), "curve": curve}


def pick_threshold(curves: list[dict[str, Any]]) -> float:
    """The lowest threshold at which every dataset's false-hit rate is at most MAX_FALSE_HITS."""
    for i, t in enumerate(THRESHOLDS):
        if all(c["curve"][i]["false_hit_rate"] <= MAX_FALSE_HITS for c in curves):
            return t
    return THRESHOLDS[-1]


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else 0.0


def hit_latency(
    dataset: BeirDataset,
    settings: IndexSettings,
    cache_dir: Path,
    embedder: TextEmbedder,
    threshold: float,
    limit: int | None,
) -> dict[str, Any]:
    questions = list(dataset.judged_queries.values())[:limit]
    index_embedder = embedder if isinstance(embedder, Embedder) else Embedder(settings.embedder)
    store = build_index(dataset, settings, cache_dir, embedder=index_embedder)
    tmp = Path(tempfile.mkdtemp(prefix="kb-cache-bench-"))
    table = EdgeCacheTable(tmp / "cache")
    cache = SemanticCache(table, store.retrieve, lambda: 1, CacheSettings(threshold=threshold))
    cache.ensure(embedder.dim)
    service = AnswerService(Retriever(store, embedder, settings), embedder, Reranker(RerankSettings()), cache=cache)

    async def ask(question: str) -> tuple[Answer, float]:
        t0 = time.perf_counter()
        async for item in service.stream(EVAL_PRINCIPAL, question):
            if isinstance(item, Answer):
                return item, (time.perf_counter() - t0) * 1000
        raise RuntimeError("the answer stream ended without an answer")

    async def run() -> dict[str, Any]:
        miss_ms, hit_ms, lookup_ms, embed_ms = [], [], [], []
        hits = cached = 0
        for q in questions:
            first, ms = await ask(q)
            miss_ms.append(ms)
            cached += not first.abstained
        for q in questions:
            again, ms = await ask(q)
            if again.usage.cache_hit:
                hits += 1
                hit_ms.append(ms)
                lookup_ms.append(again.usage.stages_ms["cache"])
                embed_ms.append(again.usage.stages_ms["embed"])
        return {
            "dataset": dataset.name,
            "questions": len(questions),
            "cached": cached,
            "hits_on_repeat": hits,
            "miss_ms_p50": _pct(miss_ms, 50),
            "miss_ms_p95": _pct(miss_ms, 95),
            "lookup_ms_p50": _pct(lookup_ms, 50),
            "lookup_ms_p95": _pct(lookup_ms, 95),
            "embed_ms_p50": _pct(embed_ms, 50),
            "embed_ms_p95": _pct(embed_ms, 95),
            "hit_ms_p50": _pct(hit_ms, 50),
            "hit_ms_p95": _pct(hit_ms, 95),
        }

    try:
        return asyncio.run(run())
    finally:
        cache.close()
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def format_curve(curves: list[dict[str, Any]], chosen: float) -> str:
    names = [c["dataset"] for c in curves]
    lines = [
        "| threshold | "
        + " | ".join(f"{n} false hits" for n in names)
        + " | "
        + " | ".join(f"{n} same-answer pairs" for n in names)
        + " |",
        "|---|" + "---|" * (2 * len(names)),
    ]
    for i, t in enumerate(THRESHOLDS):
        mark = " **(chosen)**" if t == chosen else ""
        rates = " | ".join(f"{c['curve'][i]['false_hit_rate']:.1%}" for c in curves)
        same = " | ".join(str(c["curve"][i]["same_answer_pairs"]) for c in curves)
        lines.append(f"| {t:.2f}{mark} | {rates} | {same} |")
    return "\n".join(lines)


def format_latency(rows: list[dict[str, Any]]) -> str:
    cols = ["questions", "cached", "hits_on_repeat", "miss_ms_p50", "miss_ms_p95", "lookup_ms_p50", "lookup_ms_p95"]
    cols += ["embed_ms_p95", "hit_ms_p50", "hit_ms_p95"]
    lines = ["| dataset | embedder | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['embedder']} | " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = IndexSettings()
    datasets = [load_beir(p) for p in args.dataset]
    embedder = Embedder(settings.embedder)
    curves = [false_hit_curve(d, embedder) for d in datasets]
    chosen = pick_threshold(curves)
    print(format_curve(curves, chosen), end="\n\n")
    print(f"threshold rule: lowest t with at most {MAX_FALSE_HITS:.0%} false hits on every dataset -> {chosen}\n")
    rows = []
    if not args.no_latency:
        for backend in args.embedding_backend:
            emb = (
                make_embedder(EmbedderSettings(backend=backend, cache_dir=str(args.cache_dir / "onnx")))
                if backend != "torch"
                else embedder
            )
            for d in datasets:
                row = hit_latency(d, settings, args.cache_dir, emb, chosen, args.limit)
                row["embedder"] = backend
                rows.append(row)
        print(format_latency(rows))
    return {
        "curves": curves,
        "threshold": chosen,
        "rule": f"lowest t with <= {MAX_FALSE_HITS} false hits",
        "latency": rows,
    }


def add_parser(sub: Any, cache_default: Path, write: Any) -> None:
    p = sub.add_parser("cache", help="semantic cache: false-hit curve per threshold, hit vs miss latency")
    p.add_argument("--dataset", type=Path, action="append", required=True, help="a BEIR folder (repeatable)")
    p.add_argument("--limit", type=int, default=100, help="questions per dataset in the latency run")
    p.add_argument("--embedding-backend", action="append", default=None, help="torch and/or onnx (repeatable)")
    p.add_argument("--no-latency", action="store_true", help="only the false-hit curve")
    p.add_argument("--cache-dir", type=Path, default=cache_default)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")

    def main(args: argparse.Namespace) -> int:
        args.embedding_backend = args.embedding_backend or ["torch"]
        write(args.out, run(args))
        return 0

    p.set_defaults(func=main)
