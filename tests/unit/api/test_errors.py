import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from chatgate.api.errors import ERRORS, CatchAll, _param, envelope, error_response, status_and_type
from chatgate.api.sse import DONE, frames
from chatgate.api.trace import TraceMiddleware
from chatgate.errors import (
    AuthError,
    ChatgateError,
    ContextLengthExceeded,
    EngineBusy,
    InsufficientQuota,
    InvalidRequest,
    ModelNotFound,
    NotImplementedFeature,
    RateLimited,
    StorageFull,
    Unavailable,
    UpstreamFailed,
    UpstreamTimeout,
)
from chatgate.protocol.base import WireModel
from chatgate.protocol.models import Model


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (AuthError("no"), 401, "invalid_token"),
        (ModelNotFound("no"), 404, "model_not_found"),
        (InvalidRequest("no", param="temperature"), 400, "invalid_value"),
        (ContextLengthExceeded("no"), 400, "context_length_exceeded"),
        (NotImplementedFeature("no"), 400, "api_not_implemented"),
        (EngineBusy("no", retry_after=3), 429, "too_many_requests"),
        (Unavailable("no", retry_after=1, code="limits_unavailable"), 503, "limits_unavailable"),
        (StorageFull("no"), 507, "storage_full"),
    ],
)
def test_each_domain_error_has_its_status_and_code(error: ChatgateError, status: int, code: str) -> None:
    assert status_and_type(error)[0] == status
    assert envelope(error, "req_x").error.code == code


def test_an_error_outside_the_table_is_a_500() -> None:
    assert status_and_type(ChatgateError("boom")) == (500, "api_error")
    assert ChatgateError not in ERRORS


def test_envelope_shape() -> None:
    body = envelope(InvalidRequest("bad", param="stop"), "req_123").model_dump(mode="json")
    assert body == {
        "success": False,
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "stop",
            "code": "invalid_value",
        },
        "trace_id": "req_123",
    }


async def test_an_error_after_the_first_byte_travels_in_the_stream() -> None:
    async def chunks() -> AsyncIterator[WireModel]:
        yield Model(id="m", created=1, owned_by="me")
        raise InvalidRequest("went wrong", param="messages")

    out = [frame async for frame in frames(chunks(), "req_abc")]
    assert out[0].startswith(b"data: {")
    error = json.loads(out[1].removeprefix(b"data: "))
    assert error["error"]["message"] == "went wrong"
    assert error["trace_id"] == "req_abc"
    assert out[2] == DONE


@pytest.mark.parametrize(
    ("loc", "body", "param"),
    [
        (("body", "temperature"), {"temperature": 9}, "temperature"),
        (
            ("body", "messages", 0, "user", "content", "str"),
            {"messages": [{"content": 5}]},
            "messages[0].content",
        ),
        (
            ("body", "messages", 0, "user", "content", "list[...]", 0, "image_url", "image_url", "url"),
            {"messages": [{"content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].image_url.url",
        ),
        (("body", "messages"), {"model": "m"}, "messages"),
        (("body",), "not json", None),
        (("path", "token_id"), None, "token_id"),
        (("query", "offset"), None, "offset"),
    ],
)
def test_param_names_the_field_in_the_request_not_pydantic_tags(
    loc: tuple[int | str, ...], body: object, param: str | None
) -> None:
    assert _param(loc, body) == param


async def test_an_unexpected_failure_is_an_enveloped_500_that_escapes_no_further() -> None:
    """Nothing reaches the server above the app, so it keeps the client's connection open."""
    app = FastAPI()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_middleware(CatchAll)
    app.add_middleware(TraceMiddleware)
    transport = httpx.ASGITransport(app=app)  # raises whatever the app lets escape
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/boom", headers={"x-request-id": "trace-0000001"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-0000001"
    assert response.json() == {
        "success": False,
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "api_error",
            "param": None,
            "code": "internal_error",
        },
        "trace_id": "trace-0000001",
    }


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequest("bad", param="x"), 400, "invalid_request_error"),
        (AuthError("who?"), 401, "authentication_error"),
        (InsufficientQuota("poor"), 402, "billing_error"),
        (ModelNotFound("none"), 404, "not_found_error"),
        (RateLimited("slow", retry_after=1, headers={}), 429, "rate_limit_error"),
        (EngineBusy("busy", retry_after=1), 529, "overloaded_error"),
        (UpstreamFailed("down"), 502, "api_error"),
        (UpstreamTimeout("late"), 504, "timeout_error"),
    ],
)
def test_anthropic_routes_answer_in_anthropics_shape(error: ChatgateError, status: int, kind: str) -> None:
    response = error_response(error, "req_1", "/v1/messages")
    assert response.status_code == status
    assert json.loads(response.body) == {
        "type": "error",
        "error": {"type": kind, "message": error.message},
        "request_id": "req_1",
    }
    assert response.headers["request-id"] == response.headers["x-request-id"] == "req_1"
    assert error_response(error, "req_1", "/v1/chat/completions").status_code != 529
