"""Parsing documents, chunking text, and BM25 tokens (astr_ray/kb/{parse,chunk,tokens}.py)."""

from __future__ import annotations

import io
import itertools
import os

import pytest

from astr_ray.errors import KnowledgeError
from astr_ray.kb.chunk import Chunk, chunk_hash, chunk_text
from astr_ray.kb.parse import SUPPORTED, ParsedDoc, parse_document
from astr_ray.kb.tokens import bm25_tokens

MB = 2**20


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal valid PDF with one Helvetica text object per page (offsets computed)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (" ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages))).encode(), len(pages)),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in text.split("\n"):
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    info = b""
    if title is not None:
        objects.append(b"<< /Title (%s) >>" % title.encode("latin-1"))
        info = b" /Info %d 0 R" % len(objects)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\n" % (len(objects) + 1, info)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def parse(name: str, data: bytes, mime: str | None = None) -> ParsedDoc:
    return parse_document(name, data, mime=mime, max_bytes=20 * MB)


# -- parse --------------------------------------------------------------------------------


def test_supported_kinds() -> None:
    assert {".txt", ".md", ".markdown", ".html", ".htm", ".pdf"} == SUPPORTED


def test_plain_text_utf8_bom_and_legacy_charsets() -> None:
    doc = parse("notes/readme.txt", "Hello\r\nwörld\r\n\r\n\r\n\r\nbye".encode())
    assert doc == ParsedDoc(title="readme", text="Hello\nwörld\n\nbye", kind="text")
    assert parse("a.txt", "\ufeffBOM text".encode()).text == "BOM text"
    assert parse("a.txt", "UTF-16 text".encode("utf-16")).text == "UTF-16 text"
    gbk = "向量数据库是一种专门存储向量的数据库\uff0c支持相似度搜索。" * 3
    assert parse("zh.txt", gbk.encode("gbk")).text == gbk
    # A charset named by the server wins over guessing.
    latin = "Crème brûlée, déjà vu, naïve café."
    assert parse("u", latin.encode("latin-1"), "text/plain; charset=ISO-8859-1").text == latin


def test_markdown_title_and_front_matter() -> None:
    md = "---\ntitle: x\ntags: [a]\n---\nIntro.\n\n# Getting started\n\nText.\n"
    doc = parse("guide.md", md.encode())
    assert doc.kind == "markdown"
    assert doc.title == "Getting started"
    assert doc.text == "Intro.\n\n# Getting started\n\nText."
    assert parse("x.markdown", b"no heading").title == "x"


def test_html_readable_text_with_markdown_headings() -> None:
    html = b"""<!doctype html><html><head><title> The  Guide </title>
    <style>body { color: red }</style><script>var secret = 1;</script></head>
    <body><nav><a href="/">Home</a> | <a href="/docs">Docs</a></nav>
    <h1>Install</h1><p>Run the   <b>installer</b>
    now.</p><!-- a comment -->
    <h2>On <em>Linux</em></h2><ul><li>apt install foo</li><li>foo --help</li></ul>
    <pre>line one
      indented two</pre>
    <table><tr><th>Key</th><th>Value</th></tr><tr><td>a</td><td>1</td></tr></table>
    <p>Line<br>break</p></body></html>"""
    doc = parse("page.html", html)
    assert doc.kind == "html"
    assert doc.title == "The Guide"
    for gone in ("color", "secret", "Home", "comment"):
        assert gone not in doc.text
    assert doc.text.startswith("# Install\n\nRun the installer now.")
    assert "## On Linux" in doc.text
    assert "- apt install foo\n- foo --help" in doc.text
    assert "line one\nindented two" in doc.text
    assert "Key | Value\na | 1" in doc.text
    assert "Line\nbreak" in doc.text
    # The headings are what the chunker follows.
    headings = {c.heading for c in chunk_text(doc.text, size=200, overlap=0, markdown=True)}
    assert headings == {"Install", "Install > On Linux"}


def test_kind_by_mime_or_sniffing_for_urls() -> None:
    page = b"<html><head><title>T</title></head><body><p>hello</p></body></html>"
    assert parse("https://example.com/docs/", page, "text/html; charset=utf-8").kind == "html"
    assert parse("https://example.com/page.php?id=3", page, "text/html").title == "T"
    assert parse("https://example.com/file", make_pdf(["x y"])).kind == "pdf"
    assert parse("https://example.com/a", b"plain words", "text/plain").title == "a"
    # An extension wins over a generic Content-Type.
    assert parse("https://x.org/r.md", b"# Title\n", "application/octet-stream").kind == "markdown"


def test_pdf_pages_and_title() -> None:
    data = make_pdf(["Hello PDF world.\nSecond line (with parens).", "Page two."], "My Doc")
    doc = parse("report.pdf", data)
    assert doc.kind == "pdf"
    assert doc.title == "My Doc"
    assert doc.text == "Hello PDF world.\nSecond line (with parens).\n\nPage two."
    assert parse("untitled.pdf", make_pdf(["x"])).title == "untitled"


def test_too_large() -> None:
    with pytest.raises(KnowledgeError) as info:
        parse_document("big.txt", b"a" * int(31.2 * MB), max_bytes=20 * MB)
    assert str(info.value) == "document is 31.2 MB; the limit is 20 MB (document=big.txt)"


@pytest.mark.parametrize(
    ("name", "mime", "data"),
    [
        ("slides.pptx", None, b"PK\x03\x04"),
        ("https://example.com/logo", "image/png", b"\x89PNG\r\n"),
        ("https://example.com/blob", None, b"who knows"),
    ],
)
def test_unsupported(name: str, mime: str | None, data: bytes) -> None:
    with pytest.raises(KnowledgeError, match=r"unsupported document kind .*supported: \.htm"):
        parse(name, data, mime)


def test_unsupported_url_message_hides_the_query() -> None:
    with pytest.raises(KnowledgeError) as info:
        parse("https://example.com/x.docx?token=s3cret", b"x", "application/msword")
    assert "s3cret" not in str(info.value)
    assert info.value.context == {"document": "https://example.com/x.docx"}


def test_binary_garbage_posing_as_text() -> None:
    noise = os.urandom(4096)
    with pytest.raises(KnowledgeError, match="does not look like text"):
        parse("data.txt", noise)
    no_nul = bytes(b % 31 + 1 for b in noise)  # control characters, no NUL bytes
    with pytest.raises(KnowledgeError, match="does not look like text"):
        parse("data.md", no_nul)


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.4\ngarbage", make_pdf(["Hello"])[:150], b"not a pdf at all"],
    ids=["garbage", "truncated", "no-header"],
)
def test_broken_pdf(data: bytes) -> None:
    with pytest.raises(KnowledgeError, match="malformed PDF") as info:
        parse("broken.pdf", data)
    assert info.value.context == {"document": "broken.pdf"}


