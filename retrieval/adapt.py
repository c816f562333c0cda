"""`kb adapt`: train a cross-encoder reranker on pairs mined from the indexed corpus itself.

No trained cross-encoder ships in any package (see /work/shared/MODELS.md), so one is fine-tuned here from the
packaged all-MiniLM-L6-v2 weights: its encoder is kept and a fresh one-logit classification head is learned.
Training pairs come from the corpus structure — a section heading or title points at its chunk, a chunk's
first sentence points at the rest of the chunk — with BM25/dense hard negatives from other documents. The new
model replaces the current ranking only if it ranks a held-back slice of mined pairs (split by document) better.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from retrieval.compress import split_sentences
from retrieval.types import Chunk

if TYPE_CHECKING:
    from retrieval.embedder import TextEmbedder

log = logging.getLogger(__name__)

Scorer = Callable[[list[tuple[str, str]]], list[float]]
NegativesFor = Callable[[str, int], list[Chunk]]

_HEADING_PREFIX_CHARS = 200  # a heading already in the chunk's opening is a trivial query
_MIN_QUERY_WORDS = 5
_MIN_REST_WORDS = 8


class MinedPair(NamedTuple):
    """A query, the passage it came from, hard negatives from other documents, and the positive's document."""

    query: str
    positive_text: str
    negative_texts: list[str]
    doc_id: str


def _queries_for(chunk: Chunk) -> list[tuple[str, str]]:
    """(query, positive passage) pairs a chunk yields: heading → text, first sentence → rest of the text."""
    text = chunk.text.strip()
    out: list[tuple[str, str]] = []
    heading = (chunk.section or chunk.title).strip().lstrip("#").strip()
    if heading and heading.lower() not in text[:_HEADING_PREFIX_CHARS].lower():
        out.append((heading, text))
    sentences = split_sentences(chunk.text)
    if len(sentences) >= 2:
        first = sentences[0].text
        rest = chunk.text[sentences[1].start :].strip()
        if len(first.split()) >= _MIN_QUERY_WORDS and len(rest.split()) >= _MIN_REST_WORDS:
            out.append((first, rest))
    return out


def mine_pairs(
    chunks: list[Chunk],
    negatives_for: NegativesFor,
    rng_seed: int = 0,
    max_pairs: int = 2000,
    n_negatives: int = 3,
) -> list[MinedPair]:
    """Training pairs from the corpus structure, each with `n_negatives` passages of other documents.

    `negatives_for(query, k)` returns the engine's top chunks for the query (BM25 and dense); those of the
    positive's own document are dropped, and random chunks of other documents fill any shortfall.
    """
    rng = random.Random(rng_seed)
    candidates: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for chunk in chunks:
        for query, positive in _queries_for(chunk):
            key = query.lower()
            if key not in seen:  # a heading shared by several chunks is ambiguous: keep its first chunk only
                seen.add(key)
                candidates.append((query, positive, chunk.doc_id))
    rng.shuffle(candidates)
    candidates = candidates[:max_pairs]
    pairs: list[MinedPair] = []
    for query, positive, doc_id in candidates:
        negatives: list[str] = []
        for hit in negatives_for(query, n_negatives * 3):
            if hit.doc_id != doc_id and hit.text != positive and hit.text not in negatives:
                negatives.append(hit.text)
            if len(negatives) == n_negatives:
                break
        others = [c for c in chunks if c.doc_id != doc_id]
        attempts = 0
        while len(negatives) < n_negatives and others and attempts < 10 * n_negatives:
            attempts += 1
            text = rng.choice(others).text
            if text not in negatives:
                negatives.append(text)
        if negatives:
            pairs.append(MinedPair(query, positive, negatives, doc_id))
    log.info("adapt.mined chunks=%d pairs=%d", len(chunks), len(pairs))
    return pairs


def split_holdout(
    pairs: list[MinedPair], fraction: float = 0.2, seed: int = 0
) -> tuple[list[MinedPair], list[MinedPair]]:
    """(train, holdout) split by document, so no document has pairs on both sides."""
    docs = sorted({p.doc_id for p in pairs})
    random.Random(seed).shuffle(docs)
    target = fraction * len(pairs)
    held: set[str] = set()
    count = 0
    for doc in docs[:-1]:  # the last document always stays in training
        if count >= target:
            break
        held.add(doc)
        count += sum(1 for p in pairs if p.doc_id == doc)
    return [p for p in pairs if p.doc_id not in held], [p for p in pairs if p.doc_id in held]


