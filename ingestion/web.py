"""Web source: crawl a site (a page or a sitemap) into a local folder that the directory pipeline then indexes.

Each fetched page becomes one file named after its URL; `.urls.json` in the folder maps file name -> URL. A
re-crawl replaces files and removes those whose URLs are gone, so the pipeline deletes their chunks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

import httpx

log = logging.getLogger(__name__)

URLS_FILE = ".urls.json"
MAX_REDIRECTS = 10
MAX_SITEMAPS = 50
_ROBOTS_MAX_BYTES = 512_000  # RFC 9309: crawlers must parse at least 500 KiB
_PAGE_TYPES = {
    "text/html": ".html",
    "application/xhtml+xml": ".html",
    "text/plain": ".txt",
    "text/markdown": ".md",
    "text/x-markdown": ".md",
    "application/pdf": ".pdf",
}
_SITEMAP_TYPES = {"application/xml", "text/xml", "application/gzip", "application/x-gzip"}
# Links to these are assets, not documents: never requested, never reported.
_ASSETS = "png jpg jpeg gif svg webp ico css js mjs map woff woff2 ttf eot mp3 mp4 webm mov avi zip gz tgz tar bz2 7z"
_ASSET_SUFFIXES = {f".{ext}" for ext in f"{_ASSETS} rar exe dmg iso apk bin".split()}
_PAGE_SUFFIXES = {".html", ".htm", ".php", ".asp", ".aspx", ".jsp", ".md", ".markdown", ".txt", ".pdf"}


@dataclass
class CrawlResult:
    """What a crawl saved, what failed and why, and what robots.txt kept it from fetching."""

    pages: list[tuple[str, str]] = field(default_factory=list)  # (url, file name in dest)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (url, reason)
    skipped: list[str] = field(default_factory=list)  # disallowed by robots.txt
    truncated: bool = False  # max_pages was reached with links left to visit


@dataclass(frozen=True)
class _Fetched:
    url: str  # after redirects
    content_type: str
    charset: str | None
    body: bytes


class _FetchFailed(Exception):
    """One URL could not be fetched; `transient` failures (timeouts, 5xx) may succeed on the next crawl."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


