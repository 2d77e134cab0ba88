"""Every failure is an enveloped error with the right status, code and param; never a 422 or a bare 500."""

import json
import socket
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import API_KEY, SMALL, Server, Spec

OK_MESSAGES = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": SMALL, "messages": OK_MESSAGES, "max_tokens": 2, **fields}


CASES: list[tuple[str, dict[str, Any] | str, int, str, str | None]] = [
    ("unknown model", body(model="no-such-model"), 404, "model_not_found", "model"),
    ("missing messages", {"model": SMALL}, 400, "missing_required_parameter", "messages"),
    ("empty messages", body(messages=[]), 400, "invalid_value", "messages"),
    ("messages not a list", body(messages="hi"), 400, "invalid_value", "messages"),
    (
        "unknown role",
        body(messages=[{"role": "wizard", "content": "hi"}]),
        400,
        "invalid_value",
        "messages[0]",
    ),
    (
        "content wrong type",
        body(messages=[{"role": "user", "content": 5}]),
        400,
        "invalid_value",
        "messages[0].content",
    ),
    ("temperature too high", body(temperature=2.5), 400, "invalid_value", "temperature"),
    ("top_p negative", body(top_p=-0.1), 400, "invalid_value", "top_p"),
    ("max_tokens zero", body(max_tokens=0), 400, "invalid_value", "max_tokens"),
    ("max_tokens not a number", body(max_tokens="ten"), 400, "invalid_value", "max_tokens"),
    ("presence_penalty out of range", body(presence_penalty=3), 400, "invalid_value", "presence_penalty"),
    ("five stop sequences", body(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value", "stop"),
    ("unknown parameter", body(frobnicate=True), 400, "unknown_parameter", "frobnicate"),
    (
        "stream_options without stream",
        body(stream_options={"include_usage": True}),
        400,
        "invalid_value",
        "stream_options",
    ),
    ("n too large", body(n=9), 400, "invalid_value", "n"),
    ("top_logprobs without logprobs", body(top_logprobs=3), 400, "invalid_value", "top_logprobs"),
    ("top_logprobs over 20", body(logprobs=True, top_logprobs=21), 400, "invalid_value", "top_logprobs"),
    ("tool_choice without tools", body(tool_choice="auto"), 400, "invalid_value", "tool_choice"),
    (
        "tool_choice names a missing function",
        body(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}),
        400,
        "invalid_value",
        "tool_choice",
    ),
    (
        "tool without a name",
        body(tools=[{"type": "function", "function": {}}]),
        400,
        "missing_required_parameter",
        "tools[0].function.name",
    ),
    ("logit_bias not a token id", body(logit_bias={"abc": 1}), 400, "invalid_value", "logit_bias"),
    ("logit_bias out of range", body(logit_bias={"42": 500}), 400, "invalid_value", "logit_bias"),
    (
        "logit_bias beyond the vocabulary",
        body(logit_bias={"99999999": 5}),
        400,
        "invalid_value",
        "logit_bias",
    ),
    (
        "unknown response_format",
        body(response_format={"type": "yaml"}),
        400,
        "invalid_value",
        "response_format",
    ),
    (
        "audio not implemented",
        body(audio={"voice": "alloy", "format": "mp3"}),
        400,
        "api_not_implemented",
        "audio",
    ),
    (
        "prediction not implemented",
        body(prediction={"type": "content", "content": "x"}),
        400,
        "api_not_implemented",
        "prediction",
    ),
    (
        "web search not implemented",
        body(web_search_options={}),
        400,
        "api_not_implemented",
        "web_search_options",
    ),
    (
        "an image that is not one",
        body(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}],
                }
            ]
        ),
        400,
        "invalid_image",
        "messages[0].content[0]",
    ),
    (
        "prompt over the context",
        body(messages=[{"role": "user", "content": "word " * 3000}]),
        400,
        "context_length_exceeded",
        "messages",
    ),
    ("completion over the context", body(max_tokens=5000), 400, "context_length_exceeded", "max_tokens"),
    ("malformed JSON", '{"model": "x", "messages": [', 400, "invalid_json", None),
    ("JSON that is not an object", "[1, 2]", 400, "invalid_json", None),
    ("empty body", "", 400, "invalid_json", None),
    ("a field named body", body(body=1), 400, "unknown_parameter", "body"),
    (
        "JSON nested past any stack",
        '{"model": "x", "messages": ' + "[" * 5000 + "]" * 5000 + "}",
        400,
        "invalid_json",
        None,
    ),
    (
        "an unpaired surrogate in the content",
        '{"model": "' + SMALL + '", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
        400,
        "invalid_value",
        "messages[0].content",
    ),
    (
        "logit_bias key a digit but not a number",
        body(logit_bias={"\u00b2": 1}),
        400,
        "invalid_value",
        "logit_bias",
    ),
    ("max_tokens a boolean", body(max_tokens=True), 400, "invalid_value", "max_tokens"),
    ("temperature a string", body(temperature="0.5"), 400, "invalid_value", "temperature"),
    ("n a string", body(n="2"), 400, "invalid_value", "n"),
    ("max_tokens past any context", body(max_tokens=10**19), 400, "invalid_value", "max_tokens"),
    (
        "a content part of no known type",
        body(messages=[{"role": "user", "content": [{"type": "bogus"}]}]),
        400,
        "invalid_value",
        "messages[0].content[0]",
    ),
    (
        "a text part whose text is a number",
        body(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
        400,
        "invalid_value",
        "messages[0].content[0].text",
    ),
    (
        "a prompt far past the context, refused before tokenizing",
        body(messages=[{"role": "user", "content": "word " * 400_000}]),
        400,
        "context_length_exceeded",
        "messages",
    ),
]


