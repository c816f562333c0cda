"""Loaders turn real files into clean text: no tags or scripts from HTML, the text layer of a PDF."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestion.loaders import LoadError, load_file, parse_front_matter


def test_html_keeps_text_and_drops_tags_scripts_and_styles(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text(
        "<html><head><title>Guide</title><style>p{color:red}</style><script>alert('x')</script></head>"
        "<body><nav>Menu</nav><h1>Install</h1><p>Run <b>make run</b> to start.</p></body></html>"
    )
    doc = load_file(page)
    assert doc.title == "Guide"
    assert "Run make run to start." in doc.text.replace("\n", " ")
    for leaked in ("<", "alert", "color:red", "Menu"):
        assert leaked not in doc.text


def test_html_inline_markup_stays_in_its_sentence(tmp_path: Path) -> None:
    page = tmp_path / "inline.html"
    page.write_text(
        "<html><body><p>Install it with <b>apt</b> or <a href='#'>pip</a>.</p><p>Then run it.</p></body></html>"
    )
    assert load_file(page).text.splitlines() == ["Install it with apt or pip.", "Then run it."]


def test_html_is_recognised_by_content_not_only_extension(tmp_path: Path) -> None:
    page = tmp_path / "saved_page"
    page.write_text("<!DOCTYPE html><html><body><p>Hello <i>there</i></p><script>x()</script></body></html>")
    doc = load_file(page)
    assert "Hello" in doc.text and "there" in doc.text
    assert "x()" not in doc.text and "<" not in doc.text


def test_pdf_text_layer_is_extracted(tmp_path: Path) -> None:
    from reportlab.pdfgen import canvas

    path = tmp_path / "report.pdf"
    pdf = canvas.Canvas(str(path))
    pdf.drawString(72, 720, "Quarterly revenue grew by twelve percent.")
    pdf.showPage()
    pdf.drawString(72, 720, "Headcount stayed flat.")
    pdf.save()
    doc = load_file(path)
    assert "Quarterly revenue grew by twelve percent." in doc.text
    assert "Headcount stayed flat." in doc.text


def test_corrupt_pdf_and_oversized_files_fail_with_a_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.7\n garbage")
    with pytest.raises(LoadError, match="PDF"):
        load_file(bad)
    big = tmp_path / "big.txt"
    big.write_text("x" * 2000)
    with pytest.raises(LoadError, match="limit"):
        load_file(big, max_bytes=1000)


def test_markdown_front_matter_narrows_acl_and_sets_title(tmp_path: Path) -> None:
    meta, body = parse_front_matter("---\ntitle: Pay\nacl: [hr, finance]\n---\n# Body\ntext\n")
    assert meta == {"title": "Pay", "acl": ["hr", "finance"]}
    assert body.startswith("# Body")
    note = tmp_path / "n.md"
    note.write_text("---\nacl: [hr]\n---\n# Salaries\nLevel 1 pays well.\n")
    doc = load_file(note)
    assert doc.title == "Salaries" and doc.meta["acl"] == ["hr"] and "acl" not in doc.text
