"""Document tags as users and admins meet them: the set_document_tags tool (plan, apply, undo) on the real
pipeline, and over HTTP on a real `kb serve` (Redis DB 3): search and answers filtered by tags, tags on every
hit and citation, and admin runs whose ACL and tags outlive a re-index."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.agent_tools import DocumentTagsInput, SetDocumentTags, builtin_tools
from ingestion import catalog
from retrieval.embedder import Embedder
from retrieval.types import SearchMode
from tests.conftest import SAMPLE, Server, index_corpus, make_key, redis_db_url, start_server, wait_job
from tests.ingestion.indexing import OUTSIDER, STACKS, Stack, admin_context, stack, tag_corpus

VACATION, SECURITY = "docs:vacation-policy.md", "docs:security.md"


@pytest.fixture(params=STACKS, ids=["-".join(s) for s in STACKS])
def env(request: pytest.FixtureRequest, tmp_path: Path, corpus: Path, embedder: Embedder) -> Iterator[Stack]:
    tag_corpus(corpus)
    with stack(tmp_path, corpus, embedder, *request.param) as made:
        made.ingest()
        yield made


def tag(env: Stack, doc_id: str, tags: list[str]) -> dict[str, Any]:
    return env.tags_tool().apply(DocumentTagsInput(doc_id=doc_id, tags=tags), admin_context()).undo


def test_set_document_tags_plans_applies_survives_a_reindex_and_is_undone_exactly(env: Stack) -> None:
    tool, ctx = env.tags_tool(), admin_context()
    step = DocumentTagsInput(doc_id=VACATION, tags=["Archived", "leave"])
    plan = tool.plan(step, ctx)
    assert plan.details == {"before": ["leave", "policy"], "after": ["archived", "leave"]}
    row = env.row(VACATION)  # the plan changed nothing
    assert row.tags == ["leave", "policy"] and row.tags_override is None
    assert env.payload_labels(VACATION) == {(("public",), ("leave", "policy"))}

    applied = tool.apply(step, ctx)
    assert applied.result == {"doc_id": VACATION, "tags": ["archived", "leave"]}
    assert applied.undo == {"doc_id": VACATION, "before": ["leave", "policy"], "override_before": None}
    row = env.row(VACATION)
    assert row.tags == ["archived", "leave"] and row.tags_override == ["archived", "leave"]
    assert env.payload_labels(VACATION) == {(("public",), ("archived", "leave"))}
    assert env.doc_ids("vacation days", OUTSIDER, SearchMode.HYBRID, ["archived"]) == [VACATION]
    assert env.doc_ids("vacation days", OUTSIDER, SearchMode.HYBRID, ["policy"]) == []

    assert env.ingest()["chunks_embedded"] == 0  # front matter still says [Leave, policy]: the override wins
    assert env.payload_labels(VACATION) == {(("public",), ("archived", "leave"))}
    assert tool.apply(step, ctx).undo["override_before"] == ["archived", "leave"]  # idempotent

    tool.compensate(applied.undo, ctx)
    row = env.row(VACATION)
    assert row.tags == ["leave", "policy"] and row.tags_override is None
    assert env.payload_labels(VACATION) == {(("public",), ("leave", "policy"))}
    env.ingest()
    assert env.row(VACATION).tags == ["leave", "policy"]


def test_an_undo_restores_the_override_that_was_there_before(env: Stack) -> None:
    tag(env, SECURITY, ["it"])
    second = tag(env, SECURITY, [])  # an empty list removes every tag, and keeps that through re-indexes
    assert second == {"doc_id": SECURITY, "before": ["it"], "override_before": ["it"]}
    assert env.row(SECURITY).tags == [] and env.row(SECURITY).tags_override == []
    env.tags_tool().compensate(second, admin_context())
    assert env.row(SECURITY).tags_override == ["it"] and env.payload_labels(SECURITY) == {(("public",), ("it",))}


def test_set_document_tags_refuses_bad_tags_and_unknown_documents_at_plan_time(env: Stack) -> None:
    tool, ctx = env.tags_tool(), admin_context()
    with pytest.raises(catalog.CatalogError) as bad:
        tool.plan(DocumentTagsInput(doc_id=VACATION, tags=["two words"]), ctx)
    assert bad.value.field == "tags" and "letters, digits" in str(bad.value)
    with pytest.raises(catalog.NotFound):
        tool.plan(DocumentTagsInput(doc_id="docs:nope.md", tags=["x"]), ctx)
    assert env.row(VACATION).tags_override is None


def test_set_document_tags_is_a_registered_admin_write(tmp_path: Path) -> None:
    tools = {t.name: t for t in builtin_tools(None, None, None, lambda _: None, tmp_path, [])}  # type: ignore[arg-type]
    tool = tools["set_document_tags"]
    assert isinstance(tool, SetDocumentTags)
    assert (tool.scope, tool.effect, tool.idempotent) == ("admin", "write", True)
    assert [(t.kind, t.id) for t in tool.targets(DocumentTagsInput(doc_id=VACATION, tags=[]))] == [
        ("document", VACATION)
    ]


# -- over HTTP -----------------------------------------------------------------------------------------------

HANDBOOK_VACATION, HANDBOOK_SALARY = "handbook:vacation-policy.md", "handbook:salary-bands.md"
HANDBOOK_SECURITY = "handbook:security.md"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("document-tags")
    corpus = root / "corpus"
    shutil.copytree(SAMPLE, corpus)
    tag_corpus(corpus)
    srv = start_server(root / "data", redis_db_url(3))
    try:
        index_corpus(srv, corpus)
        yield srv
    finally:
        srv.stop()


def search(client: httpx.Client, query: str, **body: Any) -> list[dict[str, Any]]:
    resp = client.post("/v1/search", json={"query": query, "top_k": 10, **body})
    assert resp.status_code == 200, resp.text
    hits: list[dict[str, Any]] = resp.json()["hits"]
    return hits


def test_a_search_filtered_by_tags_returns_only_tagged_documents_the_caller_may_read(server: Server) -> None:
    question = "vacation days salary range"
    with server.client(make_key(server, "vera")) as anyone, server.client(make_key(server, "hal", "hr")) as hr:
        hits = search(anyone, question, tags=["LEAVE"])
        assert [h["doc_id"] for h in hits] == [HANDBOOK_VACATION]
        assert hits[0]["tags"] == ["leave", "policy"] and hits[0]["citation"]["tags"] == ["leave", "policy"]
        assert search(anyone, question, tags=["pay"]) == []  # the HR document: a filter never widens the ACL
        assert len(search(anyone, question, tags=[])) > 1  # an empty filter is no filter
        assert [h["doc_id"] for h in search(hr, question, tags=["pay"])] == [HANDBOOK_SALARY]
        refused = anyone.post("/v1/search", json={"query": question, "tags": ["not a tag!"]})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "tags"
        assert "letters, digits" in refused.json()["error"]["message"]


def test_an_answer_filtered_by_tags_cites_only_tagged_documents(server: Server) -> None:
    with server.client(make_key(server, "ann")) as anyone:
        resp = anyone.post("/v1/answer", json={"question": "How many vacation days do I get?", "tags": ["policy"]})
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert answer["citations"] and {c["doc_id"] for c in answer["citations"]} == {HANDBOOK_VACATION}
        assert all(c["tags"] == ["leave", "policy"] for c in answer["citations"])
        none = anyone.post("/v1/answer", json={"question": "How many vacation days do I get?", "tags": ["pay"]})
        assert none.json()["abstained"] is True and none.json()["citations"] == []
        model = anyone.get("/v1/models").json()["data"][0]["id"]
        messages = [{"role": "user", "content": "How many vacation days do I get?"}]
        chat = anyone.post("/v1/chat/completions", json={"model": model, "messages": messages, "tags": ["leave"]})
        assert chat.status_code == 200, chat.text
        assert {c["doc_id"] for c in chat.json()["citations"]} == {HANDBOOK_VACATION}
        bad = anyone.post("/v1/chat/completions", json={"model": model, "messages": messages, "tags": ["a b"]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "tags"


def test_an_admins_acl_and_tags_outlive_a_reindex_over_http(server: Server) -> None:
    laptop = "What do I do when my laptop is lost?"
    steps = [
        {"tool": "set_document_acl", "input": {"doc_id": HANDBOOK_SECURITY, "acl": ["hr"]}},
        {"tool": "set_document_tags", "input": {"doc_id": HANDBOOK_SECURITY, "tags": ["it", "devices"]}},
    ]
    staff_key, hr_key = make_key(server, "stan", "staff"), make_key(server, "hedy", "hr")
    with server.client() as admin, server.client(staff_key) as staff, server.client(hr_key) as hr:
        done = admin.post("/v1/runs", json={"steps": steps}).json()
        assert done["status"] == "succeeded", done
        assert [h["doc_id"] for h in search(hr, laptop, tags=["devices"])] == [HANDBOOK_SECURITY]
        assert HANDBOOK_SECURITY not in [h["doc_id"] for h in search(staff, laptop)]
        job = admin.post("/v1/sources/handbook/reindex")
        assert job.status_code == 202
        assert wait_job(admin, job.json()["id"])["status"] == "succeeded"
        assert HANDBOOK_SECURITY not in [h["doc_id"] for h in search(staff, laptop)]
        hit = search(hr, laptop, tags=["it"])[0]
        assert hit["doc_id"] == HANDBOOK_SECURITY and hit["acl"] == ["hr"] and hit["tags"] == ["devices", "it"]
