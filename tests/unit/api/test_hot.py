"""The hot routes: served beside FastAPI's stack, with the same trace id, body limit and errors."""

from collections.abc import AsyncIterator
from typing import ClassVar

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from chatgate.api.errors import BodyLimit, CatchAll
from chatgate.api.hot import Gateway
from chatgate.api.trace import TraceMiddleware, trace_id_of
from chatgate.errors import RateLimited


class Counting:
    """A middleware of the framework's stack that counts what passes it."""

    seen: ClassVar[list[str]] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            Counting.seen.append(scope["path"])
        await self.app(scope, receive, send)


async def echo(request: Request) -> Response:
    body = await request.body()
    if body == b"limited":
        raise RateLimited("Too many requests.", retry_after=3, headers={})
    if body == b"broken":
        raise RuntimeError("a bug")
    services = request.app.state.services
    return JSONResponse({"trace": trace_id_of(request), "got": body.decode(), "services": services})


def gateway() -> Gateway:
    app = Gateway(body_limit=16, redirect_slashes=False)
    app.state.services = "the services"
    app.hot_routes = {"/v1/hot": echo}

    @app.post("/v1/hot")
    async def framework_route() -> dict[str, str]:  # what a client reaches through FastAPI
        return {"through": "framework"}

    @app.get("/v1/hot")
    async def framework_get() -> dict[str, str]:
        return {"through": "framework"}

    app.add_middleware(Counting)
    app.add_middleware(BodyLimit, limit=16)
    app.add_middleware(CatchAll)
    app.add_middleware(TraceMiddleware)
    return app


def client(app: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_a_hot_post_reaches_its_endpoint_past_the_framework_stack_with_a_trace_id() -> None:
    Counting.seen = []
    async with client(gateway()) as http:
        answer = await http.post("/v1/hot", content=b"hello", headers={"x-request-id": "req_given_1234"})
    assert answer.status_code == 200
    assert answer.json() == {"trace": "req_given_1234", "got": "hello", "services": "the services"}
    assert answer.headers["x-request-id"] == "req_given_1234"
    assert Counting.seen == []  # none of the framework's middlewares ran


async def test_other_methods_and_paths_go_through_the_framework() -> None:
    Counting.seen = []
    async with client(gateway()) as http:
        got = await http.get("/v1/hot")
        slash = await http.post("/v1/hot/")
    assert got.json() == {"through": "framework"}
    assert got.headers["x-request-id"].startswith("req_")
    assert slash.status_code == 404
    assert Counting.seen == ["/v1/hot", "/v1/hot/"]


async def test_a_domain_error_is_answered_from_the_one_table_in_its_envelope() -> None:
    async with client(gateway()) as http:
        answer = await http.post("/v1/hot", content=b"limited")
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "3"
    body = answer.json()
    assert body["success"] is False
    assert body["error"]["type"] == "rate_limit_error"
    assert body["trace_id"] == answer.headers["x-request-id"]


async def test_an_unexpected_failure_is_the_enveloped_500() -> None:
    async with client(gateway()) as http:
        answer = await http.post("/v1/hot", content=b"broken")
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"


async def test_the_body_limit_holds_on_a_hot_route() -> None:
    async with client(gateway()) as http:
        declared = await http.post("/v1/hot", content=b"x" * 17)

        async def chunks() -> AsyncIterator[bytes]:  # no declared length: refused once it grows too long
            for _ in range(4):
                yield b"x" * 8

        undeclared = await http.post("/v1/hot", content=chunks())
    assert declared.status_code == 413
    assert declared.json()["error"]["type"] == "invalid_request_error"
    assert undeclared.status_code == 413
