"""A web source crawls a real (local) HTTP site into a folder the directory pipeline can index."""

from __future__ import annotations

import gzip
import io
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ingestion.loaders import load_file
from ingestion.sources import DirectorySource
from ingestion.web import URLS_FILE, CrawlResult, crawl, read_url_map

Handler = Callable[[BaseHTTPRequestHandler], None]
Route = tuple[int, dict[str, str], bytes] | Handler


class Site:
    """A local HTTP server whose routes a test can change between crawls; it records every path requested."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.hits: list[str] = []
        self.bytes_sent = 0
        self.server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def serve(routes: dict[str, Route]) -> Iterator[Site]:
    site = Site(routes)

    class _Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            site.hits.append(self.path)
            route = site.routes.get(self.path, (404, {"Content-Type": "text/plain"}, b"not found"))
            try:
                if callable(route):
                    route(self)
                    return
                status, headers, body = route
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the crawler hung up on purpose (size limit, timeout)

        def log_message(self, *args: Any) -> None:
            pass

    site.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=site.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        site.server.shutdown()
        site.server.server_close()


def html(body: str) -> Route:
    return (
        200,
        {"Content-Type": "text/html; charset=utf-8"},
        f"<!DOCTYPE html><html><body>{body}</body></html>".encode(),
    )


def redirect(to: str, status: int = 302) -> Route:
    return status, {"Location": to}, b""


def pdf_bytes(line: str) -> bytes:
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer)
    pdf.drawString(72, 720, line)
    pdf.save()
    return buffer.getvalue()


def endless_page(site: Site) -> Handler:
    """A page that never ends (no Content-Length): only a crawler that stops reading gets past it."""

    def handler(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "text/html")
        request.end_headers()
        chunk = b"<p>" + b"x" * 8185 + b"</p>"
        for _ in range(25_000):  # ~200 MB if nobody hangs up
            request.wfile.write(chunk)
            site.bytes_sent += len(chunk)

    return handler


def sitemap(*urls: str, index: bool = False) -> bytes:
    outer, inner = ("sitemapindex", "sitemap") if index else ("urlset", "url")
    entries = "".join(f"<{inner}><loc>{url}</loc></{inner}>" for url in urls)
    ns = "http://www.sitemaps.org/schemas/sitemap/0.9"
    return f'<?xml version="1.0" encoding="UTF-8"?><{outer} xmlns="{ns}">{entries}</{outer}>'.encode()


def company_site(offsite: str) -> dict[str, Route]:
    routes: dict[str, Route] = {
        "/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow: /private/\n"),
        "/": html(
            '<h1>Handbook</h1><a href="a.html">A</a> <a href="/a.html#intro">A again</a> <a href="notes.txt">N</a>'
            ' <a href="docs/report.pdf">R</a> <a href="/private/secret.html">S</a> <a href="/missing">M</a>'
            ' <a href="/loop/1">L</a> <a href="/chain/0">C</a> <a href="/big.html">B</a> <a href="/logo.png">I</a>'
            f' <a href="/export">D</a> <a href="{offsite}/offsite.html">O</a> <a href="mailto:ops@example.com">@</a>'
        ),
        "/a.html": html('<h1>Leave</h1><p>Ask your lead.</p><a href="/deep.html">deeper</a> <a href="/">home</a>'),
        "/deep.html": html("<p>Two links away.</p>"),
        "/only-in-sitemap.html": html("<p>Listed, never linked.</p>"),
        "/notes.txt": (200, {"Content-Type": "text/plain; charset=utf-8"}, b"Release notes: v2 ships Friday."),
        "/docs/report.pdf": (200, {"Content-Type": "application/pdf"}, pdf_bytes("Revenue grew twelve percent.")),
        "/private/secret.html": html("<p>Salaries.</p>"),
        "/loop/1": redirect("/loop/2"),
        "/loop/2": redirect("/loop/1"),
        "/old-page": redirect("/a.html", 301),
        "/export": (200, {"Content-Type": "application/octet-stream"}, b"\x00\x01"),
        "/sitemap.xml": (
            200,
            {"Content-Type": "application/xml"},
            sitemap("/a.html", "/only-in-sitemap.html", "/private/secret.html", f"{offsite}/offsite.html"),
        ),
        "/sitemap-extra.xml.gz": (200, {"Content-Type": "application/gzip"}, gzip.compress(sitemap("/notes.txt"))),
        "/sitemap_index.xml": (
            200,
            {"Content-Type": "text/xml"},
            sitemap("/sitemap.xml", "/sitemap-extra.xml.gz", index=True),
        ),
    }
    for hop in range(15):
        routes[f"/chain/{hop}"] = redirect(f"/chain/{hop + 1}")
    return routes


@pytest.fixture(scope="module")
def crawled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site, CrawlResult, Path]]:
    """One crawl of the company site (depth 1), shared by the tests that read its outcome."""
    with serve({}) as offsite, serve({}) as site:
        # "localhost" is another host name for the crawler, though it would reach a server on this machine.
        site.routes.update(company_site(offsite.base.replace("127.0.0.1", "localhost")))
        site.routes["/big.html"] = endless_page(site)
        dest = tmp_path_factory.mktemp("web")
        result = crawl(f"{site.base}/", dest, max_depth=1, max_bytes=50_000, timeout=5)
        yield site, offsite, result, dest


def test_crawl_saves_same_host_pages_breadth_first(crawled: tuple[Site, Site, CrawlResult, Path]) -> None:
    site, offsite, result, _ = crawled
    assert {url for url, _ in result.pages} == {
        f"{site.base}/",
        f"{site.base}/a.html",
        f"{site.base}/notes.txt",
        f"{site.base}/docs/report.pdf",
    }
    assert offsite.hits == []  # the off-host link was not followed
    assert "/deep.html" not in site.hits  # two links away, beyond max_depth=1
    assert site.hits.count("/a.html") == 1  # "/a.html#intro" is the same page
    assert "/logo.png" not in site.hits  # assets are not documents
    assert site.hits.count("/robots.txt") == 1


def test_robots_txt_disallowed_pages_are_skipped_unrequested(crawled: tuple[Site, Site, CrawlResult, Path]) -> None:
    site, _, result, _ = crawled
    assert result.skipped == [f"{site.base}/private/secret.html"]
    assert "/private/secret.html" not in site.hits


def test_bad_pages_become_failures_with_reasons(crawled: tuple[Site, Site, CrawlResult, Path]) -> None:
    site, _, result, _ = crawled
    failures = {url.removeprefix(site.base): reason for url, reason in result.failures}
    assert set(failures) == {"/missing", "/loop/1", "/chain/0", "/big.html", "/export"}
    assert failures["/missing"] == "HTTP 404 Not Found"
    assert failures["/loop/1"].startswith("redirect loop:") and failures["/loop/1"].endswith("/loop/1")
    assert "too many redirects" in failures["/chain/0"]
    assert "content type application/octet-stream" in failures["/export"]
    assert "max_bytes (50000); stopped reading" in failures["/big.html"]
    time.sleep(0.2)  # let the server notice the hang-up
    assert site.bytes_sent < 30_000_000  # of ~200 MB offered: the crawler stopped reading


def test_pages_are_files_the_directory_source_and_loaders_read(crawled: tuple[Site, Site, CrawlResult, Path]) -> None:
    site, _, result, dest = crawled
    names = {url.removeprefix(site.base): name for url, name in result.pages}
    for name in names.values():
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) and len(name) < 150
    assert names["/"].endswith(".html") and names["/notes.txt"].endswith(".txt")
    assert names["/docs/report.pdf"].endswith(".pdf") and "docs-report" in names["/docs/report.pdf"]
    assert read_url_map(dest) == {name: url for url, name in result.pages}
    assert [f.relpath for f in DirectorySource(dest).files()] == sorted(names.values())  # .urls.json is hidden
    assert "Revenue grew twelve percent." in load_file(dest / names["/docs/report.pdf"]).text
    assert load_file(dest / names["/a.html"]).headings == [(0, "Leave")]


def test_a_sitemap_index_names_the_pages_to_crawl(tmp_path: Path) -> None:
    with serve({}) as offsite, serve({}) as site:
        site.routes.update(company_site(offsite.base.replace("127.0.0.1", "localhost")))
        result = crawl(f"{site.base}/sitemap_index.xml", tmp_path, max_depth=0)
    assert {url.removeprefix(site.base) for url, _ in result.pages} == {
        "/a.html",
        "/only-in-sitemap.html",
        "/notes.txt",  # from the gzipped child sitemap
    }
    assert result.skipped == [f"{site.base}/private/secret.html"] and result.failures == []
    assert offsite.hits == [] and "/deep.html" not in site.hits  # depth 0: the listed pages only


def test_a_redirected_page_is_saved_under_its_final_url(tmp_path: Path) -> None:
    with serve(company_site("http://localhost:9")) as site:
        result = crawl(f"{site.base}/old-page", tmp_path, max_depth=0)
    assert [url for url, _ in result.pages] == [f"{site.base}/a.html"]


def test_recrawl_replaces_changed_pages_and_removes_vanished_ones(tmp_path: Path) -> None:
    with serve({}) as site:
        site.routes.update(
            {
                "/": html('<a href="/a.html">A</a> <a href="/b.html">B</a>'),
                "/a.html": html("<p>Version one.</p>"),
                "/b.html": html("<p>Soon gone.</p>"),
            }
        )
        first = dict(crawl(f"{site.base}/", tmp_path).pages)
        assert len(first) == 3

        site.routes["/"] = html('<a href="/a.html">A</a>')  # b is no longer linked
        site.routes["/a.html"] = html("<p>Version two.</p>")
        second = dict(crawl(f"{site.base}/", tmp_path).pages)
        assert second == {url: name for url, name in first.items() if not url.endswith("/b.html")}  # stable names
        assert not (tmp_path / first[f"{site.base}/b.html"]).exists()
        assert "Version two." in (tmp_path / second[f"{site.base}/a.html"]).read_text()
        assert set(read_url_map(tmp_path)) == set(second.values())

        site.routes["/a.html"] = (503, {}, b"maintenance")  # a transient failure keeps the last good copy
        third = crawl(f"{site.base}/", tmp_path)
        assert third.failures == [(f"{site.base}/a.html", "HTTP 503 Service Unavailable")]
        assert (tmp_path / second[f"{site.base}/a.html"]).exists()
        assert set(read_url_map(tmp_path)) == set(second.values())

        site.routes["/a.html"] = (404, {}, b"")  # gone for good
        crawl(f"{site.base}/", tmp_path)
        assert not (tmp_path / second[f"{site.base}/a.html"]).exists()
        base = site.base
    outage = crawl(f"{base}/", tmp_path)  # the whole site is down: nothing is deleted
    assert outage.pages == [] and outage.failures[0][1].startswith("cannot connect")
    assert json.loads((tmp_path / URLS_FILE).read_text()) == {second[f"{base}/"]: f"{base}/"}
    assert (tmp_path / second[f"{base}/"]).exists()


def test_unreachable_start_and_timeouts_are_failures_not_exceptions(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    down = crawl(f"http://127.0.0.1:{closed_port}/", tmp_path, timeout=2)
    assert down.pages == [] and len(down.failures) == 1
    assert down.failures[0][0] == f"http://127.0.0.1:{closed_port}/"
    assert "cannot connect" in down.failures[0][1]

    assert crawl("ftp://127.0.0.1/file", tmp_path).failures == [("ftp://127.0.0.1/file", "not an absolute http(s) URL")]

    def slow(request: BaseHTTPRequestHandler) -> None:
        time.sleep(2)
        request.send_response(200)
        request.end_headers()

    with serve({"/": html('<a href="/slow">S</a>'), "/slow": slow}) as site:
        result = crawl(f"{site.base}/", tmp_path, timeout=0.5)
    assert [url for url, _ in result.pages] == [f"{site.base}/"]
    assert result.failures == [(f"{site.base}/slow", "timed out after 0.5s (ReadTimeout)")]