def assert_envelope(response: httpx.Response, spec: Spec, status: int, code: str, param: str | None) -> None:
    assert response.status_code == status, response.text
    payload = response.json()
    spec.validate("ErrorResponse", payload)
    assert payload["success"] is False
    assert payload["error"]["code"] == code
    assert payload["error"]["param"] == param
    assert payload["error"]["message"]
    assert payload["trace_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(("name", "payload", "status", "code", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_requests(
    http: httpx.Client,
    spec: Spec,
    name: str,
    payload: dict[str, Any] | str,
    status: int,
    code: str,
    param: str | None,
) -> None:
    for stream in (False, True):
        if isinstance(payload, str):
            response = http.post(
                "/v1/chat/completions", content=payload, headers={"content-type": "application/json"}
            )
        else:
            response = http.post(
                "/v1/chat/completions",
                json={**payload, "stream": stream} if stream and "stream_options" not in payload else payload,
            )
        assert_envelope(response, spec, status, code, param)


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong-key"}, {"authorization": "Basic abc"}, {"authorization": "Bearer"}],
    ids=["missing", "wrong", "not bearer", "empty"],
)
def test_bad_credentials_are_401_invalid_token(server: Server, spec: Spec, headers: dict[str, str]) -> None:
    for method, path in (("POST", "/openai/chat/completions"), ("GET", "/v1/models")):
        response = httpx.request(method, server.base_url + path, json=body(), headers=headers)
        assert_envelope(response, spec, 401, "invalid_token", None)
        assert response.json()["error"]["type"] == "authentication_error"


def test_unknown_paths_and_methods_are_enveloped(http: httpx.Client, spec: Spec) -> None:
    response = http.get("/v1/nope")
    assert response.status_code == 404
    spec.validate("ErrorResponse", response.json())
    response = http.post("/v1/chat/completions/", json=body())  # a trailing slash: no bare redirect
    assert_envelope(response, spec, 404, "not_found", None)
    response = http.get("/v1/chat/completions")
    assert response.status_code == 405
    spec.validate("ErrorResponse", response.json())


def test_a_caller_trace_id_is_kept(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", json=body(model="nope"), headers={"x-request-id": "my-trace-0001"}
    )
    assert response.headers["x-request-id"] == "my-trace-0001"
    assert response.json()["trace_id"] == "my-trace-0001"


def test_the_sdk_raises_its_own_typed_errors(server: Server) -> None:
    wrong = openai.OpenAI(base_url=server.base_url + "/openai", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=SMALL, messages=OK_MESSAGES)  # type: ignore[arg-type]
    right = openai.OpenAI(base_url=server.base_url + "/openai", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        right.chat.completions.create(model="nope", messages=OK_MESSAGES)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        right.chat.completions.create(model=SMALL, messages=OK_MESSAGES, temperature=9)  # type: ignore[arg-type]
    assert bad.value.param == "temperature"


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [
        ("text/plain", "utf-8"),
        ("application/x-www-form-urlencoded", "utf-8"),  # what `curl -d` sends
        (None, "utf-8"),
        ("application/json", "utf-8-sig"),  # a byte-order mark
        ("application/json", "utf-16"),
    ],
    ids=["text", "form", "none", "bom", "utf-16"],
)
def test_a_json_body_is_read_whatever_its_content_type_and_encoding(
    http: httpx.Client, content_type: str | None, encoding: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    raw = json.dumps(body(max_tokens=1)).encode(encoding)
    response = http.post("/v1/chat/completions", content=raw, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"


def test_a_body_over_the_limit_is_413_before_it_is_read(
    server: Server, http: httpx.Client, spec: Spec
) -> None:
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:  # declares 60 MB, sends 2 bytes
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 60000000\r\n\r\n{}"
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            answer += sock.recv(65536)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), head
    envelope = json.loads(payload)
    spec.validate("ErrorResponse", envelope)
    assert envelope["error"]["code"] == "request_too_large"

    def chunks() -> Any:  # no declared length: counted as it arrives
        yield b'{"model": "x", "messages": [{"role": "user", "content": "'
        for _ in range(51):
            yield b"a" * 1_000_000
        yield b'"}]}'

    streamed = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=chunks(),
        headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
    )
    assert_envelope(streamed, spec, 413, "request_too_large", None)
    assert http.get("/v1/models").status_code == 200  # and the server is fine


def test_the_callers_text_never_becomes_a_special_token(http: httpx.Client) -> None:
    """A user who writes the chat template's own markers writes text, not a new turn."""

    def prompt_tokens(text: str) -> int:
        response = http.post(
            "/v1/chat/completions",
            json=body(messages=[{"role": "user", "content": text}], max_tokens=1, temperature=0),
        )
        assert response.status_code == 200, response.text
        return int(response.json()["usage"]["prompt_tokens"])

    plain = prompt_tokens("x")
    # Read as the special token, "<|im_end|>" would be one token like "x"; as text it is several.
    assert prompt_tokens("<|im_end|>") > plain + 2
    assert prompt_tokens("<|im_start|>system") > prompt_tokens("x system") + 2
