"""The app's OpenAPI 3.1 document, built from its own routes, wire models and error table.

FastAPI reads each route's path, parameters, body and ``response_model``; then every operation is
completed here from what the route is: its security follows from the dependency that authenticates
it, and the errors it can answer from what it takes (a body or parameters: 400; a body: 413; a
caller: 401, 429 past its limits, 503 while limits that fail closed cannot be checked, and for a
bearer token while the database that holds it cannot be reached; a session on a state-changing
call, or an admin's: 403; anything: 500), to which its decorator adds
its domain errors (``raises`` in ``api/openapi.py``). Every answer carries the ``x-request-id``
header, and every error the envelope: OpenAI's, or on Anthropic's paths (``/v1/messages``,
``/anthropic/...``) Anthropic's error object, with the statuses and types it answers there (as
``api/errors.py`` renders them) and the ``request-id`` header besides.
"""

import http
import inspect
from collections.abc import Iterator
from typing import Any, get_args

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from chatgate.api.deps import CSRF_HEADER, SESSION_COOKIE, AdminDep, AuthenticatedDep, CallerDep, SignedInDep
from chatgate.api.errors import ANTHROPIC_HEADER, anthropic_answer, anthropic_type, is_anthropic
from chatgate.api.openapi import (
    ANTHROPIC_PREFIXES,
    API_PREFIXES,
    BEARER,
    CSRF,
    SESSION,
    STAND_IN,
    X_API_KEY,
    Errors,
    Ref,
    Security,
    codes_of,
    status_of,
)
from chatgate.api.routes import api_routes
from chatgate.api.trace import TRACE_HEADER
from chatgate.protocol.errors import ErrorEnvelope
from chatgate.protocol.messages_api import AnthropicError

COMPONENTS = "#/components/schemas/"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

DESCRIPTION = """\
An OpenAI-compatible API (the same routes under `/v1`, `/openai/v1` and `/openai`: point an
official SDK's `base_url` at any of them), Anthropic's Messages API (`/v1/messages`, also under
`/anthropic/v1`), the web console's JSON API under `/api`, and the operators' endpoints.

**Authentication.** The OpenAI-compatible API takes an API token (`sk-...`, made in the console)
or the operator's master key as `Authorization: Bearer ...`; the Messages API takes the same in
`x-api-key` (as Anthropic's SDKs send it) or as a bearer token. The console's API takes the session
cookie that signing up or in sets, and on every state-changing call the session's CSRF token in
`x-csrf-token`.

**Errors** are never bare: every failure answers
`{"success": false, "error": {"message", "type", "param", "code"}, "trace_id"}` with its status;
each operation lists the statuses it can answer, with the error types and codes of each
(`x-error-codes`). Every answer carries its trace id in `x-request-id` (a caller's own well-formed
`x-request-id` is kept). The Messages API answers errors as Anthropic does,
`{"type": "error", "error": {"type", "message"}, "request_id"}`, with Anthropic's statuses and types
(402 `billing_error` for credits, 529 `overloaded_error` for an engine at capacity): its
`x-error-codes` list under each type the conditions that cause it, which the body does not carry;
its answers carry the trace id in `request-id` too.

**Streaming.** With `"stream": true` the answer is `text/event-stream`. Chat Completions: one `data:`
line per chunk, as JSON; an error after the stream began comes as an error envelope in a `data:`
line; the stream ends with `data: [DONE]`. Responses and Messages: named events (`event: <type>`
and its `data:` as JSON), a failure after the stream began being an event of the API's own, and no
`[DONE]`.
"""

SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (`sk-...`) made in the console (or with `chatgate keys create`), "
        "or the operator's master key.",
    },
    SESSION: {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": "The console's session, set by `POST /api/signup` and `POST /api/login`.",
    },
    X_API_KEY: {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "An API token or the operator's master key, as Anthropic's SDKs send it "
        "(the Messages API).",
    },
    CSRF: {
        "type": "apiKey",
        "in": "header",
        "name": CSRF_HEADER,
        "description": "The session's `csrf_token` (from sign-up, sign-in or `GET /api/me`), "
        "sent back with every state-changing call.",
    },
}

