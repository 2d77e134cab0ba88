"""Reading documents: the main text of HTML pages and the text of PDF files."""

import io

from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, NameObject

from chatgate.providers.browsing.extract import extract


def pdf_with_text(text: str) -> bytes:
    """A one-page PDF holding ``text`` in Helvetica, written by hand (offsets computed)."""
    stream = f"BT /F1 14 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_the_text_of_a_pdf_is_read() -> None:
    document = extract("http://site/report.pdf", pdf_with_text("The tide tables of Velmora list 14 ports."))
    assert document is not None
    assert "Velmora list 14 ports" in document.text
    assert document.title == "report.pdf"


def test_the_main_text_of_a_page_is_kept_and_its_chrome_dropped() -> None:
    html = (
        "<html><head><title>Velmora harbour</title></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/news'>News</a></nav>"
        "<article><h1>The harbour</h1><p>"
        + "The harbour master of Velmora is Ostrander Quill, who has kept the port since 1987. " * 3
        + "</p></article><footer>Copyright 2026 Velmora Council</footer></body></html>"
    )
    document = extract("http://site/harbour", html.encode(), "text/html; charset=utf-8")
    assert document is not None
    assert "harbour" in document.title  # the page's heading or its <title>
    assert "Ostrander Quill" in document.text
    assert "Copyright" not in document.text


def test_binary_files_are_not_read() -> None:
    assert extract("http://site/blob", b"\x00\x01\x02" * 100, "application/octet-stream") is None


def test_a_pdf_stream_that_inflates_past_the_bound_is_left_out() -> None:
    """A few kilobytes that would inflate to 50 MB of page content: not read, and no error escapes."""
    writer = PdfWriter()
    page = writer.add_blank_page(200, 200)
    content = DecodedStreamObject()
    content.set_data(b"BT /F1 12 Tf 10 10 Td (bomb) Tj ET\n" + b" " * 50_000_000)
    page[NameObject("/Contents")] = writer._add_object(content.flate_encode())
    out = io.BytesIO()
    writer.write(out)
    assert len(out.getvalue()) < 200_000
    assert extract("https://example.com/bomb.pdf", out.getvalue(), "application/pdf") is None
