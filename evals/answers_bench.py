"""Answer quality and cost: generated (or extractive) answers scored against the dataset's reference answers.

Per answerable query (queries.jsonl `metadata.answer`): token F1 (SQuAD normalisation, citation markers
removed) and ROUGE-L F (rouge-score) against the reference, citation precision (a cited passage belongs to a
relevant document of the qrels), and whether the answer wrongly abstained. Questions of another dataset
(`--unanswerable`), asked against this corpus where nothing relevant exists, measure abstention. Latency is
time to the first streamed text and to the end; tokens are the server's own counts.
"""

from __future__ import annotations

import asyncio
import re
import string
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rouge_score import rouge_scorer

from app.llm import LLMSettings
from app.routing import Policy, RouteSettings
from app.services import Answer, AnswerService, AnswerSettings
from app.tiers import EXTRACTIVE, TierSettings, build_tiers, tier_from_llm
from evals.beir import BeirDataset, reference_answers
from evals.index import build_index
from evals.retrieval_bench import EVAL_PRINCIPAL
from retrieval.embedder import Embedder
from retrieval.rerank import Reranker, RerankSettings
from retrieval.search import Retriever
from retrieval.settings import IndexSettings

_MARKER = re.compile(r"\[\d+\]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def normalise(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = _MARKER.sub(" ", text).lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalise(prediction), normalise(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    return float(_ROUGE.score(reference, _MARKER.sub(" ", prediction))["rougeL"].fmeasure)


@dataclass
class AnswerRow:
    qid: str
    answerable: bool
    answer: str
    abstained: bool
    extractive: bool
    fallback: str
    confidence: float | None
    f1: float
    rouge_l: float
    cited: int
    cited_relevant: int
    first_text_ms: float
    total_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost: float = 0.0
    tier: str = ""
    route: str = ""


async def _ask(service: AnswerService, question: str) -> tuple[Answer, float, float]:
    t0 = time.perf_counter()
    first: float | None = None
    async for item in service.stream(EVAL_PRINCIPAL, question):
        if isinstance(item, str) and item and first is None:
            first = (time.perf_counter() - t0) * 1000
        if isinstance(item, Answer):
            total = (time.perf_counter() - t0) * 1000
            return item, first if first is not None else total, total
    raise RuntimeError("the answer stream ended without an answer")


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else 0.0


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 4) if values else 0.0


def summarise(rows: list[AnswerRow]) -> dict[str, Any]:
    answerable = [r for r in rows if r.answerable]
    unanswerable = [r for r in rows if not r.answerable]
    cited = sum(r.cited for r in answerable)
    return {
        "answerable": len(answerable),
        "token_f1": _mean([r.f1 for r in answerable]),
        "rouge_l": _mean([r.rouge_l for r in answerable]),
        "citation_precision": round(sum(r.cited_relevant for r in answerable) / cited, 4) if cited else 0.0,
        "answers_with_citation": _mean([1.0 if r.cited else 0.0 for r in answerable]),
        "false_abstention": _mean([1.0 if r.abstained else 0.0 for r in answerable]),
        "unanswerable": len(unanswerable),
        "abstention_unanswerable": _mean([1.0 if r.abstained else 0.0 for r in unanswerable]),
        "fallbacks": sum(1 for r in rows if r.fallback),
        "first_text_ms_p50": _pct([r.first_text_ms for r in rows], 50),
        "first_text_ms_p95": _pct([r.first_text_ms for r in rows], 95),
        "total_ms_p50": _pct([r.total_ms for r in rows], 50),
        "total_ms_p95": _pct([r.total_ms for r in rows], 95),
        "prompt_tokens_mean": _mean([float(r.prompt_tokens) for r in rows]),
        "completion_tokens_mean": _mean([float(r.completion_tokens) for r in rows]),
        "cost_per_answer": round(float(np.mean([r.cost for r in rows])), 8) if rows else 0.0,
        "tiers": dict(Counter(r.tier for r in rows)),
        "escalated": sum(1 for r in rows if ">" in r.route),
    }


def tiers_for(llm: LLMSettings | None) -> list[TierSettings]:
    """The extractive tier, plus the one model `llm` names."""
    tiers = [TierSettings(name=EXTRACTIVE, kind="extractive")]
    if llm is not None and llm.enabled:
        tiers.append(tier_from_llm(llm))
    return tiers


