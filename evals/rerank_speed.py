"""Reranker throughput on this machine: torch vs ONNX Runtime (fp32, int8) on real (question, passage) pairs.

Pairs are each dev question with its top hybrid hits from the eval index. Agreement with torch is reported
as the largest logit difference and the share of questions whose reranked order is the same.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from evals.beir import BeirDataset
from evals.index import build_index
from evals.retrieval_bench import EVAL_PRINCIPAL
from retrieval.embedder import Embedder
from retrieval.rerank import Reranker, RerankSettings
from retrieval.search import Retriever
from retrieval.settings import IndexSettings, default_embedding_model
from retrieval.types import SearchMode


def minilm_cross_encoder(folder: Path) -> Path:
    """The packaged MiniLM-L6 with a fresh one-logit head: the size of ms-marco-MiniLM-L-6-v2, for speed only."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = default_embedding_model()
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def rerank_speed(
    dataset: BeirDataset,
    settings: IndexSettings,
    cache_dir: Path,
    model: str | None = None,
    queries: int = 20,
    depth: int = 20,
    repeats: int = 2,
) -> dict[str, Any]:
    """pairs/s per backend and agreement with torch, as a JSON-ready dict."""
    embedder = Embedder(settings.embedder)
    store = build_index(dataset, settings, cache_dir, embedder=embedder)
    try:
        retriever = Retriever(store, embedder, settings)
        groups = [
            (text, [h.chunk.text for h in retriever.search(text, EVAL_PRINCIPAL, SearchMode.HYBRID, depth)])
            for text in list(dataset.judged_queries.values())[:queries]
        ]
    finally:
        store.close()
    with tempfile.TemporaryDirectory() as tmp:
        path = model or str(minilm_cross_encoder(Path(tmp) / "minilm-l6-ce"))
        backends = {
            "torch": RerankSettings(model=path),
            "onnx": RerankSettings(model=path, backend="onnx", cache_dir=tmp),
            "onnx_int8": RerankSettings(model=path, backend="onnx", onnx_int8=True, cache_dir=tmp),
        }
        scores: dict[str, list[np.ndarray]] = {}
        rows: dict[str, dict[str, float]] = {}
        for name, rerank in backends.items():
            reranker = Reranker(rerank)
            reranker.warm_up()
            reranker.score("warm up", ["warm up"])
            best = 0.0
            for _ in range(repeats):  # the best of the repeats: the machine is shared, noise only slows
                started = time.perf_counter()
                scores[name] = [reranker.score(q, texts) for q, texts in groups]
                best = max(best, sum(len(t) for _, t in groups) / (time.perf_counter() - started))
            rows[name] = {"pairs_per_second": round(best, 1)}
    for name, row in rows.items():
        diffs = [float(np.max(np.abs(a - b))) for a, b in zip(scores[name], scores["torch"], strict=True)]
        same = [list(np.argsort(-a, kind="stable")) == list(np.argsort(-b, kind="stable"))
                for a, b in zip(scores[name], scores["torch"], strict=True)]  # fmt: skip
        row["max_abs_logit_diff"] = round(max(diffs), 6)
        row["same_order_share"] = round(float(np.mean(same)), 3)
        row["speedup"] = round(row["pairs_per_second"] / rows["torch"]["pairs_per_second"], 2)
    return {
        "dataset": dataset.name,
        "model": model or "packaged MiniLM-L6 + fresh one-logit head (speed only)",
        "pairs": sum(len(t) for _, t in groups),
        # How far apart torch's logits for one question's passages lie: a logit difference far below this
        # cannot change an order; one near it can.
        "torch_logit_spread": round(float(np.mean([np.std(a) for a in scores["torch"]])), 6),
        "backends": rows,
    }


def format_speed(result: dict[str, Any]) -> str:
    lines = [
        f"reranker speed: {result['model']}, {result['pairs']} pairs from {result['dataset']}; "
        f"torch logits per question spread (std) {result['torch_logit_spread']:.4f}",
        f"{'backend':<11}{'pairs/s':>9}{'speedup':>9}{'max |dlogit|':>14}{'same order':>12}",
    ]
    for name, r in result["backends"].items():
        lines.append(
            f"{name:<11}{r['pairs_per_second']:>9.1f}{r['speedup']:>9.2f}{r['max_abs_logit_diff']:>14.4f}"
            f"{r['same_order_share']:>12.0%}"
        )
    return "\n".join(lines)