def crawl(
    start_url: str,
    dest: Path,
    *,
    max_depth: int = 1,
    max_pages: int = 200,
    max_bytes: int = 10_000_000,
    timeout: float = 10.0,
    user_agent: str = "kb-crawler/0.1",
) -> CrawlResult:
    """Fetch `start_url` (a page or a sitemap) and same-host links breadth-first up to `max_depth` into `dest`.

    `max_pages` bounds the page requests made (successful or not). Bad pages become `failures`, never exceptions.
    Files of URLs no longer found are removed only after a clean crawl; after timeouts, 5xx or truncation only
    the definitively gone ones (4xx, robots-disallowed, unsupported, too large) are, so an outage deletes nothing.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    result = CrawlResult()
    start = normalise_url(start_url)
    if start is None:
        result.failures.append((start_url, "not an absolute http(s) URL"))
        return result
    saved: dict[str, str] = {}  # file name -> url
    gone: set[str] = set()  # urls that failed for a reason a retry will not fix
    transient = False
    with httpx.Client(timeout=timeout, headers={"User-Agent": user_agent}, max_redirects=5) as client:
        fetcher = _Fetcher(client, user_agent, max_bytes, timeout, host=urlsplit(start).hostname or "")
        queue: deque[tuple[str, int, str]] = deque([(start, 0, "any")])  # (url, depth, page|sitemap|any)
        seen = {start}
        requests = sitemaps_queued = 0
        while queue:
            url, depth, kind = queue.popleft()
            if kind != "sitemap" and requests >= max_pages:
                result.truncated = True
                break
            try:
                if not fetcher.allowed(url):
                    result.skipped.append(url)
                    gone.add(url)
                    continue
                if kind != "sitemap":
                    requests += 1
                fetched = fetcher.fetch(url, sitemap_ok=kind != "page", adopt_host=url == start)
            except _FetchFailed as failed:
                log.info("crawl.failed url=%s reason=%s", url, failed.reason)
                result.failures.append((url, failed.reason))
                transient = transient or failed.transient
                if not failed.transient:
                    gone.add(url)
                continue
            if kind != "page" and _looks_like_sitemap(fetched):
                try:
                    is_index, locs = parse_sitemap(fetched.body, max_bytes)
                except ValueError as exc:
                    if fetched.content_type not in _PAGE_TYPES:  # else XHTML: an XML page, not a sitemap
                        result.failures.append((url, f"not a readable sitemap: {exc}"))
                        gone.add(url)
                        continue
                else:
                    for loc in locs:
                        link = normalise_url(loc, base=fetched.url)
                        if link and fetcher.same_site(link) and link not in seen:
                            if is_index:
                                if sitemaps_queued >= MAX_SITEMAPS:
                                    break
                                sitemaps_queued += 1
                            seen.add(link)
                            queue.append((link, 0, "sitemap" if is_index else "page"))
                    continue
            if kind == "sitemap" or fetched.content_type not in _PAGE_TYPES:  # only a sitemap-index child gets here
                result.failures.append((url, f"listed as a sitemap but is {fetched.content_type or 'untyped'}"))
                gone.add(url)
                continue
            seen.add(fetched.url)
            if fetched.url in saved.values():
                continue  # a redirect to a page already saved
            name = file_name_for(fetched.url, fetched.content_type)
            _write_atomic(dest / name, fetched.body)
            saved[name] = fetched.url
            result.pages.append((fetched.url, name))
            if depth < max_depth and _PAGE_TYPES[fetched.content_type] == ".html":
                for link in _links(fetched):
                    if link not in seen and fetcher.same_site(link) and not _is_asset(link):
                        seen.add(link)
                        queue.append((link, depth + 1, "page"))
    complete = bool(saved) and not transient and not result.truncated
    _prune(dest, saved, gone, complete)
    log.info(
        "crawl.done start=%s pages=%d failures=%d skipped=%d truncated=%s",
        start,
        len(result.pages),
        len(result.failures),
        len(result.skipped),
        result.truncated,
    )
    return result


class _Fetcher:
    """HTTP GETs with manual redirects (loop detection, same-site and robots checks on every hop)."""

    def __init__(self, client: httpx.Client, user_agent: str, max_bytes: int, timeout: float, host: str) -> None:
        self.client = client
        self.user_agent = user_agent
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.hosts = {host}
        self._robots: dict[str, RobotFileParser | str] = {}

    def same_site(self, url: str) -> bool:
        return urlsplit(url).hostname in self.hosts

    def allowed(self, url: str) -> bool:
        """Whether robots.txt of the URL's origin lets us fetch it; raise _FetchFailed when it cannot be read."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._robots:
            self._robots[origin] = self._read_robots(origin)
        rules = self._robots[origin]
        if isinstance(rules, str):
            raise _FetchFailed(rules, transient=True)
        return rules.can_fetch(self.user_agent, url)

    def _read_robots(self, origin: str) -> RobotFileParser | str:
        rules = RobotFileParser(f"{origin}/robots.txt")
        try:
            with self.client.stream("GET", f"{origin}/robots.txt", follow_redirects=True) as response:
                if 400 <= response.status_code < 500:
                    rules.parse([])  # RFC 9309: no robots.txt means no restrictions
                    return rules
                if response.status_code != 200:
                    return f"robots.txt answered HTTP {response.status_code}; site not crawled until it answers"
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) >= _ROBOTS_MAX_BYTES:
                        break
        except httpx.HTTPError as exc:
            return f"{_describe(exc, self.timeout)} (while reading robots.txt)"
        rules.parse(body[:_ROBOTS_MAX_BYTES].decode("utf-8", "replace").splitlines())
        return rules

    def fetch(self, url: str, *, sitemap_ok: bool, adopt_host: bool) -> _Fetched:
        """GET `url`, following redirects by hand; the body is read only while it stays within max_bytes."""
        chain = [url]
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                with self.client.stream("GET", current) as response:
                    if not response.is_redirect:
                        return self._read(current, response, sitemap_ok)
                    target = normalise_url(response.headers.get("location", ""), base=current)
            except httpx.HTTPError as exc:
                raise _FetchFailed(_describe(exc, self.timeout), transient=True) from exc
            if target is None:
                raise _FetchFailed(f"redirect to a missing or non-http(s) location from {current}", transient=False)
            if target in chain:
                raise _FetchFailed(f"redirect loop: {' -> '.join([*chain, target])}", transient=False)
            host = urlsplit(target).hostname or ""
            if adopt_host:
                self.hosts.add(host)  # the start URL may move the whole site (http -> https, www.)
            elif host not in self.hosts:
                raise _FetchFailed(f"redirects off-site to {target}; not followed", transient=False)
            if not self.allowed(target):
                raise _FetchFailed(f"redirects to {target}, which robots.txt disallows", transient=False)
            chain.append(target)
            current = target
        raise _FetchFailed(f"too many redirects (more than {MAX_REDIRECTS}) from {url}", transient=False)

    def _read(self, url: str, response: httpx.Response, sitemap_ok: bool) -> _Fetched:
        status = response.status_code
        if status >= 400:
            reason = f"HTTP {status} {response.reason_phrase}".rstrip()
            raise _FetchFailed(reason, transient=status >= 500 or status in (408, 429))
        if status != 200:
            raise _FetchFailed(f"HTTP {status} {response.reason_phrase}; only 200 responses are saved", transient=False)
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        accepted = content_type in _PAGE_TYPES or (sitemap_ok and content_type in _SITEMAP_TYPES)
        if not accepted:
            raise _FetchFailed(
                f"content type {content_type or '(none)'} is not HTML, text or PDF; not saved", transient=False
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise _FetchFailed(f"Content-Length {declared} is over max_bytes ({self.max_bytes})", transient=False)
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                raise _FetchFailed(f"larger than max_bytes ({self.max_bytes}); stopped reading", transient=False)
        return _Fetched(url, content_type, response.charset_encoding, bytes(body))


def _describe(exc: httpx.HTTPError, timeout: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out after {timeout:g}s ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {exc}"
    return f"{type(exc).__name__}: {exc}"


def normalise_url(url: str, base: str | None = None) -> str | None:
    """Absolute http(s) URL without fragment or credentials, lower-case scheme and host, default port dropped."""
    try:
        parts = urlsplit(urljoin(base, url.strip()) if base else url.strip())
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    netloc = host if port in (None, {"http": 80, "https": 443}[scheme]) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def file_name_for(url: str, content_type: str) -> str:
    """Stable, filesystem-safe name: host, path slug and a short hash of the URL, with the content's extension."""
    parts = urlsplit(url)
    path = PurePosixPath(parts.path)
    extension = _PAGE_TYPES.get(content_type, ".txt")
    if path.suffix.lower() in _PAGE_SUFFIXES:
        if extension == ".txt" and path.suffix.lower() in {".md", ".markdown"}:
            extension = ".md"  # Markdown served as text/plain still loads as Markdown
        path = path.with_suffix("")
    host = (parts.hostname or "site") + (f"-{parts.port}" if parts.port else "")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{host}_{path}").strip("-_")[:100].rstrip("-_")
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return f"{slug}_{digest}{extension}"


def parse_sitemap(body: bytes, max_bytes: int) -> tuple[bool, list[str]]:
    """(is a sitemap index, <loc> URLs) of a sitemap or sitemap index, gzipped or not; ValueError otherwise."""
    from lxml import etree

    if body[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, max_bytes + 1)
        except zlib.error as exc:
            raise ValueError(f"bad gzip data: {exc}") from exc
        if len(body) > max_bytes:
            raise ValueError(f"unzips to more than max_bytes ({max_bytes})")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.fromstring(body, parser)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"invalid XML: {exc}") from exc
    kind = etree.QName(root).localname
    if kind not in ("urlset", "sitemapindex"):
        raise ValueError(f"root element is <{kind}>, not <urlset> or <sitemapindex>")
    entry = "{*}sitemap" if kind == "sitemapindex" else "{*}url"
    locs = [el.text.strip() for el in root.iterfind(f"{entry}/{{*}}loc") if el.text and el.text.strip()]
    return kind == "sitemapindex", locs


def _looks_like_sitemap(fetched: _Fetched) -> bool:
    head = fetched.body[:512].lstrip()
    return fetched.content_type in _SITEMAP_TYPES or head.startswith(b"<?xml") or head[:2] == b"\x1f\x8b"


def _links(fetched: _Fetched) -> list[str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(fetched.body, "lxml", from_encoding=fetched.charset)
    base = fetched.url
    base_tag = soup.find("base", href=True)
    if base_tag is not None:
        base = urljoin(base, str(base_tag.get("href")))
    links = []
    for anchor in soup.find_all("a", href=True):
        link = normalise_url(str(anchor.get("href")), base=base)
        if link:
            links.append(link)
    return links


def _is_asset(url: str) -> bool:
    return PurePosixPath(urlsplit(url).path).suffix.lower() in _ASSET_SUFFIXES


def read_url_map(dest: Path) -> dict[str, str]:
    """File name -> URL of the last crawl into `dest`; empty when there was none or the map is unreadable."""
    try:
        raw = json.loads((Path(dest) / URLS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(name): str(url) for name, url in raw.items()}


def _prune(dest: Path, saved: dict[str, str], gone: set[str], complete: bool) -> None:
    """Delete files of URLs no longer found (all of them only after a complete crawl); write the new URL map."""
    kept = dict(saved)
    for name, url in read_url_map(dest).items():
        if name in saved or Path(name).name != name or name.startswith("."):
            continue  # re-saved, or not a name this module writes
        if complete or url in gone or url in saved.values():
            (dest / name).unlink(missing_ok=True)
            log.info("crawl.removed file=%s url=%s", name, url)
        else:
            kept[name] = url  # not re-confirmed this time (outage, truncation): keep until a clean crawl
    _write_atomic(dest / URLS_FILE, json.dumps(dict(sorted(kept.items())), indent=2).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    # A dot-named temp file: the directory source never indexes a half-written page.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