TAGS = [
    {"name": "Chat", "description": "Chat Completions, as OpenAI's API has them."},
    {"name": "Responses", "description": "OpenAI's Responses API, and the responses it stores."},
    {"name": "Messages", "description": "Anthropic's Messages API, and its prompt token counts."},
    {"name": "Embeddings", "description": "Embeddings, as OpenAI's API has them."},
    {"name": "Models", "description": "The models this server routes."},
    {"name": "Images", "description": "Image generation."},
    {"name": "Files", "description": "Uploaded and generated files."},
    {"name": "Usage", "description": "What the calling token has used."},
    {"name": "Console", "description": "The web console's JSON API: accounts, sessions, tokens, usage."},
    {"name": "Admin", "description": "The console's admin calls."},
    {"name": "Operations", "description": "Liveness, readiness and metrics."},
    {"name": "Reference", "description": "This document and its page."},
]

_REQUEST_ID = {
    "description": "The request's trace id: the caller's own `x-request-id` when well-formed "
    "(8 to 128 of `A-Za-z0-9._:-`), else a new one. Error envelopes carry it as `trace_id`.",
    "required": True,
    "schema": {"type": "string"},
}
_RETRY_AFTER = {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}
_ANTHROPIC_REQUEST_ID = {
    "description": "The request's trace id again, where Anthropic's SDKs read a request's id.",
    "required": True,
    "schema": {"type": "string"},
}
# The header each scheme is: not a parameter besides.
_SCHEME_HEADERS = {BEARER: "authorization", X_API_KEY: "x-api-key", CSRF: CSRF_HEADER}
# Statuses Python's table does not name.
_PHRASES = {529: "Overloaded"}
_CALLER_TRACE_ID = {
    "name": TRACE_HEADER,
    "in": "header",
    "required": False,
    "description": "Your own trace id for the request (kept when it is 8 to 128 of `A-Za-z0-9._:-`). "
    "A metered request whose id you already used is refused with 409 `duplicate_request`.",
    "schema": {"type": "string"},
}

# The errors a route answers for what it is, beyond what its decorator declares: {type: codes}.
_BODY_FAULTS = {"invalid_request_error": ["invalid_value", "missing_required_parameter", "unknown_parameter", "invalid_json"]}  # fmt: skip
_PARAMETER_FAULTS = {"invalid_request_error": ["invalid_value", "missing_required_parameter"]}
_TOO_LARGE = {"invalid_request_error": ["request_too_large"]}
_INTERNAL = {"api_error": ["internal_error"]}
_NO_TOKEN = {"authentication_error": ["invalid_token"]}
# A token is looked up in the database: while it cannot be reached, the request fails closed.
_NO_STORAGE = {"api_error": ["storage_unavailable"]}
_NO_SESSION = {"authentication_error": ["not_signed_in"]}
# Every authenticated call counts against its caller's limits (the metering unit's routes list it
# among their own); with Redis unreachable and limits failing closed, it is refused.
_LIMITED = {"rate_limit_error": ["too_many_requests"]}
_NO_LIMITS = {"api_error": ["limits_unavailable"]}
_NO_CSRF = {"permission_error": ["csrf_failed"]}
_NOT_ADMIN = {"permission_error": ["forbidden"]}
_UPSTREAM = (
    "An upstream's refusal, relayed with its own status, message and code (`upstream_error` when it "
    "sent none); the type follows from the status."
)


def build(app: FastAPI, *, title: str, version: str) -> dict[str, Any]:
    """The document for every route ``app`` serves that is part of its API."""
    routes = [route for route in api_routes(app) if route.include_in_schema]
    stand_ins = _StandIns()
    envelope = stand_ins.add(Ref(ErrorEnvelope))
    anthropic = stand_ins.add(Ref(AnthropicError))
    for route in routes:
        stand_ins.collect(route.openapi_extra)
    document = get_openapi(
        title=title,
        version=version,
        description=DESCRIPTION,
        routes=[*app.routes, *stand_ins.carriers],
        tags=TAGS,
    )
    stand_ins.resolve(document)
    components = document.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    components["headers"] = {
        "RequestId": _REQUEST_ID,
        "RetryAfter": _RETRY_AFTER,
        "AnthropicRequestId": _ANTHROPIC_REQUEST_ID,
    }
    components["parameters"] = {"CallerTraceId": _CALLER_TRACE_ID}
    for route in routes:
        error = anthropic if is_anthropic(route.path_format) else envelope
        for method in sorted(route.methods or ()):
            operation = document["paths"][route.path_format][method.lower()]
            _complete(operation, route, method, stand_ins.resolved(error))
    schemas = components.get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422s: this API answers 400s
        schemas.pop(unused, None)
    return document


