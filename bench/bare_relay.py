"""The least a Python gateway on chatgate's stack can add: a bare relay, for ``bench/gateway.py``.

A plain ASGI app on uvicorn (uvloop, httptools, as ``chatgate serve`` runs) that sends every
``POST`` body unchanged to one upstream through a shared aiohttp session (the client chatgate's
relay uses) and returns the upstream's status and body. No authentication, no accounting, no
validation, no logging: what it adds is the cost of the extra hop itself, the floor under any
gateway built this way.

    .venv/bin/python bench/bare_relay.py --port 8100 --upstream http://127.0.0.1:8101
"""

import argparse
from typing import Any

import aiohttp
import uvicorn

Scope = dict[str, Any]


class BareRelay:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    self.session = aiohttp.ClientSession()
                    await send({"type": "lifespan.startup.complete"})
            if self.session is not None:
                await self.session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        assert self.session is not None
        async with self.session.post(
            self.upstream + scope["path"], data=body, headers={"Content-Type": "application/json"}
        ) as response:
            answer = await response.read()
            status = response.status
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
    args = parser.parse_args()
    uvicorn.run(
        BareRelay(args.upstream), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
