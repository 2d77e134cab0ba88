"""The gateway's hot routes, answered beside the framework's router instead of through it.

A chat completion through FastAPI's stack passes eight ASGI layers before its route (the server
error catcher, telemetry and body-limit hooks, the exception middleware, the exit stack, the router
and its included routers, the route's request wrapper), each with its own ``send`` wrapper on the
way out: about a fifth of the CPU of a whole relayed request (py-spy, docs/benchmarks.md). The hot
routes already read their caller and body by hand, so none of that machinery does anything for
them. Here a ``POST`` to one of their exact paths goes straight to the route, wrapped only in what
it needs from the rest of the app: a trace id, the body limit, the one error table (domain errors
to their enveloped status, anything unexpected to the enveloped 500). Every other request (another
method on the same path, a trailing slash, any other path) goes through FastAPI as before, and the
routes stay declared there too, for the OpenAPI document.
"""

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from chatgate.api.errors import BodyLimit, CatchAll, on_chatgate_error
from chatgate.api.trace import TraceMiddleware
from chatgate.errors import ChatgateError

Endpoint = Callable[[Request], Awaitable[Response]]


class Gateway(FastAPI):
    """FastAPI, with the hot routes (``hot_routes``: exact path to endpoint, ``POST`` only) served
    by :meth:`_hot` instead of the framework's stack; ``hot_routes`` empty serves all through it."""

    def __init__(self, *, body_limit: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hot_routes: Mapping[str, Endpoint] = {}
        # The same middlewares, in the same order, as create_app puts around every other route.
        self._hot_stack = TraceMiddleware(CatchAll(BodyLimit(self._hot, limit=body_limit)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.hot_routes:
            scope["app"] = self  # what the framework's stack would set: request.app reaches the services
            if self.root_path:
                scope["root_path"] = self.root_path
            await self._hot_stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _hot(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.hot_routes[scope["path"]](request)
        except ChatgateError as exc:  # the handler create_app registers for it, called as the framework would
            response = await on_chatgate_error(request, exc)
        await response(scope, receive, send)
