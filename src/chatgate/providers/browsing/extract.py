"""The readable text of a fetched page or a file: HTML through trafilatura, PDF through pypdf.

A PDF is read within bounds, so a small file cannot make the reader inflate gigabytes (a
decompression bomb): each stream inflates to at most PDF_STREAM_BYTES, at most MAX_PDF_PAGES pages
are read, for at most PDF_SECONDS. A document past a bound is left out (as a page that cannot be
read is), and ``chatgate index add`` says so. Callers run this as heavy work (see providers/heavy.py).

pypdf and trafilatura are imported on first use (about 45 MiB that a gateway without browsing never needs).
"""

import io
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain", "text/markdown", "text/x-markdown")
SUFFIXES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".pdf": "application/pdf",
}
MAX_PDF_PAGES = 200
PDF_STREAM_BYTES = 8_000_000
PDF_SECONDS = 5.0
PDF_LIMITS: dict[str, Any] = {
    "maximum_declared_stream_length": PDF_STREAM_BYTES,
    "array_based_stream_maximum_output_length": PDF_STREAM_BYTES,
    "jbig2_maximum_output_length": PDF_STREAM_BYTES,
    "lzw_maximum_output_length": PDF_STREAM_BYTES,
    "run_length_maximum_output_length": PDF_STREAM_BYTES,
    "zlib_maximum_output_length": PDF_STREAM_BYTES,
    "brotli_maximum_output_length": PDF_STREAM_BYTES,
    "image_maximum_buffer_size": PDF_STREAM_BYTES,
    "stream_decoding_work_maximum_length": 4 * PDF_STREAM_BYTES,
}


class DocumentTooLarge(Exception):
    """A document past the reader's bounds."""


@dataclass(frozen=True)
class Document:
    url: str
    title: str
    text: str


def media_type(content_type: str, url: str, body: bytes) -> str:
    """The media type from the header, else from the URL's suffix, else sniffed."""
    declared = content_type.split(";", 1)[0].strip().lower()
    if declared and declared != "application/octet-stream":
        return declared
    suffix = Path(url.split("?", 1)[0]).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if body.startswith(b"%PDF-"):
        return "application/pdf"
    head = body[:512].lstrip().lower()
    return "text/html" if head.startswith((b"<!doctype html", b"<html")) else declared


def extract(url: str, body: bytes, content_type: str = "") -> Document | None:
    """The main text of a document (None when it has none, or is of a kind not read)."""
    kind = media_type(content_type, url, body)
    try:
        if kind in HTML_TYPES:
            return _html(url, body)
        if kind == "application/pdf":
            return _pdf(url, body)
        if kind in TEXT_TYPES:
            text = body.decode("utf-8", errors="replace").strip()
            return Document(url, _text_title(text, url), text) if text else None
    except Exception:  # a malformed document is skipped, whatever its parser raises
        log.info("could not read %s", url, exc_info=True)
    return None


def extract_file(path: Path) -> Document | None:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        return None
    return extract(path.resolve().as_uri(), path.read_bytes(), kind)


def _html(url: str, body: bytes) -> Document | None:
    import trafilatura

    html = body.decode("utf-8", errors="replace")
    text = trafilatura.extract(html, url=url, include_comments=False, include_tables=True, favor_recall=True)
    if not text:
        return None
    metadata = trafilatura.extract_metadata(html, default_url=url)
    title = (metadata.title if metadata is not None else None) or _fallback_title(url)
    return Document(url, title.strip(), text.strip())


def _pdf(url: str, body: bytes) -> Document | None:
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import PdfReadError

    deadline = time.monotonic() + PDF_SECONDS
    try:
        with apply_configuration(None, **PDF_LIMITS):
            reader = PdfReader(io.BytesIO(body))
            pages = []
            for page in reader.pages[:MAX_PDF_PAGES]:
                if time.monotonic() > deadline:
                    raise DocumentTooLarge(f"reading {url} took longer than {PDF_SECONDS:g} s")
                pages.append(page.extract_text() or "")
            meta = reader.metadata
            title = (meta.title if meta is not None else None) or _fallback_title(url)
    except PdfReadError:
        return None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    return Document(url, str(title).strip(), text) if text else None


def _text_title(text: str, url: str) -> str:
    first = text.splitlines()[0].strip()
    heading = re.sub(r"^#+\s*", "", first)
    return heading[:120] if heading and len(first) <= 200 else _fallback_title(url)


def _fallback_title(url: str) -> str:
    name = Path(url.split("?", 1)[0].rstrip("/")).name
    return name or url
