"""Turn a file into plain text plus metadata: .md, .txt, .html (real parser) and .pdf (text layer)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".rst", ".html", ".htm", ".pdf"}


class LoadError(Exception):
    """A document could not be read; `reason` is shown to the operator as the document's failure."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class LoadedDocument:
    """A document's text and what we know about it before chunking."""

    text: str
    title: str
    meta: dict[str, Any] = field(default_factory=dict)


def load_file(path: Path, max_bytes: int = 50_000_000) -> LoadedDocument:
    """Read `path` with the loader its content and suffix call for; raise LoadError with a reason otherwise."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise LoadError(f"file vanished before it could be read: {path.name}") from exc
    if size > max_bytes:
        raise LoadError(f"file is {size} bytes, over the {max_bytes}-byte limit (KB_MAX_FILE_BYTES)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"cannot read file: {exc.strerror or exc}") from exc
    suffix = path.suffix.lower()
    if data.startswith(b"%PDF") or suffix == ".pdf":
        return _load_pdf(data, path)
    text = _decode_text(data, path)
    if suffix in {".html", ".htm"} or _looks_like_html(text):
        return _load_html(text, path)
    if suffix in {".md", ".markdown"}:
        return _load_markdown(text, path)
    if suffix in SUPPORTED_SUFFIXES or not suffix:
        return LoadedDocument(text=text.strip(), title=_first_line_title(text, path))
    raise LoadError(f"unsupported file type {suffix!r}; supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}")


def _decode_text(data: bytes, path: Path) -> str:
    if b"\x00" in data[:8192]:
        raise LoadError(f"binary content in a text file ({path.suffix or 'no extension'}); not indexed")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    text = data.decode("latin-1")
    printable = sum(ch.isprintable() or ch in "\n\r\t" for ch in text[:8192])
    if printable < 0.95 * min(len(text), 8192):
        raise LoadError("not valid text (undecodable bytes); not indexed")
    return text


def _looks_like_html(text: str) -> bool:
    head = text.lstrip()[:200].lower()
    return head.startswith("<!doctype html") or head.startswith("<html")


_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)


def parse_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Split simple YAML-style front matter (`key: value`, lists as `[a, b]` or `a, b`) from the body."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    meta: dict[str, Any] = {}
    for line in match.group(1).splitlines():
        if ":" not in line or line.lstrip().startswith("#"):
            continue
        key, _, raw = line.partition(":")
        value = raw.strip()
        if value.startswith("[") and value.endswith("]"):
            meta[key.strip()] = [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]
        else:
            meta[key.strip()] = value.strip("'\"")
    return meta, text[match.end() :]


def _load_markdown(text: str, path: Path) -> LoadedDocument:
    meta, body = parse_front_matter(text)
    title = str(meta.get("title") or "")
    if not title:
        heading = re.search(r"^#\s+(.+)$", body, re.MULTILINE)
        title = heading.group(1).strip() if heading else _first_line_title(body, path)
    return LoadedDocument(text=body.strip(), title=title, meta=meta)


def _load_html(text: str, path: Path) -> LoadedDocument:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "lxml")
    for tag in soup(["script", "style", "noscript", "template", "svg", "iframe", "nav", "footer", "head"]):
        tag.decompose()
    title_tag = BeautifulSoup(text, "lxml").find("title")
    h1 = soup.find("h1")
    title = (title_tag.get_text(strip=True) if title_tag else "") or (h1.get_text(strip=True) if h1 else "")
    body = soup.body or soup
    blocks = []
    for line in body.get_text("\n").splitlines():
        line = " ".join(line.split())
        if line:
            blocks.append(line)
    return LoadedDocument(text="\n".join(blocks), title=title or path.stem)


def _load_pdf(data: bytes, path: Path) -> LoadedDocument:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise LoadError(f"corrupt or unreadable PDF: {exc}") from exc
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise LoadError("PDF has no text layer (scanned image?); not indexed")
    return LoadedDocument(text=text, title=str(meta_title) or _first_line_title(text, path))


def _first_line_title(text: str, path: Path) -> str:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:120]
    return path.stem
