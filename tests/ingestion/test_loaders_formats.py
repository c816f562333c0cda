"""More formats (Word, source code) chosen by content, and section headings that chunks can cite."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from ingestion.loaders import LoadError, load_file


def _write_docx(path: Path) -> None:
    import docx

    document = docx.Document()
    document.core_properties.title = "Travel policy"
    document.add_heading("Travel policy", level=0)
    document.add_paragraph("This policy covers business trips.")
    document.add_heading("Booking flights", level=1)
    document.add_paragraph("Book economy for flights under six hours.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Region", "Daily allowance"
    table.cell(1, 0).text, table.cell(1, 1).text = "EU", "60 EUR"
    document.add_heading("Hotels", level=2)
    document.add_paragraph("Stay within walking distance of the office.")
    document.save(str(path))


def _assert_headings_point_at_their_text(text: str, headings: list[tuple[int, str]]) -> None:
    offsets = [offset for offset, _ in headings]
    assert offsets == sorted(offsets)
    for offset, heading in headings:
        assert text[offset:].startswith(heading), (offset, heading, text[offset : offset + 40])


def test_docx_paragraphs_tables_and_headings_in_body_order(tmp_path: Path) -> None:
    path = tmp_path / "travel.docx"
    _write_docx(path)
    doc = load_file(path)
    assert doc.title == "Travel policy"
    lines = doc.text.splitlines()
    assert lines == [
        "Travel policy",
        "This policy covers business trips.",
        "Booking flights",
        "Book economy for flights under six hours.",
        "Region | Daily allowance",
        "EU | 60 EUR",
        "Hotels",
        "Stay within walking distance of the office.",
    ]
    assert [h for _, h in doc.headings] == ["Travel policy", "Booking flights", "Hotels"]
    _assert_headings_point_at_their_text(doc.text, doc.headings)
    # The table row sits in the "Booking flights" section, before "Hotels" starts.
    table_at = doc.text.index("EU | 60 EUR")
    assert doc.headings[1][0] < table_at < doc.headings[2][0]


@pytest.mark.parametrize("name", ["travel.bin", "travel_no_extension"])
def test_docx_is_recognised_by_content_whatever_its_name(tmp_path: Path, name: str) -> None:
    original = tmp_path / "travel.docx"
    _write_docx(original)
    renamed = tmp_path / name
    renamed.write_bytes(original.read_bytes())
    assert load_file(renamed).text == load_file(original).text


def test_other_zips_and_broken_docx_fail_with_a_reason(tmp_path: Path) -> None:
    other = tmp_path / "report.docx"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(LoadError, match=r"word/document\.xml"):
        load_file(other)
    truncated = tmp_path / "cut.docx"
    truncated.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(LoadError, match="corrupt"):
        load_file(truncated)
    legacy = tmp_path / "old.doc"
    legacy.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100)
    with pytest.raises(LoadError, match="legacy Office"):
        load_file(legacy)


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("retry.py", "def retry(times: int) -> None:\n    for _ in range(times):\n        attempt()\n"),
        ("server.go", 'package main\n\nfunc main() {\n\tprintln("up")\n}\n'),
        ("deploy.yaml", "replicas: 3\nimage:\n  tag: v1.2\n"),
        ("schema.sql", "CREATE TABLE users (\n  id INT PRIMARY KEY\n);\n"),
        ("settings.json", '{\n  "timeout": 30\n}\n'),
        ("lib.rs", "pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n"),
    ],
)
def test_source_code_is_indexed_verbatim_and_titled_by_file_name(tmp_path: Path, name: str, source: str) -> None:
    path = tmp_path / name
    path.write_text(source)
    doc = load_file(path)
    assert doc.title == name
    assert doc.text == source.rstrip()  # indentation and line structure survive


def test_content_decides_over_the_extension(tmp_path: Path) -> None:
    from reportlab.pdfgen import canvas

    pdf_as_txt = tmp_path / "notes.txt"
    pdf = canvas.Canvas(str(pdf_as_txt))
    pdf.drawString(72, 720, "Invoices are due in thirty days.")
    pdf.save()
    assert "Invoices are due in thirty days." in load_file(pdf_as_txt).text

    html_as_txt = tmp_path / "export.txt"
    html_as_txt.write_text("<!DOCTYPE html><html><body><h2>Refunds</h2><p>Within <b>14</b> days.</p></body></html>")
    doc = load_file(html_as_txt)
    assert "<" not in doc.text and doc.headings == [(0, "Refunds")]

    binary_as_code = tmp_path / "tool.py"
    binary_as_code.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)))
    with pytest.raises(LoadError, match="binary"):
        load_file(binary_as_code)

    unknown = tmp_path / "data.xyz"
    unknown.write_text("plain words")
    with pytest.raises(LoadError, match="unsupported file type '.xyz'"):
        load_file(unknown)


def test_markdown_headings_atx_and_setext_but_not_inside_code_fences(tmp_path: Path) -> None:
    note = tmp_path / "runbook.md"
    note.write_text(
        "---\ntitle: Runbook\n---\n\n"
        "# Runbook\nIntro.\n\n"
        "## Restart the worker ##\n"
        "```bash\n# not a heading, a shell comment\nkb worker restart\n```\n\n"
        "Rollback\n========\n\nRevert the release.\n\n"
        "- a list item\n---\n\n"
        "### Contacts\nOn-call: ops.\n"
    )
    doc = load_file(note)
    assert [h for _, h in doc.headings] == ["Runbook", "Restart the worker", "Rollback", "Contacts"]
    # A Markdown section starts at its heading line, `#` markers included.
    for offset, heading in doc.headings:
        line = doc.text[offset:].split("\n", 1)[0]
        assert line.lstrip("#").strip().rstrip("#").strip() == heading
        assert offset == 0 or doc.text[offset - 1] == "\n"
    assert doc.text[doc.headings[1][0] :].startswith("## Restart the worker")


def test_html_headings_h1_to_h4_with_inline_markup(tmp_path: Path) -> None:
    page = tmp_path / "guide.html"
    page.write_text(
        "<html><head><title>Guide</title></head><body><nav><h2>Site menu</h2></nav>"
        "<h1>Install <code>kb</code></h1><p>Download it.</p>"
        "<h2>On   Linux</h2><p>Use <b>apt</b>.</p><h3>Re<em>act</em> UI</h3><p>npm i.</p>"
        "<h4>Notes</h4><p>None.</p><h5>Fine print</h5><p>Small.</p><h2></h2></body></html>"
    )
    doc = load_file(page)
    assert doc.title == "Guide"
    assert [h for _, h in doc.headings] == ["Install kb", "On Linux", "React UI", "Notes"]
    _assert_headings_point_at_their_text(doc.text, doc.headings)
    assert "Site menu" not in doc.text and "\ue000" not in doc.text
    assert doc.text[doc.headings[1][0] :].startswith("On Linux\nUse")