def answer_eval(
    dataset: BeirDataset,
    settings: IndexSettings,
    cache_dir: Path,
    llm: LLMSettings | None = None,
    limit: int | None = None,
    unanswerable: BeirDataset | None = None,
    rerank: RerankSettings | None = None,
    answer: AnswerSettings | None = None,
    tiers: list[TierSettings] | None = None,
    route: RouteSettings | None = None,
    label: str = "",
) -> dict[str, Any]:
    """Ask every judged question that has a reference answer (then the off-topic ones) and score the answers.

    `tiers` (default: extractive plus `llm`) answer under `route` (default: the top tier, always)."""
    references = reference_answers(dataset)
    if not references:
        raise ValueError(f"{dataset.path}: no query has metadata.answer; the answer eval needs reference answers")
    questions = [(qid, q, True) for qid, q in dataset.judged_queries.items() if qid in references][:limit]
    if unanswerable is not None:
        questions += [(f"off:{qid}", q, False) for qid, q in list(unanswerable.judged_queries.items())[:limit]]
    embedder = Embedder(settings.embedder)
    store = build_index(dataset, settings, cache_dir, embedder=embedder)
    configured = tiers or tiers_for(llm)
    built = build_tiers(configured, embedder.count_tokens)
    route = route or RouteSettings(policy=Policy.FIXED)
    service = AnswerService(
        Retriever(store, embedder, settings),
        embedder,
        Reranker(rerank or RerankSettings()),
        built,
        answer or AnswerSettings(),
        router=route,
    )
    models = [t.model for t in configured if t.kind == "openai"]
    generator = label or (f"{route.policy.value}:" + "+".join(models) if models else "extractive")

    async def run_all() -> list[AnswerRow]:
        rows = []
        for qid, question, answerable in questions:
            result, first_ms, total_ms = await _ask(service, question)
            relevant = set(dataset.qrels.get(qid, {})) if answerable else set()
            reference = references.get(qid, "")
            rows.append(
                AnswerRow(
                    qid=qid,
                    answerable=answerable,
                    answer=result.text,
                    abstained=result.abstained,
                    extractive=result.extractive,
                    fallback=result.fallback,
                    confidence=result.confidence,
                    f1=token_f1(result.text, reference) if answerable else 0.0,
                    rouge_l=rouge_l(result.text, reference) if answerable else 0.0,
                    cited=len(result.citations),
                    cited_relevant=sum(1 for c in result.citations if c.doc_id in relevant),
                    first_text_ms=first_ms,
                    total_ms=total_ms,
                    prompt_tokens=result.usage.prompt_tokens,
                    completion_tokens=result.usage.completion_tokens,
                    cost=result.usage.cost,
                    tier=result.usage.tier,
                    route=result.usage.route,
                )
            )
        for tier in built:
            if tier.llm is not None:
                await tier.llm.close()
        return rows

    try:
        rows = asyncio.run(run_all())
    finally:
        store.close()
    return {
        "dataset": dataset.path.name,
        "generator": generator,
        "tiers": [t.model_dump(exclude={"api_key"}) for t in configured],
        "routing": route.policy.value,
        "unanswerable_from": unanswerable.path.name if unanswerable is not None else None,
        "summary": summarise(rows),
        "answers": [asdict(r) for r in rows],
    }


def format_answers(results: list[dict[str, Any]]) -> str:
    cols = [
        ("answerable", "n"),
        ("token_f1", "F1"),
        ("rouge_l", "ROUGE-L"),
        ("citation_precision", "cite prec"),
        ("answers_with_citation", "cited"),
        ("false_abstention", "false abst"),
        ("unanswerable", "n off"),
        ("abstention_unanswerable", "abst off"),
        ("first_text_ms_p50", "TTFT p50"),
        ("total_ms_p50", "total p50"),
        ("total_ms_p95", "total p95"),
        ("completion_tokens_mean", "out tok"),
    ]
    header = "| dataset | generator | " + " | ".join(c[1] for c in cols) + " |"
    lines = [header, "|" + "---|" * (len(cols) + 2)]
    for r in results:
        s = r["summary"]
        lines.append(f"| {r['dataset']} | {r['generator']} | " + " | ".join(str(s[c[0]]) for c in cols) + " |")
    return "\n".join(lines)