def test_encrypted_pdf() -> None:
    from pypdf import PdfReader, PdfWriter

    def encrypted(user_password: str) -> bytes:
        writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(["Secret text."]))))
        writer.encrypt(user_password, "owner", algorithm="RC4-128")
        buf = io.BytesIO()
        writer.write(buf)
        return buf.getvalue()

    with pytest.raises(KnowledgeError, match="encrypted PDF needs a password"):
        parse("locked.pdf", encrypted("pw"))
    # Owner-only protection (empty user password) still reads.
    assert parse("open.pdf", encrypted("")).text == "Secret text."


def test_no_text() -> None:
    with pytest.raises(KnowledgeError, match="document has no text"):
        parse("empty.txt", b"  \n\t\n")
    with pytest.raises(KnowledgeError, match="no text"):
        parse("blank.html", b"<html><script>x()</script><p>  </p></html>")
    with pytest.raises(KnowledgeError, match=r"no text \(a scanned PDF needs OCR"):
        parse("scan.pdf", make_pdf([""]))


# -- chunk --------------------------------------------------------------------------------

LOREM = (
    "Vector search finds documents by meaning. It compares embeddings with an inner "
    "product. Lexical search finds rare words exactly! Hybrid search does both; it fuses "
    "the two rankings. Does it help? Usually it does, on mixed queries. "
)


def test_chunks_respect_size_and_carry_overlap() -> None:
    text = LOREM * 12
    chunks = chunk_text(text, size=200, overlap=50, markdown=False)
    assert len(chunks) > 5
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    for prev, cur in itertools.pairwise(chunks):
        assert 0 < len(cur.text) <= 200
        assert cur.heading is None
        # The next chunk begins with text from the end of the previous one...
        head = cur.text[:20]
        assert head in prev.text[-60:], (prev.text, cur.text)
        # ...cut at a word boundary, and no longer than the overlap.
        assert prev.text[prev.text.rindex(head) - 1] == " "
    # Sentences are kept whole where they fit: chunks end at sentence ends.
    assert all(c.text[-1] in ".!?;" for c in chunks)


def test_chunk_no_overlap_reassembles_the_text() -> None:
    text = LOREM * 5
    chunks = chunk_text(text, size=120, overlap=0, markdown=False)
    assert " ".join(c.text for c in chunks) == text.strip()


