"""Chat completions through the official openai client against a real server and real local models."""

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import llama_cpp
import openai
import pytest

from chatgate.providers.local import assets
from tests.e2e.conftest import API_KEY, QWEN, ROOT, SMALL, Server, Spec, sse_events

T = TypeVar("T")
HELLO = [{"role": "user", "content": "Say hello."}]


def test_non_streamed_answer_is_a_valid_chat_completion(client: openai.OpenAI, spec: Spec) -> None:
    raw = client.chat.completions.with_raw_response.create(model=SMALL, messages=HELLO, max_tokens=8)
    body = raw.http_response.json()
    spec.validate("CreateChatCompletionResponse", body)
    answer = raw.parse()
    assert answer.id.startswith("chatcmpl-")
    assert answer.object == "chat.completion"
    assert answer.model == SMALL
    assert answer.system_fingerprint and answer.system_fingerprint.startswith("fp_")
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert 0 < answer.usage.completion_tokens <= 8


def test_aliases_resolve_to_the_canonical_model(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="small", messages=HELLO, max_tokens=2)
    assert answer.model == SMALL


def test_stream_through_the_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=SMALL, messages=HELLO, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert 0 < chunks[-1].usage.completion_tokens <= 8


def test_every_raw_stream_frame_matches_the_spec(http: httpx.Client, spec: Spec) -> None:
    body = {
        "model": SMALL,
        "messages": HELLO,
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        spec.validate("CreateChatCompletionStreamResponse", chunk)
        assert chunk["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    story = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    answer = client.chat.completions.create(model=SMALL, messages=story, max_tokens=3, temperature=0)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    newer = client.chat.completions.create(
        model=SMALL, messages=story, max_completion_tokens=2, temperature=0
    )
    assert newer.choices[0].finish_reason == "length"
    assert newer.usage is not None and newer.usage.completion_tokens == 2


def test_stop_sequence_ends_the_answer_and_is_not_included(client: openai.OpenAI) -> None:
    count = [{"role": "user", "content": "Count from 1 to 10, separated by commas. Output only the numbers."}]
    full = client.chat.completions.create(model=QWEN, messages=count, max_tokens=40, temperature=0)
    assert "5" in (full.choices[0].message.content or "")
    cut = client.chat.completions.create(
        model=QWEN, messages=count, max_tokens=40, temperature=0, stop=["5", "9"]
    )
    content = cut.choices[0].message.content or ""
    assert "4" in content and "5" not in content
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=QWEN, messages=count, max_tokens=40, temperature=0, stop="5", stream=True
    )
    chunks = [c for c in streamed if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_multi_turn_uses_the_whole_conversation(client: openai.OpenAI) -> None:
    conversation = [
        {"role": "system", "content": "You are a helpful assistant. Answer in one word."},
        {"role": "user", "content": "Remember this: my favourite colour is teal."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": [{"type": "text", "text": "What is my favourite colour?"}]},
    ]
    answer = client.chat.completions.create(model=QWEN, messages=conversation, max_tokens=10, temperature=0)
    assert "teal" in (answer.choices[0].message.content or "").lower()


def test_usage_and_greedy_output_match_llama_cpp_python_directly(client: openai.OpenAI) -> None:
    """The prompt is counted with the model's own tokenizer and template, exactly as llama-cpp-python does."""
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three primary colours."},
    ]
    path = assets.ensure(assets.resolve("smollm2-135m-instruct-q4_1"), ROOT / ".chatgate" / "models")
    direct = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_threads=1, verbose=False)
    try:
        reference = direct.create_chat_completion(messages=messages, max_tokens=12, temperature=0)
    finally:
        direct.close()
    ours = client.chat.completions.create(model=SMALL, messages=messages, max_tokens=12, temperature=0)
    assert ours.usage is not None
    assert ours.usage.prompt_tokens == reference["usage"]["prompt_tokens"]
    assert ours.usage.completion_tokens == reference["usage"]["completion_tokens"]
    assert ours.choices[0].message.content == reference["choices"][0]["message"]["content"]


def test_same_seed_same_output(client: openai.OpenAI) -> None:
    poem = [{"role": "user", "content": "Write a short poem about the sea."}]
    answers = {
        client.chat.completions.create(model=SMALL, messages=poem, max_tokens=16, temperature=1.0, seed=1234)
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(answers) == 1


def test_concurrent_streams_all_finish(server: Server) -> None:
    async def one(async_client: openai.AsyncOpenAI, i: int) -> tuple[str, str | None]:
        stream = await async_client.chat.completions.create(
            model=SMALL,
            messages=[{"role": "user", "content": f"Say a sentence about the number {i}."}],
            max_tokens=16,
            stream=True,
        )
        text, finish = "", None
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def main() -> list[tuple[str, str | None]]:
        async with openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0) as c:
            return await asyncio.gather(*(one(c, i) for i in range(4)))

    results = asyncio.run(main())
    assert all(text and finish in ("stop", "length") for text, finish in results)


def test_a_full_queue_answers_429_with_retry_after(server: Server, spec: Spec) -> None:
    body = {
        "model": SMALL,
        "messages": [{"role": "user", "content": "Write a long essay about rivers."}],
        "max_tokens": 64,
    }
    headers = {"authorization": f"Bearer {API_KEY}"}

    async def one(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/chat/completions", json=body, headers=headers)

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as c:
            return await asyncio.gather(*(one(c) for _ in range(10)))

    responses = asyncio.run(main())
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 429 in statuses, statuses
    assert set(statuses) == {200, 429}
    busy = next(r for r in responses if r.status_code == 429)
    assert int(busy.headers["retry-after"]) >= 1
    spec.validate("ErrorResponse", busy.json())
    assert busy.json()["error"]["code"] == "too_many_requests"


# Far longer than any test waits for it: what a leaving client must cut short.
LONG_ANSWER = {
    "model": SMALL,
    "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
    "max_tokens": 1500,
    "temperature": 0,
}


def once_idle(http: httpx.Client) -> dict[str, Any]:
    """The small model's engine stats once no instance is busy."""

    def idle() -> dict[str, Any] | None:
        stats: dict[str, Any] = http.get("/healthz").json()["models"][SMALL]
        return stats if stats["busy"] == 0 else None

    return wait_for(idle, 10.0)


def test_client_disconnect_stops_generation(server: Server, http: httpx.Client) -> None:
    before = http.get("/healthz").json()["models"][SMALL]["cancelled"]
    with http.stream("POST", "/v1/chat/completions", json={**LONG_ANSWER, "stream": True}) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)

    # The stream is closed. The engine notices at its next token and frees the instance.
    stats = once_idle(http)
    assert stats["cancelled"] == before + 1


def test_a_client_that_leaves_a_non_streamed_answer_stops_its_generation(
    server: Server, http: httpx.Client
) -> None:
    before = http.get("/healthz").json()["models"][SMALL]["cancelled"]
    body = {**LONG_ANSWER, "logit_bias": {"2": -100}}  # the small model's end of turn: it can't stop early
    with pytest.raises(httpx.ReadTimeout):  # gives up waiting, and closes the connection
        http.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(10, read=1.0))

    stats = once_idle(http)
    assert stats["cancelled"] == before + 1


def wait_for(check: Callable[[], T], timeout: float) -> T:
    """Poll until check() is truthy (a bound on waiting, not a performance assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
