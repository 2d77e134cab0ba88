"""Schemathesis hooks for the fuzz test (tests/e2e/test_fuzz.py), loaded by ``st run`` in its own process.

The credentials come from the environment the test sets: a user's API token for the bearer
scheme, an admin's email and password for the console's session (signed in here, and again
whenever an answer says the session has ended, as a ``POST /api/logout`` does). Beyond
schemathesis's own checks, an error's type and code must be among those the document lists for its
status (``x-error-codes``; Anthropic's error object, on the Messages API, has a type and no code).
"""

import json
import os
import zlib
from typing import Any

import httpx
import schemathesis

BASE_URL = os.environ.get("CHATGATE_FUZZ_URL", "")
TOKEN = os.environ.get("CHATGATE_FUZZ_TOKEN", "")
EMAIL = os.environ.get("CHATGATE_FUZZ_EMAIL", "")
PASSWORD = os.environ.get("CHATGATE_FUZZ_PASSWORD", "")
MODEL = os.environ.get("CHATGATE_FUZZ_MODEL", "")
EMBEDDING_MODEL = os.environ.get("CHATGATE_FUZZ_EMBEDDING_MODEL", "")
# The token's user and the admin, whom the admin's own calls must not disable; and a user they may.
PROTECTED = {int(i) for i in os.environ.get("CHATGATE_FUZZ_PROTECTED_USERS", "").split(",") if i}
SPARE_USER = int(os.environ.get("CHATGATE_FUZZ_SPARE_USER", "0"))
SHORT = 8  # the most tokens a fuzzed request may ask the real model for


def _schemes(case: Any) -> set[str]:
    security = case.operation.definition.raw.get("security", [])
    return {name for requirement in security for name in requirement}


@schemathesis.auth()
class Credentials:
    """The bearer token, or the session cookie and its CSRF token, as each operation declares."""

    def get(self, case: Any, ctx: Any) -> dict[str, str]:
        with httpx.Client(base_url=BASE_URL, timeout=30) as http:
            answer = http.post("/api/login", json={"email": EMAIL, "password": PASSWORD})
            answer.raise_for_status()
            return {"cookie": answer.cookies["chatgate_session"], "csrf": answer.json()["csrf_token"]}

    def set(self, case: Any, data: dict[str, str], ctx: Any) -> None:
        schemes = _schemes(case)
        case.headers = case.headers or {}
        if "bearer" in schemes:
            case.headers["Authorization"] = f"Bearer {TOKEN}"
        if "session" in schemes:
            case.cookies = {**(case.cookies or {}), "chatgate_session": data["cookie"]}
        if "csrf" in schemes:
            case.headers["x-csrf-token"] = data["csrf"]


@schemathesis.hook
def map_path_parameters(ctx: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
    """The admin disables (or moves to another price group) anyone but the fuzzer's own two users
    (it would lock itself out, or hide its models from itself)."""
    if ctx.operation.path.endswith(("/disable", "/group")) and path_parameters.get("user_id") in PROTECTED:
        return {**path_parameters, "user_id": SPARE_USER}
    return path_parameters


# The operations that run a model; the fields that bound what they generate, and whether one may be
# added when none is sent (not a required one: adding it would make an invalid request valid).
_MODELLED = ("/chat/completions", "/embeddings", "/responses", "/messages", "/messages/count_tokens")
_BOUNDS = {
    "/chat/completions": (("max_tokens", "max_completion_tokens"), True),
    "/responses": (("max_output_tokens",), True),
    "/messages": (("max_tokens",), False),
}
_RANGES = {"n": (1, 128, 2)}  # (least, most, what the fuzzer asks for at most); bounds: 1 to 2**31-1


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    """Half of the requests to a model (chat, embeddings, responses, messages, token counts) name a
    model this server serves (a random name is a 404 before any work), and those that generate ask
    for a few tokens: the fuzzer explores the API, not the model's speed. Only valid values are
    replaced, by other valid ones: a request meant to be refused stays one."""
    path = ctx.operation.path
    if not path.endswith(_MODELLED) or not isinstance(body, dict):
        return body
    model = body.get("model")
    if not isinstance(model, str) or not model or zlib.crc32(repr(sorted(body)).encode()) % 2:
        return body
    if path.endswith("/embeddings"):
        return {**body, "model": EMBEDDING_MODEL}
    body = {**body, "model": MODEL}
    bounds, optional = next((spec for end, spec in _BOUNDS.items() if path.endswith(end)), ((), False))
    if bounds and optional and not any(field in body for field in bounds):
        body[bounds[0]] = SHORT
    for key in (*bounds, "n"):
        value = body.get(key)
        least, most, cap = _RANGES.get(key, (1, 2**31 - 1, SHORT))
        if isinstance(value, int) and not isinstance(value, bool) and least <= value <= most:
            body[key] = min(value, cap)
    if path.endswith("/responses") and body.get("store") is False:
        # A response made with "store": false is not kept (as OpenAI's is not), so the links from
        # it to the stored response find nothing; the stateful phase would take that for a
        # resource lost. Stored here; tests/e2e/test_responses.py covers store: false.
        del body["store"]
    return body


@schemathesis.check
def error_code_documented(ctx: Any, response: Any, case: Any) -> None:
    """An error envelope's type and code are among those the document lists for its status (an
    upstream's refusal, ``4XX``, keeps its own codes; a status not listed at all is
    ``status_code_conformance``'s to report)."""
    entry = case.operation.definition.raw.get("responses", {}).get(str(response.status_code), {})
    codes = entry.get("x-error-codes")
    if response.status_code < 400 or codes is None:
        return
    try:
        error = json.loads(response.content)["error"]
        kind, code = error["type"], error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AssertionError(
            f"{response.status_code} without an error envelope: {response.text[:200]}"
        ) from exc
    if kind not in codes or ("code" in error and code not in codes[kind]):
        raise AssertionError(
            f"{response.status_code} with error type {kind!r} and code {code!r}; the document lists {codes}"
        )
