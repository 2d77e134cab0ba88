"""The pooled HTTP clients requests are relayed to upstreams through.

Chat completions and Responses (the gateway's hot path) go through ``http1.Client``: about 53 us of
the event loop's CPU a call against a local upstream, where aiohttp took about 150 us and httpx
(or httpcore alone) 0.9 to 1.2 ms (docs/benchmarks.md). Embeddings go through aiohttp's session.
Both are opened inside the running event loop, at start-up.
"""

import aiohttp

from chatgate.providers.http1 import Client


class RelaySession:
    def __init__(self, *, connections: int = 1000, keepalive_seconds: float = 60.0) -> None:
        self._connections = connections
        self._keepalive = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None
        self._client: Client | None = None

    async def open(self) -> None:
        if self._client is None:
            self._client = Client(connections=self._connections, keepalive=self._keepalive)
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._connections, keepalive_timeout=self._keepalive, ttl_dns_cache=60
            )
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True)

    @property
    def client(self) -> Client:
        """Chat and Responses relays' client."""
        if self._client is None:
            raise RuntimeError("the relay session is opened at start-up, before any request")
        return self._client

    @property
    def session(self) -> aiohttp.ClientSession:
        """The embeddings relay's client."""
        if self._session is None:
            raise RuntimeError("the relay session is opened at start-up, before any request")
        return self._session

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._session is not None:
            await self._session.close()
            self._session = None
