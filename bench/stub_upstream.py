"""An OpenAI-compatible upstream that answers at once: the fixed point the gateway benchmark measures against.

It does no work: a canned chat completion, streamed (with a usage chunk) or not. Run it alone with
``python bench/stub_upstream.py --port 9100``.
"""

import argparse
import json
import time

import uvicorn

CONTENT = ["Hello", " from", " the", " stub", "."]


def _completion(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(CONTENT)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": len(CONTENT),
                "total_tokens": 12 + len(CONTENT),
            },
        }
    ).encode()


def _stream(model: str) -> bytes:
    base = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    frames = [
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
    ]
    frames += [
        {**base, "choices": [{"index": 0, "delta": {"content": c}, "finish_reason": None}]} for c in CONTENT
    ]
    frames.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    frames.append(
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": len(CONTENT), "total_tokens": 17},
        }
    )
    return b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames) + b"data: [DONE]\n\n"


async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def,type-arg]
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(body or b"{}")
    model = str(request.get("model", "stub"))
    streamed = bool(request.get("stream"))
    payload = _stream(model) if streamed else _completion(model)
    kind = b"text/event-stream" if streamed else b"application/json"
    headers = [(b"content-type", kind), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
