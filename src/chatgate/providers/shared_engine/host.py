"""The engine process's side: the local models, loaded once, served to every worker over a Unix socket.

A plain ASGI app (run by uvicorn on the socket ``chatgate serve --workers N`` makes in the data
dir). ``POST /run/{key}`` takes a chat request for one local deployment (admitted by the worker,
which has reserved its credits on the bound of the same plan), plans it and runs it, and answers
with its provider events, one JSON line each (``wire``), ending with a domain error line if it failed;
``GET /stats`` reports every deployment's load and health. The engine's own rules hold unchanged,
since it is the same LocalProvider a single process runs: one queue per model shared by all
workers (a full one is a 429 in whichever worker asked), one thread budget for the machine, exact
token counts, and a request whose worker hangs up (its client left) is cancelled here at once.
"""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from pydantic import ValidationError

from chatgate.errors import ChatgateError, EngineFailure, InvalidRequest, ModelNotFound
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import AnyProvider
from chatgate.providers.shared_engine import wire

log = logging.getLogger("chatgate.engine")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
NDJSON = [(b"content-type", b"application/x-ndjson")]


class EngineHost:
    def __init__(self, providers: dict[str, AnyProvider]) -> None:
        self.providers = providers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/stats":
            await _answer(send, 200, json.dumps(self.stats()).encode())
        elif method == "POST" and path.startswith("/run/"):
            await self._run(path.removeprefix("/run/"), receive, send)
        else:
            await _answer(send, 404, b'{"detail": "not found"}')

    def stats(self) -> dict[str, Any]:
        return {
            key: {"stats": provider.stats(), "health": provider.health()}
            for key, provider in self.providers.items()
        }

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for provider in self.providers.values():
                        await provider.start()
                except Exception as exc:
                    log.exception("the engine could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for provider in self.providers.values():
                    await provider.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _run(self, key: str, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.create_task(_cancel_when_gone(receive, task))
        try:
            await self._relay(key, body, send)
        except asyncio.CancelledError:
            if watcher.done() and not watcher.cancelled() and task.uncancel() == 0:
                return  # the worker hung up: its client left; the generation has been stopped
            raise
        finally:
            watcher.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _relay(self, key: str, body: bytes, send: Send) -> None:
        async def line(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        provider = self.providers.get(key)
        if provider is None:
            await line(wire.encode_error(ModelNotFound(f"The engine serves no deployment {key!r}.")))
            return
        try:
            request = ChatCompletionRequest.model_validate_json(body)
        except ValidationError as exc:
            await line(wire.encode_error(InvalidRequest(f"The engine could not read the request: {exc}")))
            return
        try:
            events = provider.run(provider.prepare(request))
        except ChatgateError as exc:
            await line(wire.encode_error(exc))
            return
        try:
            async for event in events:
                await line(wire.encode(event))
        except ChatgateError as exc:
            await line(wire.encode_error(exc))
        except Exception as exc:
            log.exception("generation failed")
            await line(wire.encode_error(EngineFailure(f"The engine failed while generating: {exc}")))
        finally:
            with anyio.CancelScope(shield=True):
                await events.aclose()  # stops the generation and frees its slot, however this ended


async def _cancel_when_gone(receive: Receive, task: asyncio.Task[Any]) -> None:
    """Cancels ``task`` if the worker hangs up (the request's body is read: nothing else can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
