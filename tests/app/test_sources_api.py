"""Admins manage sources and jobs over REST while a real `kb serve` (Redis broker, worker thread) indexes them."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import Server, wait_job

SITE = {
    "index.html": "<html><head><title>Wiki</title></head><body><h1>Team wiki</h1>"
    "<p>The deploy freeze starts every Friday at noon.</p><a href='/oncall.html'>On-call</a>"
    "<a href='/private/secret.html'>secret</a></body></html>",
    "oncall.html": "<html><head><title>On-call</title></head><body><h1>On-call</h1>"
    "<p>The on-call engineer answers pages within fifteen minutes.</p></body></html>",
    "private/secret.html": "<html><body><p>Launch codes are kept under the mattress.</p></body></html>",
    "robots.txt": "User-agent: *\nDisallow: /private/\n",
}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "site"
    for name, body in SITE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def declare_huge_upload(server: Server, path: str) -> tuple[str, str]:
    """Announce a 1 TB multipart body and send none of it: the answer must come before the body is read."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {server.admin_key}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {10**12}\r\n\r\n".encode()
        )
        reply = b""
        while b"}}" not in reply:  # the JSON error body ends the answer
            block = sock.recv(65536)
            if not block:
                break
            reply += block
    head, _, body = reply.decode(errors="replace").partition("\r\n\r\n")
    return head.splitlines()[0], body


def hits(server: Server, query: str, mode: str = "bm25") -> list[dict[str, object]]:
    with server.client() as c:
        return list(c.post("/v1/search", json={"query": query, "mode": mode}).json()["hits"])


def test_sources_by_upload_and_web_crawl_then_delete_and_rebuild(kb_server: Server, site: str, tmp_path: Path) -> None:
    with kb_server.client() as admin:
        # Upload: several files in one request, indexed by the job the upload queues.
        assert admin.post("/v1/sources", json={"name": "uploads", "kind": "upload"}).status_code == 201
        files = [
            ("files", ("travel.md", b"# Travel\n\nTrain tickets are reimbursed in second class.\n", "text/markdown")),
            ("files", ("kitchen.txt", b"The dishwasher runs every evening at six.\n", "text/plain")),
        ]
        job = admin.post("/v1/sources/uploads/files", files=files)
        assert job.status_code == 202, job.text
        done = wait_job(admin, job.json()["id"])
        assert done["docs_done"] == 2 and done["docs_failed"] == 0
        assert hits(kb_server, "dishwasher evening")[0]["doc_id"] == "uploads:kitchen.txt"
        status_line, body = declare_huge_upload(kb_server, "/v1/sources/uploads/files")
        assert " 413 " in status_line and "payload_too_large" in body
        assert admin.post("/v1/sources", json={"name": "bad", "kind": "web", "url": "ftp://x"}).status_code == 422

        # Web: same-host links to a depth, robots.txt honoured, citations point at URLs.
        created = admin.post("/v1/sources", json={"name": "wiki", "kind": "web", "url": f"{site}/index.html"})
        assert created.status_code == 201, created.text
        crawl = wait_job(admin, admin.post("/v1/sources/wiki/reindex").json()["id"])
        assert crawl["status"] == "succeeded" and crawl["docs_done"] == 2, crawl
        found = hits(kb_server, "on-call engineer answers pages")
        assert found[0]["path"] == f"{site}/oncall.html"
        assert hits(kb_server, "launch codes mattress") == []

        # Progress as server-sent events, ending with the final state.
        job_id = admin.post("/v1/sources/wiki/reindex").json()["id"]
        with admin.stream("GET", f"/v1/jobs/{job_id}/events") as events:
            lines = [line for line in events.iter_lines() if line.startswith("data:")]
        assert json.loads(lines[-1][5:])["status"] == "succeeded"
        assert json.loads(lines[-2][5:])["docs_total"] == 2

        # A full rebuild switches to a new index version with the same content.
        before = admin.get("/v1/index").json()
        rebuilt = wait_job(admin, admin.post("/v1/index/rebuild").json()["id"])
        after = admin.get("/v1/index").json()
        assert rebuilt["status"] == "succeeded" and after["version"] == before["version"] + 1
        assert after["points"] == before["points"] == after["chunks_expected"]

        # Deleting a source removes its chunks.
        assert admin.delete("/v1/sources/wiki").status_code == 204
        assert hits(kb_server, "on-call engineer answers pages") == []
        assert admin.get("/v1/index").json()["points"] == after["points"] - 2
        assert admin.delete("/v1/sources/wiki").status_code == 404


def test_failed_documents_are_listed_and_retried_alone(kb_server: Server, corpus: Path) -> None:
    (corpus / "broken.txt").write_bytes(b"\x00\x01binary")
    with kb_server.client() as admin:
        admin.post("/v1/sources", json={"name": "hb", "path": str(corpus)}).raise_for_status()
        first = wait_job(admin, admin.post("/v1/sources/hb/reindex").json()["id"])
        assert first["failures"] == [{"path": "broken.txt", "reason": first["failures"][0]["reason"]}]
        assert "binary" in first["failures"][0]["reason"]
        (corpus / "broken.txt").write_text("Fixed: the parking garage closes at midnight.")
        retry = admin.post(f"/v1/jobs/{first['id']}/retry")
        assert retry.status_code == 202 and retry.json()["kind"] == "retry"
        done = wait_job(admin, retry.json()["id"])
        assert done["docs_total"] == 1 and done["docs_done"] == 1 and done["failures"] == []
        assert admin.post(f"/v1/jobs/{done['id']}/cancel").status_code == 409  # already ended
        assert admin.post(f"/v1/jobs/{done['id']}/retry").status_code == 409  # nothing failed
