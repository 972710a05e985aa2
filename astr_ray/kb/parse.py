"""Documents into text: plain text, Markdown, HTML and PDF.

``parse_document(name, data, mime=..., max_bytes=...)`` picks a parser by the name's
extension (for a URL without one, by its MIME type, then by sniffing the bytes) and
returns a ``ParsedDoc``. HTML becomes readable text with its headings kept as Markdown
``#`` lines, so the chunker can follow the document's sections. Every refusal is a
``KnowledgeError`` whose message says what was wrong: too large, an unsupported kind,
binary data posing as text, a malformed or encrypted PDF, no text at all.
CPU-bound (a large PDF takes seconds): call it from a worker, not an event loop.
"""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import unquote, urlsplit

from astr_ray.errors import KnowledgeError

__all__ = ["SUPPORTED", "DocKind", "ParsedDoc", "parse_document"]

DocKind = Literal["text", "markdown", "html", "pdf"]

SUPPORTED = {".txt", ".md", ".markdown", ".html", ".htm", ".pdf"}

_BY_EXT: dict[str, DocKind] = {
    ".txt": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
_BY_MIME: dict[str, DocKind] = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}


@dataclass(frozen=True)
class ParsedDoc:
    """A document's title and its text (normalized newlines; Markdown headings kept)."""

    title: str
    text: str
    kind: DocKind


def parse_document(name: str, data: bytes, *, mime: str | None = None, max_bytes: int) -> ParsedDoc:
    """Parse ``data`` (the bytes of file or URL ``name``) into a ``ParsedDoc``.

    ``mime`` (a Content-Type, parameters allowed) decides the kind only when ``name``
    has no supported extension; its ``charset`` is a hint for decoding text. Raises
    ``KnowledgeError`` (context ``document=``) for anything that cannot be indexed.
    """
    shown = _display_name(name)
    if len(data) > max_bytes:
        raise KnowledgeError(
            f"document is {_mb(len(data))} MB; the limit is {_mb(max_bytes)} MB", document=shown
        )
    kind, charset = _kind(name, mime, data)
    stem = _stem(name)
    if kind == "pdf":
        title, text = _parse_pdf(data, shown)
        title = title or stem
    else:
        raw = _decode(data, charset, shown, is_html=kind == "html")
        if kind == "html":
            title, text = _html_to_text(raw)
            title = title or _first_heading(text) or stem
        elif kind == "markdown":
            text = _strip_front_matter(_newlines(raw))
            title = _first_heading(text) or stem
        else:
            text = _newlines(raw)
            title = stem
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if not text:
        hint = " (a scanned PDF needs OCR first)" if kind == "pdf" else ""
        raise KnowledgeError(f"document has no text{hint}", document=shown)
    return ParsedDoc(title=title.strip()[:300], text=text, kind=kind)


# -- kind and name ---------------------------------------------------------------------


def _is_url(name: str) -> bool:
    return "://" in name[:16]


def _path_part(name: str) -> str:
    return unquote(urlsplit(name).path) if _is_url(name) else name.replace("\\", "/")


def _display_name(name: str) -> str:
    """The name for messages: a URL without its query and fragment (they may hold keys)."""
    if _is_url(name):
        parts = urlsplit(name)
        return f"{parts.scheme}://{parts.hostname or ''}{parts.path}"
    return name


def _stem(name: str) -> str:
    path = PurePosixPath(_path_part(name))
    if path.stem:
        return path.stem
    if _is_url(name):
        return urlsplit(name).hostname or name
    return name


def _kind(name: str, mime: str | None, data: bytes) -> tuple[DocKind, str | None]:
    ext = PurePosixPath(_path_part(name)).suffix.lower()
    media, charset = _parse_mime(mime)
    if ext in _BY_EXT:
        return _BY_EXT[ext], charset
    if media in _BY_MIME:
        return _BY_MIME[media], charset
    if ext and not _is_url(name):
        raise _unsupported(ext, name)
    if media in (None, "application/octet-stream"):
        head = data[:1024].lstrip().lower()
        if head.startswith(b"%pdf-"):
            return "pdf", None
        if head.startswith((b"<!doctype html", b"<html")):
            return "html", None
    raise _unsupported(media or ext or "(unknown)", name)


def _unsupported(what: str, name: str) -> KnowledgeError:
    kinds = ", ".join(sorted(SUPPORTED))
    return KnowledgeError(
        f"unsupported document kind {what!r} (supported: {kinds})", document=_display_name(name)
    )


def _parse_mime(mime: str | None) -> tuple[str | None, str | None]:
    if not mime:
        return None, None
    media, _, params = mime.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip("\"'")
    return media.strip().lower() or None, charset


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f}".removesuffix(".0")


# -- text decoding ---------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# C0 controls other than tab, newline, vertical tab, form feed and carriage return.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\ufffd]")


