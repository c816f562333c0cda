"""An admin's ACL or tags set through the agent tools survive re-indexing: incremental (content unchanged or
edited), and a full rebuild into a new version, even one the admin acts during. A deleted file still goes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.agent_tools import DocumentAclInput, DocumentTagsInput
from ingestion.models import Document
from retrieval.embedder import Embedder
from retrieval.types import SearchMode
from tests.ingestion.indexing import HR, OUTSIDER, STACKS, STAFF, Stack, admin_context, stack, tag_corpus

SECURITY, VACATION = "docs:security.md", "docs:vacation-policy.md"
LAPTOP = "What do I do when my laptop is lost or stolen?"


@pytest.fixture(params=STACKS, ids=["-".join(s) for s in STACKS])
def env(request: pytest.FixtureRequest, tmp_path: Path, corpus: Path, embedder: Embedder) -> Iterator[Stack]:
    tag_corpus(corpus)
    with stack(tmp_path, corpus, embedder, *request.param) as made:
        made.ingest(acl=("staff", "hr"))
        yield made


def restrict_to_hr(env: Stack, doc_id: str = SECURITY) -> dict[str, object]:
    """What an admin's run does: set_document_acl to HR only."""
    tool, ctx = env.acl_tool(), admin_context()
    return tool.apply(DocumentAclInput(doc_id=doc_id, acl=["hr"]), ctx).undo


def test_an_hr_restricted_document_stays_hidden_from_staff_after_an_incremental_reindex(env: Stack) -> None:
    assert SECURITY in env.doc_ids(LAPTOP, STAFF)
    restrict_to_hr(env)
    assert SECURITY not in env.doc_ids(LAPTOP, STAFF) and env.doc_ids(LAPTOP, HR)[0] == SECURITY

    unchanged = env.ingest(acl=("staff", "hr"))  # the document did not change: only its payload is checked
    assert unchanged["chunks_embedded"] == 0
    assert SECURITY not in env.doc_ids(LAPTOP, STAFF)
    assert env.payload_labels(SECURITY) == {(("hr",), ())}

    security = env.corpus / "security.md"
    security.write_text(security.read_text() + "\nA stolen laptop is reported to the police as well.\n")
    edited = env.ingest(acl=("staff", "hr"))  # new content: re-embedded, and still HR only
    assert edited["chunks_embedded"] > 0
    for mode in SearchMode:
        assert SECURITY not in env.doc_ids(LAPTOP + " police", STAFF, mode), mode
    assert env.doc_ids("stolen laptop police", HR, SearchMode.BM25)[0] == SECURITY
    row = env.row(SECURITY)
    assert row.acl == ["hr"] and row.acl_override == ["hr"]


def test_an_hr_restricted_document_stays_hidden_from_staff_after_a_full_rebuild(env: Stack) -> None:
    restrict_to_hr(env)
    version = env.store.version
    result = env.rebuild()
    assert result["status"] == "succeeded" and env.store.version == version + 1
    for mode in SearchMode:
        assert SECURITY not in env.doc_ids(LAPTOP, STAFF, mode), mode
        assert SECURITY not in env.doc_ids(LAPTOP, OUTSIDER, mode), mode
    assert env.doc_ids(LAPTOP, HR)[0] == SECURITY
    assert env.row(SECURITY).acl_override == ["hr"]
    assert env.ingest(acl=("staff", "hr"))["chunks_embedded"] == 0  # and incremental jobs after it agree
    assert SECURITY not in env.doc_ids(LAPTOP, STAFF)


def test_an_override_set_while_a_rebuild_runs_reaches_the_new_version(
    env: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = env.pipeline._check_rebuild

    def admin_acts_then_check(run: object) -> None:  # every document is in the new version, not yet live
        restrict_to_hr(env)
        env.tags_tool().apply(DocumentTagsInput(doc_id=VACATION, tags=["archived"]), admin_context())
        check(run)  # type: ignore[arg-type]

    monkeypatch.setattr(env.pipeline, "_check_rebuild", admin_acts_then_check)
    assert env.rebuild()["status"] == "succeeded"
    assert SECURITY not in env.doc_ids(LAPTOP, STAFF)
    assert env.payload_labels(SECURITY) == {(("hr",), ())}
    assert env.payload_labels(VACATION) == {(("hr", "staff"), ("archived",))}
    assert env.doc_ids("vacation days", STAFF, SearchMode.HYBRID, ["leave"]) == []


def test_an_override_set_while_its_document_is_embedded_is_what_gets_indexed(
    env: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    security = env.corpus / "security.md"
    security.write_text(security.read_text() + "\nLaptops are engraved with an asset number.\n")
    embed = env.pipeline.embedder.embed_documents

    def admin_acts_during_embedding(texts: list[str]) -> object:
        if any("asset number" in t for t in texts):
            restrict_to_hr(env)  # after the document was prepared with the old ACL
        return embed(texts)

    monkeypatch.setattr(env.pipeline.embedder, "embed_documents", admin_acts_during_embedding)
    env.ingest(acl=("staff", "hr"))
    assert env.payload_labels(SECURITY) == {(("hr",), ())}
    assert SECURITY not in env.doc_ids("laptop asset number engraved", STAFF, SearchMode.BM25)


def test_a_document_deleted_from_its_source_is_deleted_whatever_its_overrides(env: Stack) -> None:
    restrict_to_hr(env)
    env.tags_tool().apply(DocumentTagsInput(doc_id=SECURITY, tags=["it"]), admin_context())
    (env.corpus / "security.md").unlink()
    assert env.ingest(acl=("staff", "hr"))["docs_deleted"] == 1
    assert env.store.count(SECURITY) == 0
    with env.pipeline.sessions() as db:
        assert db.get(Document, SECURITY) is None
    assert SECURITY not in env.doc_ids(LAPTOP, HR)


def test_undoing_the_acl_change_restores_no_override_so_the_source_decides_again(env: Stack) -> None:
    undo = restrict_to_hr(env)
    assert undo == {"doc_id": SECURITY, "before": ["hr", "staff"], "override_before": None}
    env.acl_tool().compensate(undo, admin_context())
    row = env.row(SECURITY)
    assert row.acl == ["hr", "staff"] and row.acl_override is None
    assert SECURITY in env.doc_ids(LAPTOP, STAFF)
    env.ingest(acl=("hr",))  # with no override, a change of the source's ACL applies to the document again
    assert SECURITY not in env.doc_ids(LAPTOP, STAFF) and env.row(SECURITY).acl == ["hr"]
