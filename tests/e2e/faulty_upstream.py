"""A misbehaving OpenAI-compatible upstream for the gateway's fault tests (it is the peer under test).

What it does depends on the requested model:
  ok          answers at once (streamed or not), with usage
  flaky       500 on every odd request, ok on every even one
  stall       waits 5 s before answering
  drop        streams two chunks, then cuts the connection
  malformed   streams a chunk that is not JSON
  ratelimit   429 with Retry-After: 1
  badrequest  400 with an OpenAI-style error naming a param
  counting    as many words as the max_completion_tokens (or max_tokens) it was sent, 200 without,
              with usage counted as a tokenizer would: about 4 bytes a token, 765 an image
  nousage     as counting, without usage
  nullusage   as counting, streamed with a usage whose prompt_tokens is null
  noid        a tool call without an id
  refusal     a refusal instead of content
  slow        streams as many words as it was sent max tokens for, one every 50 ms, then usage
  hold        as ok, but a stream stops for 60 s after its first word (a request that stays running)
  leaky       500 whose message names internal addresses (10.1.2.3:8000, fd00::7)
POST /v1/images/generations draws on odd calls and fails with a 500 on even ones.
POST /v1/embeddings answers by model too (see ``embed``): ok, flaky, stall, ratelimit, badrequest as above;
  floats (always floats, whatever was asked), nousage, wrongcount (one vector short),
  wholevectors (768 dimensions whatever 'dimensions' says).
GET /stats answers how many requests each model received; GET /last the last body each model got.
"""

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import random
import struct
import time
from collections import Counter
from typing import Any

import uvicorn
from PIL import Image

seen: Counter[str] = Counter()
last: dict[str, Any] = {}
IMAGE_TOKENS = 765  # what OpenAI charges for a 1024x1024 image in high detail
WORDS = ["Hello", " from", " upstream", "."]


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def usage_chunk(model: str) -> bytes:
    body = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": len(WORDS), "total_tokens": 9 + len(WORDS)},
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def respond(
    send: Any, status: int, body: bytes, kind: bytes = b"application/json", **headers: str
) -> None:
    extra = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", kind), *extra]}
    )
    await send({"type": "http.response.body", "body": body})


