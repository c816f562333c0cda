"""Training pairs for a reranker, mined from the indexed corpus itself: no labels, no hub.

A section heading (or title) points at its chunk; a chunk's first sentence points at the rest of the chunk.
Each pair gets negatives from other documents: hard ones from the engine's own search, random ones to fill.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import NamedTuple

from retrieval.compress import split_sentences
from retrieval.types import Chunk

log = logging.getLogger(__name__)

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
    n_hard: int = 1,
) -> list[MinedPair]:
    """Training pairs from the corpus structure, each with `n_negatives` passages of other documents.

    `n_hard` of them come from `negatives_for(query, k)`, the engine's top chunks for the query (BM25 and
    dense), those of the positive's own document dropped; random chunks of other documents fill the rest.
    Only hard negatives teach a model that shared words are not enough, only easy ones that they matter.
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
        for hit in negatives_for(query, n_hard * 3) if n_hard else []:
            if hit.doc_id != doc_id and hit.text != positive and hit.text not in negatives:
                negatives.append(hit.text)
            if len(negatives) == min(n_hard, n_negatives):
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
