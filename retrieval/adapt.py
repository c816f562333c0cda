"""`kb adapt`: train a cross-encoder reranker on pairs mined from the indexed corpus itself.

No trained cross-encoder ships in any package (see /work/shared/MODELS.md), so one is fine-tuned here from the
packaged all-MiniLM-L6-v2 weights: its encoder is kept and a fresh one-logit classification head is learned.
Training pairs come from the corpus structure — a section heading or title points at its chunk, a chunk's
first sentence points at the rest of the chunk — with BM25/dense hard and random negatives from other documents
(retrieval/mining.py), learned listwise. The new model replaces the current ranking only if it ranks a
held-back slice of mined pairs (split by document) better.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.mining import MinedPair, NegativesFor, mine_pairs, split_holdout
from retrieval.rerank import fit_calibration, write_calibration
from retrieval.types import Chunk

if TYPE_CHECKING:
    from retrieval.embedder import TextEmbedder

log = logging.getLogger(__name__)

Scorer = Callable[[list[tuple[str, str]]], list[float]]


@contextmanager
def _quiet_loading() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def train_cross_encoder(
    pairs: list[MinedPair],
    base_model: str,
    out_dir: Path,
    time_budget_s: float,
    groups_per_batch: int = 4,
    epochs: int = 1,
    progress: Callable[[float], None] | None = None,
    lr: float = 4e-5,
    head_lr: float = 1e-3,
    max_length: int = 128,
    seed: int = 0,
    frozen_layers: int = 0,
    num_layers: int = 0,
) -> dict[str, Any]:
    """Fine-tune a one-logit cross-encoder from `base_model` with a listwise softmax loss, within a time budget.

    Saves into `out_dir` (loadable with `CrossEncoder(str(out_dir))`) and returns what the training did.
    `progress` gets the fraction done (0..1).
    The fresh head learns at `head_lr`; the encoder at `lr`, warmed up and then decayed with elapsed time.
    `frozen_layers` keeps the embeddings and that many lower layers fixed: fewer gradients, more steps per second.
    `num_layers` (0: all) keeps only the base's lower layers, a smaller and faster reranker (as MiniLM-L2 is).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not pairs:
        raise ValueError("no training pairs: index some documents with headings or multi-sentence passages first")
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    extra: dict[str, Any] = {"num_hidden_layers": num_layers} if num_layers > 0 else {}
    with _quiet_loading():  # the fresh head is expected: no "newly initialized" report on the console
        model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1, **extra)
    group_size = 1 + min(len(p.negative_texts) for p in pairs)
    groups = [MinedPair(p.query, p.positive_text, p.negative_texts[: group_size - 1], p.doc_id) for p in pairs]
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(groups) / groups_per_batch)
    total_steps = steps_per_epoch * epochs
    warmup = max(1, min(20, total_steps // 10))
    frozen = ("embeddings.", *(f"encoder.layer.{i}." for i in range(frozen_layers))) if frozen_layers else ()
    for name, param in model.named_parameters():
        param.requires_grad = not any(f".{prefix}" in f".{name}" for prefix in frozen)
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier") and p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": head_lr}], weight_decay=0.01)
    base_lrs = [lr, head_lr]
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    step = 0
    seen = 0
    last_loss = float("nan")
    stopped = False
    for _ in range(epochs):
        rng.shuffle(groups)
        for i in range(0, len(groups), groups_per_batch):
            elapsed = time.perf_counter() - start
            if elapsed >= time_budget_s:
                stopped = True
                break
            done = max(step / total_steps, elapsed / time_budget_s)
            scale = min(1.0, (step + 1) / warmup) * max(0.05, 1.0 - done)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * scale
            batch = groups[i : i + groups_per_batch]
            queries = [p.query for p in batch for _ in range(group_size)]
            texts = [t for p in batch for t in [p.positive_text, *p.negative_texts]]
            enc = tokenizer(
                queries,
                texts,
                truncation="longest_first",  # a long heading must not fail a short max_length
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            # Listwise: each query's positive competes with its own negatives in one softmax (column 0 is the
            # positive), which learns ranking directly instead of absolute relevance per pair.
            logits = model(**enc).logits.view(len(batch), group_size)
            loss = loss_fn(logits, torch.zeros(len(batch), dtype=torch.long))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            seen += len(texts)
            last_loss = float(loss.item())
            log.debug("adapt.step step=%d loss=%.4f", step, last_loss)
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
    return {
        "steps": step,
        "pairs_seen": seen,
        "seconds": round(elapsed, 1),
        "pairs_per_second": round(seen / elapsed, 2) if elapsed > 0 else 0.0,
        "budget_hit": stopped,
        "final_loss": round(last_loss, 4),
    }


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

    with _quiet_loading():
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


@dataclass(frozen=True)
class AdaptSettings:
    """How `adapt` mines, trains and compares; the time budget bounds the training loop."""

    time_budget_s: float = 600.0
    max_pairs: int = 3000
    n_negatives: int = 3
    n_hard: int = 1  # engine (BM25 + dense) negatives per pair; the rest are random chunks of other documents
    holdout_fraction: float = 0.2
    min_holdout: int = 10  # fewer held-back pairs cannot tell a better model from luck
    max_length: int = 160  # word pieces per (query, passage) pair in training and in the comparison
    num_layers: int = 2  # keep the base's lower layers only: 3x faster to train and to serve than all six
    groups_per_batch: int = 8
    seed: int = 0


ACTIVE_POINTER = "ACTIVE"  # names the folder of the reranker in use, inside the models folder


def active_reranker(models_dir: Path) -> Path | None:
    """The reranker `adapt` last promoted in `models_dir`, or None."""
    pointer = Path(models_dir) / ACTIVE_POINTER
    if not pointer.is_file():
        return None
    folder = Path(models_dir) / pointer.read_text().strip()
    return folder if (folder / "config.json").is_file() else None


def _promote(models_dir: Path, folder: Path) -> None:
    """Point ACTIVE at `folder` atomically (write a temp file, rename it over the pointer)."""
    tmp = models_dir / f".{ACTIVE_POINTER}.tmp"
    tmp.write_text(folder.name + "\n")
    tmp.replace(models_dir / ACTIVE_POINTER)


def _prune(models_dir: Path, keep: set[Path]) -> None:
    """Remove earlier rerankers that are neither active nor the newest candidate."""
    for folder in models_dir.glob("reranker-*"):
        if folder.is_dir() and folder not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def adapt(
    chunks: list[Chunk],
    negatives_for: NegativesFor,
    base_model: str,
    models_dir: Path,
    settings: AdaptSettings = AdaptSettings(),
    current: Scorer | None = None,
    embedder: TextEmbedder | None = None,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Mine, train, compare on held-back pairs; the new model becomes the active reranker only if its MRR is higher.

    `current` scores with the configured reranker; without one, the embedder's cosine is the ranking to beat.
    The trained candidate stays in `models_dir` either way (`candidate_path`), so it can be inspected.
    """
    started = time.perf_counter()
    if current is None:
        if embedder is None:
            raise ValueError("adapt needs the current reranker's scorer or the embedder to compare against")
        current = cosine_scorer(embedder)
    s = settings
    pairs = mine_pairs(
        chunks, negatives_for, rng_seed=s.seed, max_pairs=s.max_pairs, n_negatives=s.n_negatives, n_hard=s.n_hard
    )
    train, holdout = split_holdout(pairs, s.holdout_fraction, s.seed)
    if not train or len(holdout) < s.min_holdout:
        raise ValueError(
            f"too few mined pairs to train and compare ({len(pairs)} from {len(chunks)} chunks, {len(holdout)} "
            f"held back; at least {s.min_holdout} are needed to judge a model): index more documents, with "
            "headings or multi-sentence passages"
        )
    before = evaluate_ranking(current, holdout)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    candidate = models_dir / f"reranker-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    trained = train_cross_encoder(
        train,
        base_model,
        candidate,
        s.time_budget_s,
        groups_per_batch=s.groups_per_batch,
        epochs=100,
        progress=progress,
        max_length=s.max_length,
        seed=s.seed,
        num_layers=s.num_layers,
    )
    candidate_scorer = cross_encoder_scorer(str(candidate), s.max_length)
    logits: list[float] = []

    def recording(pairs: list[tuple[str, str]]) -> list[float]:
        scores = candidate_scorer(pairs)
        logits.extend(scores)
        return scores

    after = evaluate_ranking(recording, holdout)
    # The confidence later stages route and abstain on: Platt scaling fitted on the held-back pairs' logits.
    labels = [int(i == 0) for p in holdout for i in range(1 + len(p.negative_texts))]
    scale, bias = fit_calibration(logits, labels)
    write_calibration(candidate, scale, bias, len(labels))
    replaced = after["mrr"] > before["mrr"]
    if replaced:
        _promote(models_dir, candidate)
    active = active_reranker(models_dir)
    _prune(models_dir, {candidate, *([active] if active else [])})
    report = {
        "pairs": len(train),
        "holdout": len(holdout),
        "minutes": round((time.perf_counter() - started) / 60.0, 2),
        "training": trained,
        "before": before,
        "after": after,
        "calibration": {"scale": round(scale, 4), "bias": round(bias, 4)},
        "replaced": replaced,
        "model_path": str(candidate) if replaced else None,
        "candidate_path": str(candidate),
        "active_path": str(active) if active else None,
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
