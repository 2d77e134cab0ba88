"""The least a Python gateway on chatgate's stack can add: a bare relay, for ``bench/gateway.py``.

A plain ASGI app on uvicorn (uvloop, httptools, as ``chatgate serve`` runs) that sends every
``POST`` body unchanged to one upstream through chatgate's relay client (``http1.Client``, pooled
keep-alive connections) and returns the upstream's status and body. No authentication, no accounting, no
validation, no logging: what it adds is the cost of the extra hop itself, the floor under any
gateway built this way.

With ``--books DB`` (a migrated chatgate SQLite database holding one API token) it also does what
issue 14 makes every request do durably, and only that: the credit reservation committed before the
upstream is called, and the settlement (refund, ledger row, usage row) committed before the answer
is sent, through chatgate's own fast path (``SqliteFastPath``, grouped commits, trace ids made as
chatgate makes them). What it adds over the bare relay is what the books alone cost.

    .venv/bin/python bench/bare_relay.py --port 8100 --upstream http://127.0.0.1:8101
"""

import argparse
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

import uvicorn

from chatgate.api.trace import new_trace_id
from chatgate.providers.http1 import Client, encode_headers
from chatgate.storage.fastpath import Settlement, SqliteFastPath
from chatgate.storage.usage import UsageRow

RESERVED, CHARGED = 100, 20  # credits held for a request, and what it costs

Scope = dict[str, Any]


class Books:
    """A request's reservation and settlement, as chatgate's fast path writes them."""

    def __init__(self, path: str) -> None:
        with sqlite3.connect(path) as conn:
            self.token_id, self.user_id = conn.execute("SELECT id, user_id FROM api_tokens").fetchone()
        self.fast = SqliteFastPath(path)

    async def reserve(self, trace_id: str) -> None:
        kept = await self.fast.reserve(
            user_id=self.user_id,
            token_id=self.token_id,
            trace_id=trace_id,
            amount=RESERVED,
            model="stub",
            owner="bare-relay",
        )
        assert kept, "the bench's token ran out of credits"

    async def settle(self, trace_id: str, started: float) -> None:
        usage = UsageRow(
            trace_id=trace_id,
            user_id=self.user_id,
            token_id=self.token_id,
            model="stub",
            prompt_tokens=12,
            completion_tokens=5,
            cost=CHARGED,
            latency_ms=int((time.perf_counter() - started) * 1000),
            status="ok",
            error_code=None,
            created_at=datetime.now(UTC),
        )
        await self.fast.settle(Settlement(usage, refund=RESERVED - CHARGED))


class BareRelay:
    def __init__(self, upstream: str, books: str | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.client: Client | None = None
        self.headers = encode_headers({"content-type": "application/json"})
        self.books = Books(books) if books else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    self.client = Client()
                    await send({"type": "lifespan.startup.complete"})
            if self.client is not None:
                await self.client.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        assert self.client is not None
        if self.books is not None:  # nothing of this on the plain relay: it is the floor
            started, trace_id = time.perf_counter(), new_trace_id()
            await self.books.reserve(trace_id)
        response = await self.client.request(
            "POST", self.upstream + scope["path"], body=body, headers=self.headers
        )
        try:
            answer = await response.read()
        finally:
            response.release()
        status = response.status
        if self.books is not None:
            await self.books.settle(trace_id, started)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL the request path is appended to")
    parser.add_argument("--books", help="a migrated chatgate SQLite database with one API token")
    args = parser.parse_args()
    uvicorn.run(
        BareRelay(args.upstream, args.books),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
