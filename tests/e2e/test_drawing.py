"""The drawing chat models: a JSON plan, a markdown image, a download link; and /v1/images/generations."""

import base64
import io
import json
import re
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.e2e.conftest import PAINTER, SKETCH, ImagesPeer, Server, Spec, ledger_checked, sse_events

# The reply's shape: the plan as a JSON block, the image, the download link, a sentence.
REPLY = re.compile(
    r"^```json\n(?P<plan>\{.*?\})\n```\n\n"
    r"!\[(?P<id>file-[A-Za-z0-9_-]+)\]\((?P<url>http://[^)\s]+/files/(?P=id))\)\n\n"
    r"\[Download⏬\]\((?P<download>(?P=url)\?download=1)\)\n\n"
    r"(?P<caption>\S.*)$",
    re.DOTALL,
)
DRAW = [{"role": "user", "content": "Draw a red apple on a white table."}]
verified = ledger_checked("server")  # `chatgate ledger verify` passes after every test


def check_reply(content: str, sizes: list[str]) -> re.Match[str]:
    match = REPLY.match(content)
    assert match is not None, content
    plan = json.loads(match["plan"])
    assert set(plan) == {"prompt", "size"}
    assert plan["prompt"].strip()
    assert plan["size"] in sizes
    return match


def fetch_png(url: str, size: str, *, download: bool = False) -> bytes:
    response = httpx.get(url + ("?download=1" if download else ""), timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment" if download else "inline")
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == "PNG"
        assert f"{image.width}x{image.height}" == size
        image.verify()
    return response.content


def test_the_sketch_model_answers_with_plan_image_and_download_link(
    client: openai.OpenAI, spec: Spec
) -> None:
    raw = client.chat.completions.with_raw_response.create(model=SKETCH, messages=DRAW)  # type: ignore[arg-type]
    spec.validate("CreateChatCompletionResponse", raw.http_response.json())
    answer = raw.parse()
    match = check_reply(answer.choices[0].message.content or "", ["256x256", "512x384"])
    size = json.loads(match["plan"])["size"]
    assert fetch_png(match["url"], size) == fetch_png(match["url"], size, download=True)
    assert answer.choices[0].finish_reason == "stop"
    # Usage counts both model steps: the plan and the drawing.
    assert (
        answer.usage is not None and answer.usage.completion_tokens > 10 and answer.usage.prompt_tokens > 100
    )


def test_the_sketch_model_streams(http: httpx.Client, spec: Spec) -> None:
    body = {"model": SKETCH, "messages": DRAW, "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        spec.validate("CreateChatCompletionStreamResponse", chunk)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    match = check_reply(content, ["256x256", "512x384"])
    fetch_png(match["url"], json.loads(match["plan"])["size"])
    assert chunks[-1]["usage"]["total_tokens"] > 0


def peer_calls(peer: ImagesPeer) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = httpx.get(peer.url + "/stats").json()
    return calls


def test_the_images_api_backend_draws_what_the_plan_says(
    client: openai.OpenAI, images_peer: ImagesPeer
) -> None:
    before = len(peer_calls(images_peer))
    answer = client.chat.completions.create(model=PAINTER, messages=DRAW)  # type: ignore[arg-type]
    match = check_reply(answer.choices[0].message.content or "", ["1024x1024", "256x256"])
    plan = json.loads(match["plan"])
    fetch_png(match["url"], plan["size"])
    calls = peer_calls(images_peer)[before:]
    assert calls == [{"endpoint": "generations", "prompt": plan["prompt"], "size": plan["size"], "images": 0}]


def test_an_input_image_goes_to_the_edits_endpoint(
    client: openai.OpenAI, images_peer: ImagesPeer, server: Server
) -> None:
    first = client.chat.completions.create(model=PAINTER, messages=DRAW)  # type: ignore[arg-type]
    match = check_reply(first.choices[0].message.content or "", ["1024x1024", "256x256"])
    before = len(peer_calls(images_peer))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Make the apple green."},
                {
                    "type": "file_url",
                    "file_url": {"url": match["url"]},
                },  # chatgate's own file: read, not fetched
            ],
        }
    ]
    answer = client.chat.completions.create(model=PAINTER, messages=messages)  # type: ignore[arg-type]
    again = check_reply(answer.choices[0].message.content or "", ["1024x1024", "256x256"])
    assert again["id"] != match["id"]
    calls = peer_calls(images_peer)[before:]
    assert [(c["endpoint"], c["images"]) for c in calls] == [("edits", 1)]


def test_images_generations_endpoint(client: openai.OpenAI) -> None:
    result = client.images.generate(model=SKETCH, prompt="a yellow sun over green hills", size="512x384")  # type: ignore[arg-type]
    assert result.data and result.data[0].url
    fetch_png(result.data[0].url, "512x384")
    encoded = client.images.generate(
        model=PAINTER,
        prompt="a blue square",
        size="256x256",  # type: ignore[arg-type]
        response_format="b64_json",
    )
    assert encoded.data and encoded.data[0].b64_json
    with Image.open(io.BytesIO(base64.b64decode(encoded.data[0].b64_json))) as image:
        assert image.size == (256, 256)


def test_a_size_the_model_does_not_offer_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model=SKETCH, prompt="a cat", size="1792x1024")
    assert caught.value.response.json()["error"]["param"] == "size"


def test_a_chat_model_is_not_an_image_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="small", prompt="a cat")
    assert caught.value.response.json()["error"]["param"] == "model"


def test_an_unknown_file_is_an_enveloped_404(server: Server) -> None:
    response = httpx.get(server.base_url + "/files/file-" + "x" * 32)
    assert response.status_code == 404
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == "not_found"


def test_quota_pays_for_every_model_step_and_the_image(server: Server) -> None:
    key = server.cli("keys", "create", "--user", "painter@example.com").strip().splitlines()[-1]
    user = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=120)
    answer = user.chat.completions.create(model=SKETCH, messages=DRAW)  # type: ignore[arg-type]
    assert answer.usage is not None
    with pytest.raises(openai.BadRequestError):  # refused before any model ran: free
        user.chat.completions.create(
            model=SKETCH,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]}],
        )
    usage = httpx.get(server.base_url + "/v1/usage", headers={"authorization": f"Bearer {key}"}).json()
    # One credit per token at the default price, plus the sketch model's image price.
    assert usage["credits_used"] == answer.usage.total_tokens + 1000
    assert usage["requests"] == 2 and usage["total_tokens"] == answer.usage.total_tokens
    granted = int(server.env.get("CHATGATE_FREE_CREDITS", "1000000"))
    assert usage["credits_used"] + usage["credits_left"] == granted  # used + left = granted
