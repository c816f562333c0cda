"""Compression keeps the sentences that answer the question, within budget, cited to their exact spans."""

from __future__ import annotations

import pytest

from retrieval.compress import CompressedContext, compress, split_sentences
from retrieval.embedder import Embedder
from retrieval.types import Chunk, Hit

VACATION = (
    "## Carrying days over\n\n"
    "Up to five unused vacation days carry over into the next year. Carried-over days expire on March 31st.\n"
    "Days beyond the five are forfeited unless your manager agreed in writing that business needs prevented you\n"
    "from taking them."
)
SECURITY = (
    "Report a lost or stolen laptop to the security desk within one hour. The desk locks the device remotely.\n\n"
    "- Badges are personal. Do not lend them to visitors.\n"
    "- Visitors sign in at reception."
)
OFFICE = "The office opens at 8:00. Coffee is free on every floor. Up to five unused vacation days carry over."


def _hit(doc: str, text: str, start_char: int, rank: int, ordinal: int = 0) -> Hit:
    chunk = Chunk(
        doc_id=doc, source="s", ordinal=ordinal, text=text, content_hash="h", acl=("public",), title=doc.title(),
        path=f"/docs/{doc}.md", start_char=start_char, end_char=start_char + len(text),
    )  # fmt: skip
    return Hit(chunk, 1.0 - rank / 10)


HITS = [_hit("security", SECURITY, 0, 0), _hit("vacation", VACATION, 1200, 1, ordinal=3), _hit("office", OFFICE, 40, 2)]


def _compress(embedder: Embedder, query: str, budget: int, hits: list[Hit] = HITS) -> CompressedContext:
    return compress(
        query, hits, embedder.embed_documents, embedder.embed_query(query), embedder.count_tokens, budget_tokens=budget
    )


def test_splitter_offsets_point_at_the_sentence_and_skip_headings() -> None:
    spans = split_sentences(VACATION + "\n\n" + SECURITY)
    text = VACATION + "\n\n" + SECURITY
    assert all(text[s.start : s.end] == s.text for s in spans)
    assert [s.text[:20] for s in spans] == [
        "Up to five unused va", "Carried-over days ex", "Days beyond the five", "Report a lost or sto",
        "The desk locks the d", "Badges are personal.", "Do not lend them to ", "Visitors sign in at ",
    ]  # fmt: skip
    assert "Carrying days over" not in " ".join(s.text for s in spans)


def test_budget_holds_and_offsets_are_exact(embedder: Embedder) -> None:
    for budget in (5, 20, 40, 1000):
        ctx = _compress(embedder, "When do carried-over vacation days expire?", budget)
        kept = [s for _, sentences in ctx.passages for s in sentences]
        assert ctx.tokens_used <= budget
        assert ctx.tokens_used == sum(embedder.count_tokens(s.text) for s in kept)
        assert ctx.tokens_in == sum(embedder.count_tokens(h.chunk.text) for h in HITS)
        for hit, sentences in ctx.passages:
            chunk = hit.chunk
            for s in sentences:
                c = s.citation
                assert chunk.text[c.start_char - chunk.start_char : c.end_char - chunk.start_char] == s.text
                assert (c.doc_id, c.chunk, c.path, c.title) == (chunk.doc_id, chunk.ordinal, chunk.path, chunk.title)


def test_answer_sentence_survives_a_tight_budget(embedder: Embedder) -> None:
    ctx = _compress(embedder, "When do carried-over vacation days expire?", budget=16)
    texts = [s.text for s in ctx.citations]
    assert "Carried-over days expire on March 31st." in texts
    assert ctx.tokens_used <= 16 < ctx.tokens_in


def test_duplicates_dropped_and_order_kept(embedder: Embedder) -> None:
    ctx = _compress(embedder, "How many vacation days carry over into the next year?", budget=1000)
    texts = [s.text for s in ctx.citations]
    carry = [t for t in texts if "unused vacation days carry over" in t]
    assert len(carry) == 1, "the office passage repeats the vacation sentence"
    assert len(texts) == len(set(texts))
    # passages in rank order, sentences in document order within a passage
    ranks = [HITS.index(hit) for hit, _ in ctx.passages]
    assert ranks == sorted(ranks)
    for _, sentences in ctx.passages:
        starts = [s.citation.start_char for s in sentences]
        assert starts == sorted(starts)
    assert len(ctx.passages[0][1]) > 1


def test_nothing_to_keep() -> None:
    def never(texts: list[str]) -> None:
        pytest.fail("nothing to embed")

    empty = compress("q", [], never, [1.0, 0.0], len, budget_tokens=100)  # type: ignore[arg-type]
    assert (empty.passages, empty.tokens_used, empty.tokens_in) == ([], 0, 0)


def test_passage_rank_prior_decides_between_the_top_passage_and_the_best_sentence(embedder: Embedder) -> None:
    query = "When do carried-over vacation days expire?"
    vec = embedder.embed_query(query)

    def kept_from(prior: float) -> list[str]:
        ctx = compress(query, HITS, embedder.embed_documents, vec, embedder.count_tokens, 10, rank_prior=prior)
        return [hit.chunk.doc_id for hit, kept in ctx.passages if kept]

    # The security passage is ranked first but says nothing about vacation days.
    assert "security" not in kept_from(0.0), "without a prior the sentences that match win, whatever their rank"
    assert kept_from(10.0) == ["security"], "a strong prior fills the budget from the top-ranked passage first"
