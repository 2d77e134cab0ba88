"""A misbehaving OpenAI-compatible upstream for the gateway's fault tests (it is the peer under test).

What it does depends on the requested model:
  ok          answers at once (streamed or not), with usage
  flaky       500 on every odd request, ok on every even one
  stall       waits 5 s before answering
  drop        streams two chunks, then cuts the connection
  malformed   streams a chunk that is not JSON
  ratelimit   429 with Retry-After: 1
  badrequest  400 with an OpenAI-style error naming a param
GET /stats answers how many requests each model received.
"""

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

import uvicorn

seen: Counter[str] = Counter()
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


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stats":
        await respond(send, 200, json.dumps(seen).encode())
        return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(raw or b"{}")
    model = str(request.get("model"))
    seen[model] += 1
    if model == "flaky" and seen[model] % 2 == 1:
        await respond(send, 500, error("upstream is having a moment", "server_error"))
        return
    if model == "stall":
        await asyncio.sleep(5)
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
        await asyncio.sleep(0.01)
    tail = chunk(model, {}, "stop") + (
        usage_chunk(model) if (request.get("stream_options") or {}).get("include_usage") else b""
    )
    await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="critical")
