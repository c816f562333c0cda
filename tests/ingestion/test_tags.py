"""Document tags from front matter, through the real pipeline into SQL and every chunk's payload, and the tag
filter on what comes back (Edge and server backends; SQLite and PostgreSQL)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from app.db import init_db
from ingestion import catalog
from retrieval.embedder import Embedder
from retrieval.types import SearchMode
from tests.conftest import SAMPLE
from tests.ingestion.indexing import HR, OUTSIDER, STACKS, Stack, stack, tag_corpus

VACATION, SALARY, SECURITY = "docs:vacation-policy.md", "docs:salary-bands.md", "docs:security.md"


@pytest.fixture(params=STACKS, ids=["-".join(s) for s in STACKS])
def env(request: pytest.FixtureRequest, tmp_path: Path, corpus: Path, embedder: Embedder) -> Iterator[Stack]:
    tag_corpus(corpus)
    with stack(tmp_path, corpus, embedder, *request.param) as made:
        yield made


@pytest.fixture(scope="module", params=STACKS, ids=["-".join(s) for s in STACKS])
def indexed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, embedder: Embedder
) -> Iterator[Stack]:
    """The tagged sample corpus indexed once per stack, for the tests that only read it."""
    root = tmp_path_factory.mktemp("tags-indexed")
    shutil.copytree(SAMPLE, root / "corpus")
    tag_corpus(root / "corpus")
    with stack(root, root / "corpus", embedder, *request.param) as made:
        result = made.ingest()
        assert result["status"] == "succeeded" and result["docs_failed"] == 0, result
        yield made


def test_front_matter_tags_are_stored_indexed_and_returned_with_each_hit(indexed: Stack) -> None:
    env = indexed
    assert env.row(VACATION).tags == ["leave", "policy"]  # lowercased and sorted
    assert env.row(SALARY).tags == ["leave", "pay"]  # from the string form `tags: pay, leave`
    assert env.row(SECURITY).tags == []
    assert env.payload_labels(VACATION) == {(("public",), ("leave", "policy"))}
    assert env.payload_labels(SALARY) == {(("hr",), ("leave", "pay"))}
    hit = env.retriever.search("How many vacation days do I get per year?", OUTSIDER, SearchMode.HYBRID, 3)[0]
    assert hit.chunk.doc_id == VACATION and hit.chunk.tags == ("leave", "policy")
    assert hit.citation.tags == ("leave", "policy")


@pytest.mark.parametrize("mode", list(SearchMode))
def test_the_tag_filter_narrows_to_tagged_documents_and_never_widens_the_acl(indexed: Stack, mode: SearchMode) -> None:
    env = indexed
    question = "vacation days salary range"
    assert env.doc_ids(question, OUTSIDER, mode, ["leave"]) == [VACATION]
    assert env.doc_ids(question, OUTSIDER, mode, ["pay"]) == []  # only the HR document is tagged `pay`
    assert env.doc_ids(question, OUTSIDER, mode, ["PAY"]) == []
    assert sorted(env.doc_ids(question, HR, mode, ["leave"])) == [SALARY, VACATION]
    assert env.doc_ids(question, HR, mode, ["pay"]) == [SALARY]


def test_a_bad_tag_in_front_matter_fails_its_document_and_says_what_is_allowed(env: Stack) -> None:
    office = env.corpus / "expenses.md"
    office.write_text("---\ntags: [travel, not a tag!]\n---\n" + office.read_text())
    result = env.ingest()
    assert result["docs_failed"] == 1 and result["docs_done"] == 5
    with env.pipeline.sessions() as db:
        failures = {f["path"]: f["reason"] for f in catalog.job_failures(db, str(result["id"]))}
    assert "invalid tag 'not a tag!'" in failures["expenses.md"]
    assert "letters, digits and _ . : -" in failures["expenses.md"]


def test_tags_come_back_after_a_full_rebuild(env: Stack) -> None:
    env.ingest()
    version = env.store.version
    assert env.rebuild()["status"] == "succeeded" and env.store.version == version + 1
    assert env.row(VACATION).tags == ["leave", "policy"]
    assert env.doc_ids("vacation days", OUTSIDER, SearchMode.HYBRID, ["policy"]) == [VACATION]


def test_validate_tags_lowercases_deduplicates_and_refuses_what_it_cannot_match() -> None:
    assert catalog.validate_tags(["HR", " hr ", "q3-2026", "team:eng", ""]) == ["hr", "q3-2026", "team:eng"]
    assert catalog.validate_tags([]) == []
    for bad in ["two words", "-leading", "ümlaut", "x" * 65]:
        with pytest.raises(catalog.CatalogError) as refused:
            catalog.validate_tags([bad])
        assert refused.value.field == "tags" and "letters, digits" in str(refused.value)


def test_a_documents_table_from_before_tags_is_upgraded_in_place(env: Stack) -> None:
    env.ingest()
    env.store.set_tags(VACATION, [])  # as points indexed before tags existed: no tag matches them
    assert env.doc_ids("vacation days", OUTSIDER, SearchMode.HYBRID, ["policy"]) == []
    engine = env.pipeline.sessions.kw["bind"]
    with engine.begin() as conn:
        for column in ("tags", "acl_override", "tags_override"):  # as the previous version created the table
            conn.execute(text(f"ALTER TABLE documents DROP COLUMN {column}"))
    upgraded = init_db(engine.url.render_as_string(hide_password=False))
    env.pipeline.sessions = upgraded
    try:
        row = env.row(VACATION)
        assert row.tags is None and row.acl_override is None and row.tags_override is None  # old rows read NULL
        again = env.ingest()  # unchanged documents: the tags reach SQL and the payload without embedding
        assert again["chunks_embedded"] == 0 and env.row(VACATION).tags == ["leave", "policy"]
        assert env.doc_ids("vacation days", OUTSIDER, SearchMode.HYBRID, ["policy"]) == [VACATION]
    finally:
        upgraded.kw["bind"].dispose()
