"""A worker's side of the shared engine: a Provider whose local model runs in the engine process.

``prepare`` runs here, in the worker, exactly as in a single process: the worker holds the model's
vocabulary and chat template (``LocalProvider`` with ``plans_only``; no weights, no instance), so a
request is checked and its cost bounded, to the token, before it is admitted, and a refusal costs
nothing and never reaches the engine. ``run`` is one HTTP exchange over the engine's Unix socket:
the request goes in as JSON, the engine plans it again with the same model and runs it, and its
provider events come back one line each (``wire``), exactly as its LocalProvider yields them
(``Accepted`` once an instance took it, errors included). Closing the stream early (the client
left) hangs up the exchange, and the engine stops the generation. Load and health are read from
the engine once a second, for ``/healthz``, ``/readyz`` and ``/metrics``.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from chatgate.errors import ChatgateError, EngineFailure
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import AnyProvider, Plan, ProviderEvent, count_prompt
from chatgate.providers.shared_engine import wire

log = logging.getLogger("chatgate.engine")
POLL_SECONDS = 1.0


class EngineLink:
    """The one connection pool to the engine process that every shared-engine provider of a worker uses."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._session: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        self.stats: dict[str, Any] = {}
        self.up = False

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.UnixConnector(path=str(self.socket), limit=1000)
            # One line is one event: a long line of logprobs must fit in the read buffer.
            self._session = aiohttp.ClientSession(connector=connector, read_bufsize=2**22)
        return self._session

    async def start(self) -> None:
        if self._poller is None:
            await self.poll()
            self._poller = asyncio.create_task(self._poll_forever(), name="engine-stats")

    async def poll(self) -> None:
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with self.session.get("http://engine/stats", timeout=timeout) as response:
                self.stats = await response.json()
                self.up = response.status == 200
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if self.up:
                log.warning("the engine process is not answering: %s", exc)
            self.up = False

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            await self.poll()

    def stats_of(self, key: str) -> dict[str, int]:
        """A deployment's load, as the engine last reported it."""
        entry = self.stats.get(key, {})
        return {k: int(v) for k, v in entry.get("stats", {}).items()}

    def health_of(self, key: str, label: str) -> list[dict[str, object]]:
        """A deployment's health as the engine last reported it (down while the engine is)."""
        entry = self.stats.get(key)
        if not self.up or entry is None:
            return [{"deployment": label, "up": False}]
        return [{**h, "deployment": label, "up": bool(h.get("up"))} for h in entry["health"]]

    async def lines(self, verb: str, key: str, body: bytes) -> AsyncGenerator[bytes, None]:
        """POST ``body`` to the engine's ``/{verb}/{key}`` and yield its answer's lines. Closing this
        before the end (the client left) hangs up, and the engine cancels the work."""
        url = f"http://engine/{verb}/" + quote(key, safe="")
        try:
            response = await self.session.post(url, data=body, headers={"content-type": "application/json"})
        except aiohttp.ClientError as exc:
            raise EngineFailure(f"The engine process could not be reached: {exc}") from exc
        try:
            if response.status != 200:
                raise EngineFailure(f"The engine process answered status {response.status}.")
            while True:
                try:
                    line = await response.content.readline()
                except aiohttp.ClientError as exc:
                    raise EngineFailure(f"The engine process broke off the answer: {exc}") from exc
                if not line:
                    return
                yield line
        finally:
            if not response.content.at_eof():
                response.close()  # hang up: the engine stops this request's work
            response.release()

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._session is not None:
            await self._session.close()
            self._session = None


class SharedEngineProvider:
    """One local deployment, served by the engine process under ``key``; ``planner`` is the same
    deployment's LocalProvider in plans-only mode (its ``prepare`` alone is used)."""

    def __init__(self, link: EngineLink, key: str, name: str, planner: AnyProvider) -> None:
        self._link = link
        self._planner = planner
        self.key = key
        self.name = name

    async def start(self) -> None:
        await self._planner.start()
        await self._link.start()

    async def aclose(self) -> None:
        await self._link.aclose()
        await self._planner.aclose()

    def prepare(self, request: ChatCompletionRequest) -> Plan:
        plan: Plan = self._planner.prepare(request)
        return plan

    async def count_prompt(self, plan: Plan) -> int:
        """As the planner counts it: the model's own vocabulary is here (Messages' count_tokens)."""
        return await count_prompt(self._planner, plan)

    def stats(self) -> dict[str, int]:
        return self._link.stats_of(self.key)

    def health(self) -> list[dict[str, object]]:
        return self._link.health_of(self.key, self.name)

    async def run(self, plan: Plan) -> AsyncGenerator[ProviderEvent, None]:
        body = plan.request.model_dump_json(by_alias=True).encode()
        async with contextlib.aclosing(self._link.lines("run", self.key, body)) as lines:
            async for line in lines:
                try:
                    item = wire.decode(line)
                except wire.WireError as exc:
                    raise EngineFailure(f"The engine process sent something unreadable: {exc}") from exc
                if isinstance(item, ChatgateError):
                    raise item
                yield item


def deployment_key(model: str, index: int) -> str:
    """The name both sides give a catalogue model's ``index``-th deployment (they read one catalogue)."""
    return f"{model}#{index}"
