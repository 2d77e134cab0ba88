"""The one pooled HTTP client chat requests are relayed through (aiohttp).

aiohttp rather than httpx on this path: against a local upstream a call costs about 0.3 ms with it,
against 0.9 to 1.2 ms with httpx (or httpcore alone), and this is the gateway's hot path (see
docs/benchmarks.md). The session is opened inside the running event loop, at start-up.
"""

import aiohttp


class RelaySession:
    def __init__(self, *, connections: int = 1000, keepalive_seconds: float = 60.0) -> None:
        self._connections = connections
        self._keepalive = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._connections, keepalive_timeout=self._keepalive, ttl_dns_cache=60
            )
            # read_bufsize bounds one SSE line; a streamed tool call or logprobs line can be long.
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, read_bufsize=2**20, auto_decompress=True
            )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the relay session is opened at start-up, before any request")
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
