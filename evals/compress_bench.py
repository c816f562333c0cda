"""Compression curve: tokens kept vs the share of the reference answer's content words that survive.

For each judged query the top passages (hybrid, reranked when a model is given) are compressed at budgets
that are fractions of their own token count. A reference answer (queries.jsonl `metadata.answer`) word
"survives" if it is in the compressed context; only words that were in the passages before compression
count, so the curve measures compression, not retrieval. Scored separately over queries whose relevant
document is among the passages (where the answer's words can really survive) and over all queries.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from evals.beir import BeirDataset, reference_answers
from evals.index import build_index
from evals.retrieval_bench import EVAL_PRINCIPAL
from retrieval.compress import compress
from retrieval.embedder import Embedder
from retrieval.rerank import Reranker, RerankSettings
from retrieval.search import Retriever
from retrieval.settings import IndexSettings
from retrieval.types import Hit, SearchMode

_WORD = re.compile(r"[a-z0-9_]+")
DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def content_words(text: str) -> set[str]:
    """Lower-case words of 3+ characters that are not English stop words (scikit-learn's list)."""
    return {w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in ENGLISH_STOP_WORDS}


def _cached(embed: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
    memo: dict[str, np.ndarray] = {}

    def run(texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        if missing:
            memo.update(zip(missing, np.asarray(embed(missing)), strict=True))
        return np.stack([memo[t] for t in texts]) if texts else np.zeros((0, 0), dtype=np.float32)

    return run


def compression_curve(
    dataset: BeirDataset,
    settings: IndexSettings,
    cache_dir: Path,
    passages: int = 5,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    rerank: RerankSettings | None = None,
    embedder: Embedder | None = None,
    rank_prior: float | None = None,
) -> dict[str, Any]:
    """Survival of answer content words and tokens kept, per budget fraction, as a JSON-ready dict."""
    answers = reference_answers(dataset)
    if not answers:
        raise ValueError(f"{dataset.path}: no query has metadata.answer; the compression curve needs them")
    embedder = embedder or Embedder(settings.embedder)
    store = build_index(dataset, settings, cache_dir, embedder=embedder)
    reranker = Reranker(rerank or RerankSettings())
    embed = _cached(embedder.embed_documents)
    rows: dict[float, dict[str, list[float]]] = {f: {"kept": [], "all": [], "found": []} for f in fractions}
    cold_ms: list[float] = []  # the first budget of each query pays for embedding its sentences: the real cost
    knobs = {} if rank_prior is None else {"rank_prior": rank_prior}
    try:
        retriever = Retriever(store, embedder, settings)
        for qid, question in dataset.judged_queries.items():
            if qid not in answers:
                continue
            hits: list[Hit] = retriever.search(question, EVAL_PRINCIPAL, SearchMode.HYBRID, max(passages, 20))
            hits = [r.hit for r in reranker.rerank(question, hits)][:passages]
            before = content_words(" ".join(h.chunk.text for h in hits))
            wanted = content_words(answers[qid]) & before
            relevant = {d for d, s in dataset.qrels[qid].items() if s > 0}
            found = any(h.chunk.doc_id in relevant for h in hits)
            query_vec = embedder.embed_query(question)
            for f in fractions:
                tokens_in = sum(embedder.count_tokens(h.chunk.text) for h in hits)
                started = time.perf_counter()
                ctx = compress(question, hits, embed, query_vec, embedder.count_tokens, int(f * tokens_in), **knobs)
                if f == fractions[0]:
                    cold_ms.append((time.perf_counter() - started) * 1000)
                kept = content_words(" ".join(s.text for _, sentences in ctx.passages for s in sentences))
                share = len(wanted & kept) / len(wanted) if wanted else 1.0
                rows[f]["kept"].append(ctx.tokens_used / tokens_in if tokens_in else 0.0)
                rows[f]["all"].append(share)
                if found:
                    rows[f]["found"].append(share)
    finally:
        store.close()
    curve = [
        {
            "budget_fraction": f,
            "tokens_kept": round(float(np.mean(r["kept"])), 4),
            "answer_words_kept": round(float(np.mean(r["found"])), 4) if r["found"] else None,
            "answer_words_kept_all_queries": round(float(np.mean(r["all"])), 4),
        }
        for f, r in rows.items()
    ]
    first = rows[fractions[0]]
    return {
        "dataset": dataset.name,
        "queries": len(first["all"]),
        "queries_with_answer_in_passages": len(first["found"]),
        "passages": passages,
        "reranker": reranker.settings.model or None,
        "rank_prior": rank_prior,
        "compress_p50_ms": round(float(np.percentile(cold_ms, 50)), 1),
        "compress_p95_ms": round(float(np.percentile(cold_ms, 95)), 1),
        "curve": curve,
    }


def format_curve(result: dict[str, Any]) -> str:
    lines = [
        f"{result['dataset']}: {result['queries']} queries, answer document among the top {result['passages']} "
        f"passages for {result['queries_with_answer_in_passages']}",
        f"compression p50 {result['compress_p50_ms']:.0f} ms / p95 {result['compress_p95_ms']:.0f} ms per query "
        "(sentence embedding included)",
        f"{'budget':>8}{'tokens kept':>14}{'answer words kept':>20}{'(all queries)':>16}",
    ]
    for row in result["curve"]:
        found = row["answer_words_kept"]
        lines.append(
            f"{row['budget_fraction']:>8.0%}{row['tokens_kept']:>14.1%}"
            f"{(f'{found:.1%}' if found is not None else '-'):>20}"
            f"{row['answer_words_kept_all_queries']:>16.1%}"
        )
    return "\n".join(lines)
