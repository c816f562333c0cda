"""Citation markers in generated answers: valid ones renumbered in order of use, the rest removed."""

from __future__ import annotations

from app.citations import CitationFilter, attribute, resolve
from app.prompt import Passage
from retrieval.types import Citation


def passages(n: int) -> list[Passage]:
    return [
        Passage(i, f"passage {i}", Citation(f"doc-{i}", f"p{i}.md", f"Doc {i}", 0, f"passage {i}"))
        for i in range(1, n + 1)
    ]


def test_a_streamed_answer_keeps_only_markers_that_point_at_a_passage() -> None:
    f = CitationFilter(passages(3))
    pieces = ["You get 25 days", " [", "3", "]", " a year. Unused days expire [", "9", "].", " See [2, 3]", "[1]."]
    released = [f.feed(p) for p in pieces]
    text = "".join(released) + f.flush()
    assert text == "You get 25 days [1] a year. Unused days expire. See [2][1][3]."
    # numbering follows first use, so the answer's [1] is the first entry in the citation list
    assert [p.number for p in f.cited] == [3, 2, 1]
    # a marker is never released half-written
    assert all("[" not in r or "]" in r for r in released)


def test_text_that_only_looks_like_a_marker_is_left_alone() -> None:
    text, cited = resolve("Use arrays like a[i] or [optional] flags [1].", passages(1))
    assert text == "Use arrays like a[i] or [optional] flags [1]."
    assert [p.citation.doc_id for p in cited] == ["doc-1"]


def test_an_answer_with_no_valid_marker_cites_nothing() -> None:
    text, cited = resolve("It is 42 [7].", passages(2))
    assert (text, cited) == ("It is 42.", [])


def test_an_answer_the_model_left_uncited_gets_each_sentence_matched_to_its_passage(embedder) -> None:  # type: ignore[no-untyped-def]
    found = [
        Passage(
            1, "Up to five unused vacation days carry over; they expire on March 31st.", Citation("v", "", "", 0, "")
        ),
        Passage(2, "Expense reports must be filed within thirty days.", Citation("e", "", "", 0, "")),
    ]
    text, cited = attribute(
        "Expense reports are due within thirty days. Carried-over days expire on March 31st. Have a nice day!",
        found,
        embedder.embed_documents,
        min_similarity=0.45,
    )
    assert text == (
        "Expense reports are due within thirty days [1]. Carried-over days expire on March 31st [2]. Have a nice day!"
    )
    assert [p.citation.doc_id for p in cited] == ["e", "v"]
