"""The app's routes as it serves them: each with its full path, whatever prefix it was included under.

FastAPI from 0.165 keeps an included router's routes once, each with a context per inclusion
(``iter_route_contexts``); before, ``include_router`` copied every route into ``app.routes``.
"""

from typing import Any

from fastapi import FastAPI, routing
from fastapi.routing import APIRoute


def served(app: FastAPI) -> list[Any]:
    """Every route, with ``path_format``, ``path_regex`` and ``methods`` as served."""
    contexts = getattr(routing, "iter_route_contexts", None)
    if contexts is None:
        return list(app.routes)
    return list(contexts(app.routes))


def api_routes(app: FastAPI) -> list[Any]:
    """The FastAPI routes, with what their inclusion added (prefix, tags, responses)."""
    return [route for route in served(app) if isinstance(getattr(route, "original_route", route), APIRoute)]


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods some route serves ``path`` with: what a 405 answer's ``Allow`` lists."""
    methods: set[str] = set()
    for route in served(app):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)
