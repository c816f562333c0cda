"""Turn a file into plain text, section headings and metadata: .md, .txt, .html, .pdf, .docx and source code.

The loader is chosen by content first (PDF magic, a zip holding word/document.xml, an HTML prologue) and by
suffix second, so a renamed or extension-less file still loads with the right parser.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".text", ".rst"})
_CODE_EXTENSIONS = (
    "py pyi js jsx mjs cjs ts tsx java kt kts scala groovy gradle go rs c h cc cpp cxx hpp hh cs swift m rb php pl "
    "lua r dart ex exs erl hs clj sh bash zsh ps1 sql graphql proto yaml yml json toml ini cfg conf properties xml "
    "css scss less tf vue svelte dockerfile"
)
# Indexed verbatim as plain text, titled by file name: code and config read best as written.
CODE_SUFFIXES = frozenset(f".{ext}" for ext in _CODE_EXTENSIONS.split())
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | CODE_SUFFIXES | {".html", ".htm", ".pdf", ".docx"}
_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .doc/.xls/.ppt container


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
    # (offset in `text` where the section starts, heading text), in document order. For Markdown the offset is
    # the start of the heading line (its `#` markers), elsewhere the start of the heading's own text.
    headings: list[tuple[int, str]] = field(default_factory=list)


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
    if data.startswith(_ZIP_MAGIC) or suffix == ".docx":
        return _load_docx(data, path)
    if data.startswith(_OLE_MAGIC):
        raise LoadError("legacy Office binary format (.doc/.xls/.ppt) is not supported; save it as .docx or PDF")
    text = _decode_text(data, path)
    if suffix in {".html", ".htm"} or _looks_like_html(text):
        return _load_html(text, path)
    if suffix in {".md", ".markdown"}:
        return _load_markdown(text, path)
    if suffix in CODE_SUFFIXES:
        return LoadedDocument(text=text.strip("\r\n").rstrip(), title=path.name)
    if suffix in TEXT_SUFFIXES or not suffix:
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
    body = body.strip()
    return LoadedDocument(text=body, title=title, meta=meta, headings=markdown_headings(body))


_ATX = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_NOT_A_PARAGRAPH = re.compile(r"^(?: {4}|\t| {0,3}(?:[>#|*+-]|\d+[.)]\s))")


def markdown_headings(text: str) -> list[tuple[int, str]]:
    """ATX (`## Title`) and setext (`Title` over `===`) headings with their line offsets, outside code fences."""
    headings: list[tuple[int, str]] = []
    lines = text.splitlines(keepends=True)
    fence = ""
    offset = 0
    for i, raw in enumerate(lines):
        line = raw.rstrip("\r\n")
        opener = _FENCE.match(line)
        if fence:
            # A fence closes only on the same character, at least as long as the one that opened it.
            if opener and opener.group(1)[0] == fence[0] and len(opener.group(1)) >= len(fence):
                fence = ""
        elif opener:
            fence = opener.group(1)
        elif atx := _ATX.match(line):
            headings.append((offset, atx.group(1).strip()))
        elif (
            line.strip()
            and (i == 0 or not lines[i - 1].strip())
            and i + 1 < len(lines)
            and _SETEXT_UNDERLINE.match(lines[i + 1].rstrip("\r\n"))
            and not _NOT_A_PARAGRAPH.match(line)
        ):
            headings.append((offset + len(line) - len(line.lstrip()), line.strip()))
        offset += len(raw)
    return headings


_HEADING_TAGS = ["h1", "h2", "h3", "h4"]
_MARK = "\ue000"  # private-use character tagging heading lines through get_text(); stripped from input first


_BLOCK_TAGS = [
    "p", "div", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "section", "article", "main", "header", "aside",
    "pre", "blockquote", "br", "hr", "figure", "figcaption", "form", "h1", "h2", "h3", "h4", "h5", "h6",
]  # fmt: skip


def _load_html(text: str, path: Path) -> LoadedDocument:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text.replace(_MARK, ""), "lxml")
    title_tag = soup.find("title")
    h1 = soup.find("h1")
    title = (title_tag.get_text(strip=True) if title_tag else "") or (h1.get_text(" ", strip=True) if h1 else "")
    for tag in soup(["script", "style", "noscript", "template", "svg", "iframe", "nav", "footer", "head"]):
        tag.decompose()
    body = soup.body or soup
    for heading in body.find_all(_HEADING_TAGS):
        label = " ".join(heading.get_text().split())
        if label:
            heading.string = _MARK + label  # one string, so it becomes exactly one line of the text
    # Line breaks only around block elements: inline markup (<b>, <a>, <code>) stays inside its sentence.
    for block in body.find_all(_BLOCK_TAGS):
        block.insert_before("\n")
        block.insert_after("\n")
    for cell in body.find_all(["td", "th"]):
        cell.insert_after(" ")
    blocks: list[str] = []
    headings: list[tuple[int, str]] = []
    offset = 0
    for line in body.get_text("").splitlines():
        line = " ".join(line.split())
        if line.startswith(_MARK):
            line = line[len(_MARK) :]
            headings.append((offset, line))
        if line:
            blocks.append(line)
            offset += len(line) + 1
    return LoadedDocument(text="\n".join(blocks), title=title or path.stem, headings=headings)


def _load_docx(data: bytes, path: Path) -> LoadedDocument:
    """Word .docx via python-docx: paragraphs and table rows in body order, Heading/Title styles as headings."""
    import docx
    from docx.table import Table

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            is_word = "word/document.xml" in archive.namelist()
    except zipfile.BadZipFile as exc:
        raise LoadError(f"corrupt or unreadable .docx (not a zip archive): {exc}") from exc
    if not is_word:
        raise LoadError("zip archive without word/document.xml; only Word .docx is supported among zip formats")
    try:
        document = docx.Document(io.BytesIO(data))
        blocks: list[str] = []
        headings: list[tuple[int, str]] = []
        offset = 0
        for item in document.iter_inner_content():
            if isinstance(item, Table):
                lines = [" | ".join(_unique_cells(row.cells)) for row in item.rows]
            else:
                lines = [" ".join(item.text.split())]
                if lines[0] and _is_heading_style(item.style):
                    headings.append((offset, lines[0]))
            for line in lines:
                if line.strip(" |"):
                    blocks.append(line)
                    offset += len(line) + 1
        core_title = document.core_properties.title or ""
    except (KeyError, ValueError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
        raise LoadError(f"corrupt or unreadable .docx: {exc}") from exc
    text = "\n".join(blocks)
    title = core_title.strip() or (headings[0][1] if headings else _first_line_title(text, path))
    return LoadedDocument(text=text, title=title[:120], headings=headings)


def _unique_cells(cells: list[Any]) -> list[str]:
    # python-docx repeats a merged cell once per grid column it spans; keep each cell once.
    seen: list[Any] = []
    out = []
    for cell in cells:
        if cell._tc in seen:
            continue
        seen.append(cell._tc)
        out.append(" ".join(cell.text.split()))
    return out


def _is_heading_style(style: Any) -> bool:
    # Custom styles often derive from a built-in heading; follow a few levels of base styles.
    for _ in range(4):
        if style is None:
            return False
        name = (style.name or "").lower()
        if name == "title" or name.startswith("heading"):
            return True
        style = style.base_style
    return False


def _load_pdf(data: bytes, path: Path) -> LoadedDocument:
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