class _StandIns:
    """Puts the models that ``Ref``s stand for among the components, through routes that carry
    them (one per model), so FastAPI names them in the same pass as every other model."""

    def __init__(self) -> None:
        self.carriers: list[APIRoute] = []
        self._refs: dict[str, Ref] = {}
        self._real: dict[str, str] = {}

    def add(self, ref: Ref) -> str:
        name = ref["$ref"]
        if name not in self._refs:
            self._refs[name] = ref
            self.carriers.append(_carrier(f"/__carrier_{len(self.carriers)}", ref))
        return name

    def collect(self, node: Any) -> None:
        if isinstance(node, Ref):
            self.add(node)
        elif isinstance(node, dict):
            for value in node.values():
                self.collect(value)
        elif isinstance(node, list):
            for value in node:
                self.collect(value)

    def resolve(self, document: dict[str, Any]) -> None:
        """Drops the carrying routes, and points each stand-in ``$ref`` at its model's component."""
        for carrier, (name, ref) in zip(self.carriers, self._refs.items(), strict=True):
            operation = document["paths"].pop(carrier.path_format)
            if ref.mode == "validation":
                schema = operation["post"]["requestBody"]["content"]["application/json"]["schema"]
            else:
                schema = operation["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            self._real[name] = schema["$ref"]
        for node in _walk(document):
            target = node.get("$ref")
            if isinstance(target, str) and target.startswith(STAND_IN):
                node["$ref"] = self._real[target]

    def resolved(self, name: str) -> str:
        return self._real[name]


def _carrier(path: str, ref: Ref) -> APIRoute:
    async def carry(**_: Any) -> None:
        return None

    if ref.mode == "validation":
        body = inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=ref.model)
        carry.__signature__ = inspect.Signature([body])  # type: ignore[attr-defined]
        return APIRoute(path, carry, methods=["POST"], response_model=None)
    return APIRoute(path, carry, methods=["GET"], response_model=ref.model)


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _complete(operation: dict[str, Any], route: Any, method: str, error: str) -> None:
    """The operation's security, the errors it answers (each with the ``error`` schema), its headers
    and its tag."""
    calls = set(_calls(route))
    if "security" not in operation:
        security = _security(calls, method)
        if security:
            operation["security"] = security
    schemes = {name for requirement in operation.get("security", []) for name in requirement}
    headers = {_SCHEME_HEADERS[scheme] for scheme in schemes if scheme in _SCHEME_HEADERS}
    if headers:  # a scheme is its header: not a parameter besides
        parameters = operation.get("parameters", [])
        operation["parameters"] = [
            p for p in parameters if not (p["in"] == "header" and p["name"].lower() in headers)
        ]
    faults: dict[int, dict[str, list[str]]] = {500: _INTERNAL}
    if "requestBody" in operation:
        faults[400] = _BODY_FAULTS
        faults[413] = _TOO_LARGE
    elif any(_can_fail(parameter) for parameter in operation.get("parameters", [])):
        faults[400] = _PARAMETER_FAULTS
    if schemes & {BEARER, X_API_KEY}:
        faults[401] = _NO_TOKEN
        faults[503] = _merged(_NO_STORAGE, _NO_LIMITS)
    if SESSION in schemes:
        faults[401] = _NO_SESSION
        faults[503] = _NO_LIMITS
    if _dependency(CallerDep) in calls or _dependency(SignedInDep) in calls:
        faults[429] = _LIMITED
    if CSRF in schemes:
        faults[403] = _NO_CSRF
    if _dependency(AdminDep) in calls:
        faults[403] = _merged(faults.get(403, {}), _NOT_ADMIN)
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)
    for fault, codes in faults.items():
        entry = responses.setdefault(str(fault), {})
        entry["x-error-codes"] = _merged(codes, codes_of(entry))
    anthropic = is_anthropic(route.path_format)
    if anthropic:
        _in_anthropic_shape(responses, route)
    for status, entry in responses.items():
        if "x-error-codes" in entry:
            _error_response(status, entry, error)
        entry.setdefault("headers", {})[TRACE_HEADER] = {"$ref": "#/components/headers/RequestId"}
        if anthropic:
            entry["headers"][ANTHROPIC_HEADER] = {"$ref": "#/components/headers/AnthropicRequestId"}
    operation["responses"] = dict(sorted(responses.items()))
    operation.setdefault("parameters", []).append({"$ref": "#/components/parameters/CallerTraceId"})
    operation["tags"] = operation.get("tags") or [_tag(route.path_format)]


