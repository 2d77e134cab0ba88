"""Images in chat: a text-only local model answers from what image analysis reads in the picture."""

import base64
import io
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.e2e.conftest import API_KEY, QWEN, SMALL, Server, Spec
from tests.website import Page, Site, website

QUESTION = "What number is written in the image? Answer with the number only."


def hello_42() -> bytes:
    image = Image.new("RGB", (480, 160), "white")
    ImageDraw.Draw(image).text((30, 40), "HELLO 42", fill="black", font=ImageFont.load_default(size=64))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def ask(url: str, text: str = QUESTION) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with website(
        {"/hello.png": Page(hello_42(), "image/png"), "/secret.png": Page(hello_42(), "image/png")}
    ) as s:
        yield s


def test_an_image_as_a_data_url_is_read(client: openai.OpenAI, spec: Spec) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=QWEN,
        messages=ask(data_url(hello_42())),
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    spec.validate("CreateChatCompletionResponse", raw.http_response.json())
    answer = raw.parse()
    assert "42" in (answer.choices[0].message.content or "")
    assert answer.usage is not None and answer.usage.prompt_tokens > 40  # the description is in the prompt


def test_an_image_at_an_http_url_is_fetched_and_read(client: openai.OpenAI, site: Site) -> None:
    stream = client.chat.completions.create(
        model=QWEN,
        messages=ask(site.url("/hello.png")),  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert "42" in text
    assert site.hits["/hello.png"] >= 1
    assert "authorization" not in site.headers["/hello.png"]  # the caller's token never goes onward


def test_file_url_parts_are_accepted_too(client: openai.OpenAI) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": QUESTION},
                {"type": "file_url", "file_url": {"url": data_url(hello_42())}},
            ],
        }
    ]
    answer = client.chat.completions.create(model=QWEN, messages=messages, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    assert "42" in (answer.choices[0].message.content or "")


def bad_request(client: openai.OpenAI, url: str) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=SMALL, messages=ask(url), max_tokens=4)  # type: ignore[arg-type]
    body = caught.value.response.json()
    assert body["success"] is False and body["trace_id"]
    error: dict[str, Any] = body["error"]
    return error


def test_bytes_that_are_not_an_image_are_a_400(client: openai.OpenAI) -> None:
    error = bad_request(client, data_url(b"this is plain text, not a picture"))
    assert error["code"] == "invalid_image"
    assert error["param"] == "messages[0].content[1]"


def test_a_damaged_image_is_a_400(client: openai.OpenAI) -> None:
    error = bad_request(client, data_url(hello_42()[:200]))
    assert error["code"] == "invalid_image"
    assert "damaged" in error["message"]


def test_a_decompression_bomb_is_refused(client: openai.OpenAI) -> None:
    out = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(out, format="PNG")  # 144 megapixels in a few kilobytes
    assert len(out.getvalue()) < 100_000
    error = bad_request(client, data_url(out.getvalue()))
    assert error["code"] == "invalid_image"
    assert "pixels" in error["message"]


def test_a_data_url_that_is_not_base64_is_a_400(client: openai.OpenAI) -> None:
    error = bad_request(client, "data:image/png,notbase64")
    assert error["code"] == "invalid_image"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.2", "[::1]"])
def test_an_image_url_on_a_private_address_is_refused_before_connecting(
    client: openai.OpenAI, site: Site, host: str
) -> None:
    """Only 127.0.0.1 is allow-listed; the same site by any other loopback name is the server's own network."""
    before = site.hits.get("/secret.png", 0)
    error = bad_request(client, site.url("/secret.png", host=host))
    assert error["code"] == "invalid_image"
    assert "not allowed" in error["message"]
    assert site.hits.get("/secret.png", 0) == before  # no connection reached it


def test_a_redirect_to_a_private_address_is_refused(client: openai.OpenAI, site: Site) -> None:
    site.pages["/moved.png"] = Page(b"", status=302, location=site.url("/secret.png", host="localhost"))
    before = site.hits.get("/secret.png", 0)
    error = bad_request(client, site.url("/moved.png"))
    assert "not allowed" in error["message"]
    assert site.hits.get("/secret.png", 0) == before


def test_an_image_url_that_is_not_an_image_is_a_400(client: openai.OpenAI, site: Site) -> None:
    site.pages["/page.html"] = Page(b"<html><body>no picture here</body></html>")
    error = bad_request(client, site.url("/page.html"))
    assert error["code"] == "invalid_image"


def test_an_uploaded_image_is_read_through_its_url(client: openai.OpenAI, server: Server) -> None:
    uploaded = client.files.create(file=("hello.png", hello_42(), "image/png"), purpose="vision")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(hello_42())
    url = server.base_url + "/files/" + uploaded.id
    assert httpx.get(url).content == hello_42()
    answer = client.chat.completions.create(model=QWEN, messages=ask(url), max_tokens=12, temperature=0)  # type: ignore[arg-type]
    assert "42" in (answer.choices[0].message.content or "")


def test_only_images_can_be_uploaded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("notes.txt", b"just some text", "text/plain"), purpose="vision")
    assert caught.value.response.json()["error"]["param"] == "file"


@pytest.mark.parametrize(
    ("declared", "status", "code", "param"),
    [
        (30_000_000, b"400", "invalid_value", "file"),  # over the upload limit (25 MB)
        (1_000_000_000, b"413", "request_too_large", None),  # over any request body's (50 MB)
    ],
    ids=["over the upload limit", "over the body limit"],
)
def test_an_oversized_upload_is_refused_before_it_is_read(
    server: Server, declared: int, status: bytes, code: str, param: str | None
) -> None:
    """A size announced and never sent: the answer comes from the header alone."""
    host, port = server.base_url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {declared}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head.encode() + b"--x\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            piece = connection.recv(65536)
            if not piece:
                break
            answer += piece
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == status
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == code and body["error"]["param"] == param
    assert "limited" in body["error"]["message"] or "larger than" in body["error"]["message"]