def _examples(pairs: Sequence[MinedPair]) -> list[tuple[str, str, float]]:
    out: list[tuple[str, str, float]] = []
    for p in pairs:
        out.append((p.query, p.positive_text, 1.0))
        out.extend((p.query, neg, 0.0) for neg in p.negative_texts)
    return out


def train_cross_encoder(
    pairs: list[MinedPair],
    base_model: str,
    out_dir: Path,
    time_budget_s: float,
    batch_size: int = 16,
    epochs: int = 1,
    progress: Callable[[float], None] | None = None,
    lr: float = 4e-5,
    head_lr: float = 1e-3,
    max_length: int = 128,
    seed: int = 0,
    frozen_layers: int = 0,
) -> Path:
    """Fine-tune a one-logit cross-encoder from `base_model` with BCE, stopping when the time budget is spent.

    Returns `out_dir`, loadable with `CrossEncoder(str(out_dir))`. `progress` gets the fraction done (0..1).
    The fresh head learns at `head_lr`; the encoder at `lr`, warmed up and then decayed with elapsed time.
    `frozen_layers` keeps the embeddings and that many lower layers fixed: fewer gradients, more steps per second.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not pairs:
        raise ValueError("no training pairs: index some documents with headings or multi-sentence passages first")
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1)
    examples = _examples(pairs)
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total_steps = steps_per_epoch * epochs
    warmup = max(1, min(20, total_steps // 10))
    frozen = ("embeddings.", *(f"encoder.layer.{i}." for i in range(frozen_layers))) if frozen_layers else ()
    for name, param in model.named_parameters():
        param.requires_grad = not any(f".{prefix}" in f".{name}" for prefix in frozen)
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier") and p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": head_lr}], weight_decay=0.01)
    base_lrs = [lr, head_lr]
    n_neg = max(1, round(sum(len(p.negative_texts) for p in pairs) / len(pairs)))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(n_neg)))  # one positive per n_neg negatives
    model.train()
    start = time.perf_counter()
    step = 0
    seen = 0
    stopped = False
    for _ in range(epochs):
        rng.shuffle(examples)
        for i in range(0, len(examples), batch_size):
            elapsed = time.perf_counter() - start
            if elapsed >= time_budget_s:
                stopped = True
                break
            done = max(step / total_steps, elapsed / time_budget_s)
            scale = min(1.0, (step + 1) / warmup) * max(0.05, 1.0 - done)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * scale
            batch = examples[i : i + batch_size]
            enc = tokenizer(
                [q for q, _, _ in batch],
                [t for _, t, _ in batch],
                truncation="longest_first",  # a long heading must not fail a short max_length
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            logits = model(**enc).logits.view(-1)
            loss = loss_fn(logits, torch.tensor([y for _, _, y in batch], dtype=torch.float32))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            seen += len(batch)
            log.debug("adapt.step step=%d loss=%.4f", step, loss.item())
            if progress is not None:
                progress(min(1.0, max(step / total_steps, (time.perf_counter() - start) / time_budget_s)))
        if stopped:
            break
    elapsed = time.perf_counter() - start
    log.info(
        "adapt.trained steps=%d examples=%d seconds=%.1f pairs_per_second=%.1f budget_hit=%s",
        step,
        seen,
        elapsed,
        seen / elapsed if elapsed > 0 else 0.0,
        stopped,
    )
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def evaluate_ranking(scorer: Scorer, holdout: Sequence[MinedPair]) -> dict[str, float]:
    """MRR and accuracy@1 of the positive among its negatives, plus the chance MRR for comparison."""
    if not holdout:
        return {"mrr": 0.0, "accuracy_at_1": 0.0, "chance_mrr": 0.0, "queries": 0}
    flat: list[tuple[str, str]] = []
    for p in holdout:
        flat.append((p.query, p.positive_text))
        flat.extend((p.query, neg) for neg in p.negative_texts)
    scores = scorer(flat)
    rr: list[float] = []
    chance: list[float] = []
    cursor = 0
    for p in holdout:
        n = 1 + len(p.negative_texts)
        group = scores[cursor : cursor + n]
        cursor += n
        # Ties count against the positive: a constant scorer must not look perfect.
        rank = 1 + sum(1 for s in group[1:] if s >= group[0])
        rr.append(1.0 / rank)
        chance.append(sum(1.0 / r for r in range(1, n + 1)) / n)
    return {
        "mrr": float(np.mean(rr)),
        "accuracy_at_1": float(np.mean([r == 1.0 for r in rr])),
        "chance_mrr": float(np.mean(chance)),
        "queries": len(holdout),
    }


def cross_encoder_scorer(model_path: str, max_length: int = 128, batch_size: int = 16) -> Scorer:
    """Raw logits of a local CrossEncoder folder (a trained reranker, or the base weights with a random head)."""
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(model_path, num_labels=1, max_length=max_length, device="cpu")

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        logits = model.predict(
            pairs,
            batch_size=batch_size,
            activation_fn=torch.nn.Identity(),
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return [float(x) for x in np.asarray(logits).reshape(-1)]

    return score


def cosine_scorer(embedder: TextEmbedder) -> Scorer:
    """The embedder's cosine similarity: the current ranking when no reranker is configured yet."""

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        queries = sorted({q for q, _ in pairs})
        texts = sorted({t for _, t in pairs})
        qv = dict(zip(queries, _unit(embedder.embed_documents(queries)), strict=True))
        tv = dict(zip(texts, _unit(embedder.embed_documents(texts)), strict=True))
        return [float(qv[q] @ tv[t]) for q, t in pairs]

    return score


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12))