def _decode(data: bytes, charset: str | None, shown: str, *, is_html: bool) -> str:
    """Bytes to text: a BOM, then UTF-8, then the hinted or a detected charset.

    Binary data posing as text is refused: NUL bytes outside UTF-16/32, or more than
    a few percent of control or undecodable characters after decoding.
    """
    text: str | None = None
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = _try_decode(data, encoding)
            break
    if text is None:
        if b"\x00" in data:
            raise _binary(shown)
        text = _try_decode(data, "utf-8")
    if text is None and charset:
        text = _try_decode(data, charset)
    if text is None:
        from bs4 import UnicodeDammit

        text = UnicodeDammit(data, is_html=is_html).unicode_markup
    if text is None:
        raise _binary(shown)
    sample = text[:100_000]
    if sample and len(_CONTROL.findall(sample)) > 0.02 * len(sample):
        raise _binary(shown)
    return text


def _try_decode(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def _binary(shown: str) -> KnowledgeError:
    return KnowledgeError("document does not look like text (binary data?)", document=shown)


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


_FRONT_MATTER = re.compile(r"\A---\n.*?\n(?:---|\.\.\.)\n", re.DOTALL)
_ATX = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def _strip_front_matter(text: str) -> str:
    m = _FRONT_MATTER.match(text[:8192])
    return text[m.end() :] if m else text


def _first_heading(text: str) -> str | None:
    m = _ATX.search(text)
    return m.group(1).strip() if m else None


# -- HTML -------------------------------------------------------------------------------

_DROP = ["script", "style", "nav", "noscript", "template", "svg", "canvas", "iframe", "head"]
_HEADINGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
_PARAGRAPHS = [
    "p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote",
    "pre", "table", "ul", "ol", "dl", "figure", "form", "fieldset", "details", "address",
]  # fmt: skip
_LINES = ["li", "tr", "dt", "dd", "figcaption", "summary", "caption", "hr"]
_SPACE = re.compile(r"\s+")


def _html_to_text(html: str) -> tuple[str | None, str]:
    """Readable text of an HTML page and its <title>.

    Scripts, styles, navigation and other non-content elements are dropped; headings
    become Markdown ``#`` lines, block elements paragraph breaks, list items ``- ``
    lines, table cells are separated by `` | ``; whitespace inside <pre> is kept.
    """
    from bs4 import BeautifulSoup, NavigableString
    from bs4.element import PreformattedString

    soup = BeautifulSoup(html, "html.parser")
    title = None
    if soup.title is not None:
        title = _SPACE.sub(" ", soup.title.get_text()).strip() or None
    for tag in soup.find_all(_DROP):
        tag.decompose()
    for node in list(soup.find_all(string=True)):
        if isinstance(node, PreformattedString):  # comments, doctype, CDATA...
            node.extract()
        elif node.find_parent("pre") is None:
            node.replace_with(NavigableString(_SPACE.sub(" ", str(node))))
    for tag in soup.find_all("br"):
        tag.replace_with(NavigableString("\n"))
    for tag in soup.find_all(["td", "th"]):
        tag.insert_after(NavigableString(" | "))
    for tag in soup.find_all("li"):
        tag.insert(0, NavigableString("- "))
    for tag in soup.find_all(_LINES):
        tag.insert_before(NavigableString("\n"))
    for tag in soup.find_all(_PARAGRAPHS):
        tag.insert_before(NavigableString("\n\n"))
        tag.insert_after(NavigableString("\n\n"))
    for tag in soup.find_all(_HEADINGS):
        text = _SPACE.sub(" ", tag.get_text(" ")).strip()
        level = int(tag.name[1])
        tag.replace_with(NavigableString(f"\n\n{'#' * level} {text}\n\n" if text else ""))
    text = soup.get_text()
    lines = (line.strip(" \t").removesuffix(" |") for line in text.split("\n"))
    return title, re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


# -- PDF --------------------------------------------------------------------------------


def _parse_pdf(data: bytes, shown: str) -> tuple[str | None, str]:
    """Title and text of a PDF: page texts joined by blank lines."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # Many PDFs are encrypted with an empty user password (owner restrictions
            # only): those open; others cannot be read without the password.
            try:
                opened = reader.decrypt("")
            except (PyPdfError, NotImplementedError) as exc:
                raise KnowledgeError(
                    f"encrypted PDF cannot be opened ({exc})", document=shown
                ) from exc
            if not opened:
                raise KnowledgeError("encrypted PDF needs a password", document=shown)
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata is not None else None
    except KnowledgeError:
        raise
    except Exception as exc:  # pypdf raises many kinds on malformed input
        raise KnowledgeError(
            f"malformed PDF: {type(exc).__name__}: {str(exc)[:200]}", document=shown
        ) from exc
    text = "\n\n".join(_newlines(page).strip() for page in pages)
    return (str(title) if title else None), text