def error(message: str, kind: str, code: str | None = None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": code, "param": param}}).encode()


async def until_gone(receive: Any, seconds: float) -> None:
    """Wait ``seconds``, or less if the client leaves (the request's body has been read already)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stats":
        await respond(send, 200, json.dumps(seen).encode())
        return
    if scope["path"] == "/last":
        await respond(send, 200, json.dumps(last).encode())
        return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(raw or b"{}")
    if scope["path"].endswith("/images/generations"):
        await draw(send)
        return
    if scope["path"].endswith("/embeddings"):
        await embed(send, request)
        return
    model = str(request.get("model"))
    seen[model] += 1
    last[model] = request
    if model in ("counting", "nousage", "nullusage", "noid", "refusal"):
        await counted(send, model, request)
        return
    if model == "slow":
        await slowly(send, model, request)
        return
    if model == "flaky" and seen[model] % 2 == 1:
        await respond(send, 500, error("upstream is having a moment", "server_error"))
        return
    if model == "stall":
        await asyncio.sleep(5)
    if model == "leaky":
        message = "connect to backend 10.1.2.3:8000 failed (fallback fd00::7 refused)"
        await respond(send, 500, error(message, "server_error"))
        return
    if model == "ratelimit":
        await respond(
            send,
            429,
            error("Rate limit reached upstream", "rate_limit_error", "rate_limit_exceeded"),
            retry_after="1",
        )
        return
    if model == "badrequest":
        await respond(
            send,
            400,
            error(
                "messages must not be empty upstream", "invalid_request_error", "invalid_value", "messages"
            ),
        )
        return
    if not request.get("stream"):
        message = {"role": "assistant", "content": "".join(WORDS)}
        body = {
            "id": "chatcmpl-up",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": len(WORDS), "total_tokens": 9 + len(WORDS)},
        }
        await respond(send, 200, json.dumps(body).encode())
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    await send(
        {
            "type": "http.response.body",
            "body": chunk(model, {"role": "assistant", "content": ""}),
            "more_body": True,
        }
    )
    for i, word in enumerate(WORDS):
        if model == "drop" and i == 2:
            raise ConnectionAbortedError("cut the stream")  # uvicorn closes the connection mid-body
        if model == "malformed" and i == 2:
            await send({"type": "http.response.body", "body": b"data: {not json\n\n", "more_body": True})
            continue
        await send({"type": "http.response.body", "body": chunk(model, {"content": word}), "more_body": True})
        if model == "hold" and i == 0:
            await until_gone(receive, 60)
        else:
            await asyncio.sleep(0.01)
    tail = chunk(model, {}, "stop") + (
        usage_chunk(model) if (request.get("stream_options") or {}).get("include_usage") else b""
    )
    await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})


async def draw(send: Any) -> None:
    seen["images"] += 1
    if seen["images"] % 2 == 0:
        await respond(send, 500, error("the image backend fell over", "server_error"))
        return
    out = io.BytesIO()
    Image.new("RGB", (256, 256), (200, 30, 30)).save(out, format="PNG")
    data = [{"b64_json": base64.b64encode(out.getvalue()).decode()}]
    await respond(send, 200, json.dumps({"created": int(time.time()), "data": data}).encode())


def prompt_tokens(request: dict[str, Any]) -> int:
    """About what a tokenizer makes of everything in the prompt: 4 bytes a token, an image 765."""
    tokens = 0
    for message in request["messages"]:
        parts = message.get("content") if isinstance(message.get("content"), list) else []
        images = sum(part.get("type") == "image_url" for part in parts)
        text = (
            {**message, "content": [p for p in parts if p.get("type") != "image_url"]} if images else message
        )
        tokens += len(json.dumps(text)) // 4 + images * IMAGE_TOKENS
    return tokens + sum(
        len(json.dumps(request[k])) // 4 for k in ("tools", "response_format") if k in request
    )


def pieces(model: str, words: int) -> list[dict[str, Any]]:
    """The answer as stream deltas."""
    if model == "refusal":
        return [{"refusal": "I can't"}, {"refusal": " help with that."}]
    if model == "noid":
        call = {"index": 0, "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        rest = {"index": 0, "function": {"arguments": '{"city": "Paris"}'}}
        return [{"tool_calls": [call]}, {"tool_calls": [rest]}]
    return [{"content": " word"} for _ in range(words)]


async def counted(send: Any, model: str, request: dict[str, Any]) -> None:
    words = int(request.get("max_completion_tokens") or request.get("max_tokens") or 200)
    deltas = pieces(model, words)
    usage: dict[str, Any] | None = {
        "prompt_tokens": prompt_tokens(request),
        "completion_tokens": len(deltas),
        "total_tokens": prompt_tokens(request) + len(deltas),
    }
    if model == "nousage":
        usage = None
    finish = "tool_calls" if model == "noid" else "stop"
    if not request.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": None}
        for delta in deltas:
            for key in ("content", "refusal"):
                if key in delta:
                    message[key] = (message.get(key) or "") + delta[key]
        if model == "noid":
            message["tool_calls"] = [
                {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ]
        body = {
            "id": "chatcmpl-up",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        }
        await respond(send, 200, json.dumps(body | ({"usage": usage} if usage else {})).encode())
        return
    out = [chunk(model, {"role": "assistant", "content": ""})]
    out += [chunk(model, delta) for delta in deltas] + [chunk(model, {}, finish)]
    if model == "nullusage" and usage is not None:
        usage["prompt_tokens"] = None
    if usage is not None and (request.get("stream_options") or {}).get("include_usage"):
        tail = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 0, "model": model}
        out.append(b"data: " + json.dumps(tail | {"choices": [], "usage": usage}).encode() + b"\n\n")
    await respond(send, 200, b"".join(out) + b"data: [DONE]\n\n", b"text/event-stream")


async def slowly(send: Any, model: str, request: dict[str, Any]) -> None:
    words = int(request.get("max_completion_tokens") or request.get("max_tokens") or 200)
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/event-stream")],
    }
    await send(start)
    for delta in [{"role": "assistant", "content": ""}] + [{"content": " word"}] * words:
        await send({"type": "http.response.body", "body": chunk(model, delta), "more_body": True})
        await asyncio.sleep(0.05)
    usage = {"prompt_tokens": prompt_tokens(request), "completion_tokens": words}
    usage["total_tokens"] = usage["prompt_tokens"] + words
    tail = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 0, "model": model}
    last = chunk(model, {}, "stop") + b"data: " + json.dumps(tail | {"choices": [], "usage": usage}).encode()
    await send({"type": "http.response.body", "body": last + b"\n\ndata: [DONE]\n\n"})


def vector(text: str, size: int) -> list[float]:
    """A unit vector that depends on the text only."""
    rng = random.Random(text)
    values = [rng.gauss(0, 1) for _ in range(size)]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


async def embed(send: Any, request: dict[str, Any]) -> None:
    model = str(request.get("model"))
    key = "embed:" + model
    seen[key] += 1
    last[key] = request
    if model == "flaky" and seen[key] % 2 == 1:
        await respond(send, 500, error("upstream is having a moment", "server_error"))
        return
    if model == "stall":
        await asyncio.sleep(5)
    if model == "ratelimit":
        await respond(send, 429, error("Rate limit reached upstream", "rate_limit_error"), retry_after="1")
        return
    if model == "badrequest":
        await respond(
            send, 400, error("input is odd upstream", "invalid_request_error", "invalid_value", "input")
        )
        return
    given = request["input"]
    texts = [given] if isinstance(given, str) or (given and isinstance(given[0], int)) else given
    size = 768 if model == "wholevectors" else int(request.get("dimensions") or 16)
    rows = [vector(json.dumps(t), size) for t in texts]
    if model == "wrongcount":
        rows = rows[:-1]
    packed = request.get("encoding_format") == "base64" and model != "floats"
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(struct.pack(f"<{len(r)}f", *r)).decode() if packed else r,
        }
        for i, r in enumerate(rows)
    ]
    tokens = sum(len(json.dumps(t)) // 4 + 1 for t in texts)
    body: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if model != "nousage":
        body["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    await respond(send, 200, json.dumps(body).encode())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="critical")