def adapt(
    chunks: list[Chunk],
    negatives_for: NegativesFor,
    base_model: str,
    out_dir: Path,
    time_budget_s: float,
    current: Scorer | None = None,
    embedder: TextEmbedder | None = None,
    holdout_fraction: float = 0.2,
    max_pairs: int = 2000,
    seed: int = 0,
    max_length: int = 128,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Mine, train, compare on held-back pairs; the new model lands in `out_dir` only if its MRR is higher.

    `current` scores with the configured reranker; without one, the embedder's cosine is the ranking to beat.
    """
    started = time.perf_counter()
    if current is None:
        if embedder is None:
            raise ValueError("adapt needs the current reranker's scorer or the embedder to compare against")
        current = cosine_scorer(embedder)
    pairs = mine_pairs(chunks, negatives_for, rng_seed=seed, max_pairs=max_pairs)
    train, holdout = split_holdout(pairs, holdout_fraction, seed)
    if not train or not holdout:
        raise ValueError(
            f"too few mined pairs to train and compare ({len(pairs)} from {len(chunks)} chunks): index more "
            "documents, with headings or multi-sentence passages"
        )
    before = evaluate_ranking(current, holdout)
    untrained = evaluate_ranking(cross_encoder_scorer(base_model, max_length), holdout)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    candidate = Path(tempfile.mkdtemp(prefix=".adapt-", dir=out_dir.parent))
    try:
        train_cross_encoder(
            train, base_model, candidate, time_budget_s, epochs=100, progress=progress, max_length=max_length, seed=seed
        )
        after = evaluate_ranking(cross_encoder_scorer(str(candidate), max_length), holdout)
        replaced = after["mrr"] > before["mrr"]
        if replaced:
            if out_dir.exists():
                shutil.rmtree(out_dir)
            candidate.rename(out_dir)
    finally:
        shutil.rmtree(candidate, ignore_errors=True)
    report = {
        "pairs": len(train),
        "holdout": len(holdout),
        "minutes": round((time.perf_counter() - started) / 60.0, 2),
        "before": before,
        "after": after,
        "untrained": untrained,
        "replaced": replaced,
        "model_path": str(out_dir) if replaced else None,
    }
    log.info(
        "adapt.done pairs=%d holdout=%d mrr_before=%.3f mrr_after=%.3f replaced=%s",
        len(train),
        len(holdout),
        before["mrr"],
        after["mrr"],
        replaced,
    )
    return report
