"""The REST API against a real `kb serve` process: Redis broker, Celery worker thread, Qdrant Edge, SQLite."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, make_key, wait_job


@pytest.fixture
def indexed(kb_server: Server, corpus: Path) -> Server:
    with kb_server.client() as admin:
        created = admin.post("/v1/sources", json={"name": "handbook", "path": str(corpus), "acl": ["public"]})
        assert created.status_code == 201, created.text
        job = admin.post("/v1/sources/handbook/reindex")
        assert job.status_code == 202
        done = wait_job(admin, job.json()["id"])
    assert done["status"] == "succeeded" and done["docs_done"] == 6 and done["docs_failed"] == 0
    return kb_server


def test_an_employee_gets_a_cited_answer_and_an_outsider_never_sees_hr_documents(indexed: Server) -> None:
    outsider = make_key(indexed, "visitor")
    hr = make_key(indexed, "hr-person", groups="hr")
    with indexed.client(outsider) as c:
        answer = c.post("/v1/answer", json={"question": "How many vacation days do I get per year?"}).json()
        assert "25 vacation days" in answer["answer"] and answer["extractive"] is True
        assert answer["citations"][0]["doc_id"] == "handbook:vacation-policy.md"
        assert "[1]" in answer["answer"]
        for mode in ("bm25", "dense", "hybrid"):
            hits = c.post("/v1/search", json={"query": "engineering salary bands level 2", "mode": mode}).json()["hits"]
            assert all(h["doc_id"] != "handbook:salary-bands.md" for h in hits), mode
        cited = c.post("/v1/answer", json={"question": "What is the salary range for engineering level 2?"}).json()
        assert all(ct["doc_id"] != "handbook:salary-bands.md" for ct in cited["citations"])
        assert "60,000" not in cited["answer"]
    with indexed.client(hr) as c:
        for mode in ("bm25", "dense", "hybrid"):
            hits = c.post("/v1/search", json={"query": "engineering salary bands level 2", "mode": mode}).json()["hits"]
            assert hits[0]["doc_id"] == "handbook:salary-bands.md", mode
            assert hits[0]["acl"] == ["hr"] and hits[0]["citation"]["path"].endswith("salary-bands.md")


def test_admin_routes_need_an_admin_key(indexed: Server) -> None:
    reader = make_key(indexed, "reader", groups="eng")
    with indexed.client(reader) as c:
        assert c.post("/v1/sources", json={"name": "x", "path": "/tmp"}).status_code == 403
        assert c.post("/v1/sources/handbook/reindex").status_code == 403
        forbidden = c.post("/v1/search", json={"query": "x"}, headers={"X-KB-Groups": "hr"})
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
    with httpx.Client(base_url=indexed.url) as anon:
        missing = anon.post("/v1/search", json={"query": "vacation"})
        assert missing.status_code == 401 and "API key" in missing.json()["error"]["message"]
        wrong = anon.post("/v1/search", json={"query": "vacation"}, headers={"Authorization": "Bearer kb_nope"})
        assert wrong.status_code == 401


BAD_SEARCHES: list[tuple[dict[str, object], str]] = [
    ({"query": ""}, "query"),
    ({"query": "x" * 2001}, "query"),
    ({"query": "vacation", "mode": "semantic"}, "mode"),
    ({"query": "vacation", "top_k": 0}, "top_k"),
    ({"query": "vacation", "top_k": 101}, "top_k"),
    ({}, "query"),
]


def test_bad_search_input_is_a_422_naming_the_field(kb_server: Server) -> None:
    with kb_server.client() as c:
        for body, field in BAD_SEARCHES:
            resp = c.post("/v1/search", json=body)
            assert resp.status_code == 422, body
            assert resp.json()["error"]["field"] == field, body
        blank = c.post("/v1/answer", json={"question": "   "})
        assert blank.status_code == 422 and blank.json()["error"]["field"] == "question"


def test_sources_validate_input_and_jobs_report_progress(indexed: Server, corpus: Path) -> None:
    with indexed.client() as admin:
        bad = admin.post("/v1/sources", json={"name": "Bad Name!", "path": str(corpus)})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "name"
        dup = admin.post("/v1/sources", json={"name": "handbook", "path": str(corpus)})
        assert dup.status_code == 409
        assert admin.post("/v1/sources/nope/reindex").status_code == 404
        assert admin.get("/v1/jobs/doesnotexist").status_code == 404
        assert [s["name"] for s in admin.get("/v1/sources").json()] == ["handbook"]
        (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 nonsense")
        again = wait_job(admin, admin.post("/v1/sources/handbook/reindex").json()["id"])
        assert again["docs_skipped"] == 6 and again["chunks_embedded"] == 0 and again["docs_failed"] == 1
        assert again["failures"][0]["path"] == "broken.pdf"
        assert admin.get("/readyz").json()["checks"] == {"qdrant": "ok", "sql": "ok", "broker": "ok"}
        assert admin.get("/docs").status_code == 200