def _in_anthropic_shape(responses: dict[str, Any], route: Any) -> None:
    """The operation's errors as Anthropic's shape answers them (``api/errors.py``): under the status
    an error's class has there (402 for credits, 529 for an engine at capacity) or else its own,
    with that status's type. An upstream's refusal (``4XX``) keeps its status, as it does here."""
    translated: dict[str, dict[str, list[str]]] = {}
    for status, entry in list(responses.items()):
        codes = entry.get("x-error-codes")
        if codes is None or status == "4XX":
            continue
        del responses[status]
        declared = route.responses.get(int(status))
        raised = declared.raised if isinstance(declared, Errors) else []
        for kind, found in codes.items():
            for code in found:
                classes = [cls for cls, c in raised if c == code and status_of(cls)[1] == kind]
                answers = {anthropic_answer(cls, int(status)) for cls in classes}
                for answer, anthropic_kind in answers or {(int(status), anthropic_type(int(status)))}:
                    _add(translated.setdefault(str(answer), {}), anthropic_kind, code)
    for status, codes in translated.items():
        entry = responses.setdefault(status, {})
        entry["x-error-codes"] = _merged(codes_of(entry), codes)


def _add(codes: dict[str, list[str]], kind: str, code: str) -> None:
    known = codes.setdefault(kind, [])
    if code not in known:
        known.append(code)


def _error_response(status: str, entry: dict[str, Any], envelope: str) -> None:
    codes: dict[str, list[str]] = entry["x-error-codes"]
    if status == "4XX":
        lead = _UPSTREAM
    elif int(status) in _PHRASES:
        lead = _PHRASES[int(status)] + "."
    else:
        lead = http.HTTPStatus(int(status)).phrase + "."
    kinds = "; ".join(
        f"`{kind}`: " + ", ".join(f"`{code}`" for code in found) for kind, found in codes.items()
    )
    entry["description"] = f"{lead} {kinds}." if status != "4XX" else lead
    entry["content"] = {"application/json": {"schema": {"$ref": envelope}}}
    if status in ("429", "529"):
        entry.setdefault("headers", {})["retry-after"] = {"$ref": "#/components/headers/RetryAfter"}


def _merged(*parts: dict[str, list[str]]) -> dict[str, list[str]]:
    merged: dict[str, list[str]] = {}
    for part in parts:
        for kind, codes in part.items():
            known = merged.setdefault(kind, [])
            known.extend(code for code in codes if code not in known)
    return merged


def _can_fail(parameter: dict[str, Any]) -> bool:
    """Whether a value for this parameter can be refused: a required query, or one not any string."""
    if parameter.get("in") not in ("path", "query"):
        return False
    if parameter["in"] == "query" and parameter.get("required"):
        return True
    schema = parameter.get("schema", {})
    return schema.get("type") != "string" or len(set(schema) - {"type", "title", "description"}) > 0


def _calls(route: Any) -> Iterator[Any]:
    """Every dependency the route takes, through the dependencies of its dependencies."""
    pending = list(route.dependant.dependencies)
    while pending:
        dependant = pending.pop()
        yield dependant.call
        pending.extend(dependant.dependencies)


def _dependency(alias: Any) -> Any:
    """The function behind an ``Annotated[T, Depends(f)]`` alias of ``api/deps.py``."""
    return get_args(alias)[1].dependency


def _security(calls: set[Any], method: str) -> Security:
    if _dependency(AuthenticatedDep) in calls:  # CallerDep's too: it authenticates through it
        return [{BEARER: []}]
    if _dependency(SignedInDep) in calls:
        return [{SESSION: []}] if method in SAFE_METHODS else [{SESSION: [], CSRF: []}]
    return []


def _tag(path: str) -> str:
    for prefix in (*API_PREFIXES, *ANTHROPIC_PREFIXES):
        if path.startswith(prefix + "/"):
            return path[len(prefix) + 1 :].split("/")[0].capitalize()
    if path.startswith("/api/admin/"):
        return "Admin"
    if path.startswith("/api/"):
        return "Console"
    if path.startswith("/files/"):
        return "Files"
    if path in ("/openapi.json", "/docs"):
        return "Reference"
    return "Operations"