def test_paragraphs_preferred_and_whitespace_normalized() -> None:
    text = "First  paragraph\there.\r\n  It has two lines.   \n\n\n\nSecond\u00a0paragraph.\u200b"
    chunks = chunk_text(text, size=45, overlap=0, markdown=False)
    assert [c.text for c in chunks] == [
        "First paragraph here.\nIt has two lines.",
        "Second paragraph.",
    ]
    assert chunk_text(" \n\n \t ", size=100, overlap=10, markdown=False) == []


def test_long_words_are_cut_hard() -> None:
    chunks = chunk_text("x" * 250, size=100, overlap=10, markdown=False)
    assert all(len(c.text) <= 100 for c in chunks)
    assert "".join(c.text for c in chunks).count("x") >= 250


def test_markdown_sections_and_heading_paths() -> None:
    md = (
        "Preface line.\n\n# Install\n\nGeneral words.\n\n## Linux\n\nRun apt install foo.\n"
        "```sh\n# a comment, not a heading\nfoo --version\n```\n"
        "## Windows ##\nUse the installer.\n\n### Silent mode\nPass /S.\n"
        "# Usage\n" + "Call foo with a file. " * 20
    )
    chunks = chunk_text(md, size=120, overlap=20, markdown=True)
    headings = [c.heading for c in chunks]
    assert headings[:5] == [
        None,
        "Install",
        "Install > Linux",
        "Install > Windows",
        "Install > Windows > Silent mode",
    ]
    assert set(headings[5:]) == {"Usage"}
    assert "# a comment, not a heading" in chunks[2].text
    # Never two sections in one chunk, and overlap does not cross sections.
    assert chunks[3].text == "Use the installer."
    assert chunks[4].text == "Pass /S."
    assert chunks[5].text.startswith("Call foo")
    assert chunks[3].search_text == "Install > Windows\nUse the installer."
    assert Chunk("t", None, 0).search_text == "t"


def test_chinese_split_at_sentence_marks() -> None:
    sentence = "向量数据库把文本变成向量并按相似度检索。"
    text = sentence * 8 + "它快吗\uff1f很快\uff01"
    chunks = chunk_text(text, size=50, overlap=0, markdown=False)
    assert all(len(c.text) <= 50 for c in chunks)
    assert all(c.text.endswith(("。", "\uff01")) for c in chunks)
    assert "".join(c.text for c in chunks) == text
    with_overlap = chunk_text(text, size=50, overlap=10, markdown=False)
    assert with_overlap[1].text.startswith(with_overlap[0].text[-10:])


def test_chunk_hash_ignores_whitespace_variants() -> None:
    a = chunk_hash("Hybrid search\nfuses  two rankings.")
    assert a == chunk_hash("  Hybrid search fuses\ttwo\r\nrankings. ")
    assert a == chunk_hash("Hybrid\u00a0search fuses two rankings.")
    assert a != chunk_hash("Hybrid search fuses two rankings!")
    assert chunk_hash("Cafe\u0301") == chunk_hash("Café")  # NFC
    assert len(a) == 64


def test_chunk_arguments_checked() -> None:
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("x", size=10, overlap=10, markdown=False)


# -- tokens -------------------------------------------------------------------------------


def test_english_tokens() -> None:
    assert bm25_tokens("The Vector-Databases are FAST, aren't they? v2.5 costs 30%") == [
        "vector",
        "database",
        "fast",
        "aren",
        "v2.5",
        "cost",
        "30",
    ]
    assert bm25_tokens("Ünïcode café naïve") == ["ünïcode", "café", "naïve"]
    # Versions stay whole, so that 2.4.1 and 2.1.4 differ.
    assert bm25_tokens("Release 2.4.1, see 3.14.") == ["release", "2.4.1", "see", "3.14"]
    assert bm25_tokens("the of and !!!") == []
    assert bm25_tokens("queries libraries class status") == ["query", "library", "class", "status"]


def test_chinese_tokens_unigrams_and_bigrams() -> None:
    assert bm25_tokens("向量数据库") == [
        "向",
        "量",
        "数",
        "据",
        "库",
        "向量",
        "量数",
        "数据",
        "据库",
    ]
    query = set(bm25_tokens("数据库"))
    assert query <= set(bm25_tokens("什么是向量数据库\uff1f"))
    # Particles are dropped as unigrams, kept inside bigrams.
    assert bm25_tokens("我的书") == ["我", "书", "我的", "的书"]
    mixed = bm25_tokens("用FAISS做向量检索")
    assert "faiss" in mixed and "检索" in mixed and "用" in mixed
