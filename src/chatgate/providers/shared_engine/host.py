"""The engine process's side: the local models, loaded once, served to every worker over a Unix socket.

A plain ASGI app (run by uvicorn on the socket ``chatgate serve --workers N`` makes in the data
dir). ``POST /run/{key}`` takes a chat request for one local deployment (admitted by the worker,
which has reserved its credits on the bound of the same plan), plans it and runs it, and answers
with its provider events, one JSON line each (``wire``), ending with a domain error line if it failed;
``GET /stats`` reports every deployment's load and health. Local embedding models are served here
too (``GET /embedder/{key}``: what a worker needs to plan for one; ``POST /embed/{key}``: a plan in,
a line once its inputs are counted, then its vectors; see ``shared_engine/embeddings``). The engine's own rules hold unchanged,
since it is the same LocalProvider a single process runs: one queue per model shared by all
workers (a full one is a 429 in whichever worker asked), one thread budget for the machine, exact
token counts, and a request whose worker hangs up (its client left) is cancelled here at once.
"""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from chatgate.errors import ChatgateError, EngineFailure, InvalidRequest, ModelNotFound
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import AnyProvider
from chatgate.providers.shared_engine import wire
from chatgate.providers.shared_engine.embeddings import (
    EmbedderFacts,
    accepted_line,
    plan_from_json,
    vectors_line,
)

if TYPE_CHECKING:
    from chatgate.providers.embeddings.local import LocalEmbedder

log = logging.getLogger("chatgate.engine")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
NDJSON = [(b"content-type", b"application/x-ndjson")]


class EngineHost:
    def __init__(
        self, providers: dict[str, AnyProvider], embedders: "dict[str, LocalEmbedder] | None" = None
    ) -> None:
        self.providers = providers
        self.embedders = embedders or {}

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
        elif method == "GET" and path.startswith("/embedder/"):
            embedder = self.embedders.get(path.removeprefix("/embedder/"))
            if embedder is None:
                await _answer(send, 404, b'{"detail": "no such embedding model"}')
                return
            facts = EmbedderFacts(
                dimensions=embedder.encoder.dimensions,
                vocabulary=embedder.encoder.vocabulary,
                matryoshka=embedder.deployment.matryoshka,
                limits=embedder.limits,
            )
            await _answer(send, 200, json.dumps(facts.to_json()).encode())
        elif method == "POST" and path.startswith("/embed/"):
            await self._embed(path.removeprefix("/embed/"), receive, send)
        else:
            await _answer(send, 404, b'{"detail": "not found"}')

    def stats(self) -> dict[str, Any]:
        served: dict[str, Any] = {
            key: {"stats": provider.stats(), "health": provider.health()}
            for key, provider in self.providers.items()
        }
        served.update({key: {"stats": e.stats(), "health": e.health()} for key, e in self.embedders.items()})
        return served

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for provider in self.providers.values():
                        await provider.start()
                    for embedder in self.embedders.values():
                        await embedder.start()
                except Exception as exc:
                    log.exception("the engine could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for provider in self.providers.values():
                    await provider.aclose()
                for embedder in self.embedders.values():
                    await embedder.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _run(self, key: str, receive: Receive, send: Send) -> None:
        await self._exchange(receive, send, lambda body: self._relay(key, body, send))

    async def _embed(self, key: str, receive: Receive, send: Send) -> None:
        await self._exchange(receive, send, lambda body: self._vectors(key, body, send))

    async def _exchange(self, receive: Receive, send: Send, work: Callable[[bytes], Awaitable[None]]) -> None:
        """The request's body in, an NDJSON answer out; the work is cancelled if the worker hangs up."""
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
            await work(body)
        except asyncio.CancelledError:
            if watcher.done() and not watcher.cancelled() and task.uncancel() == 0:
                return  # the worker hung up: its client left; the generation has been stopped
            raise
        finally:
            watcher.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _vectors(self, key: str, body: bytes, send: Send) -> None:
        """A worker's embedding plan, run by the model loaded here: the same LocalEmbedder (queue,
        threads, limits) that a single process runs."""
        embedder = self.embedders.get(key)
        if embedder is None:
            message = f"The engine serves no embedding model {key!r}."
            await _line(send, wire.encode_error(ModelNotFound(message)))
            return
        try:
            work = plan_from_json(body)
        except (ValueError, TypeError) as exc:
            await _line(send, wire.encode_error(InvalidRequest(f"The engine could not read the plan: {exc}")))
            return
        told: list[asyncio.Future[None]] = []

        def accepted(prompt_tokens: int) -> None:  # the inputs are counted: tell the worker now
            told.append(asyncio.ensure_future(_line(send, accepted_line(prompt_tokens))))

        try:
            done = await embedder.run(work, accepted)
        except ChatgateError as exc:
            last = wire.encode_error(exc)
        except Exception as exc:
            log.exception("embedding failed")
            last = wire.encode_error(EngineFailure(f"The engine failed while embedding: {exc}"))
        else:
            last = vectors_line(done)
        await asyncio.gather(*told)  # the count goes out before the vectors or the error
        await _line(send, last)

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


async def _line(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _cancel_when_gone(receive: Receive, task: asyncio.Task[Any]) -> None:
    """Cancels ``task`` if the worker hangs up (the request's body is read: nothing else can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
