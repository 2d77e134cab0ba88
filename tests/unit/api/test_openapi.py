"""The OpenAPI document is built from the app's own routes: every route is in it, each with its
security, its errors and its headers, and the wire models' output schemas say what is sent."""

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from openapi_spec_validator import validate
from pydantic import Field

from chatgate.api import document
from chatgate.api.deps import CallerDep, SignedInDep
from chatgate.api.openapi import STAND_IN, described, operation_id, raises
from chatgate.api.routes import served
from chatgate.app import create_app
from chatgate.config import Settings
from chatgate.errors import ModelNotFound, RateLimited, UpstreamRefused
from chatgate.protocol.base import WireModel
from chatgate.protocol.errors import ErrorEnvelope
from chatgate.protocol.responses import ChatCompletionChunk

MASTER = "sk-" + "k" * 30
BEARER = f"Bearer {MASTER}"  # the master key: no database needed to know it
# Pages of the console, not operations of the API.
PAGES = {("GET", "/"), ("GET", "/assets/{name}")}
# Console routes for people without a session: signing up and in, and what an emailed link proves.
PUBLIC = (
    "/api/signup",
    "/api/login",
    "/api/verify",
    "/api/verify/resend",
    "/api/password/forgot",
    "/api/password/reset",
)
# Anthropic's Messages API answers errors in Anthropic's object, with its statuses and types (from
# Anthropic's API reference, "Errors"); every other path in chatgate's envelope.
ANTHROPIC_PATHS = ("/v1/messages", "/anthropic/")
ANTHROPIC_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
}
CATALOGUE = """
models:
  - name: upstream-model
    deployment: {kind: openai_compatible, base_url: "http://127.0.0.1:9/v1", model: m}
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The real app (its lifespan not run: nothing is served, only described)."""
    root = tmp_path_factory.mktemp("openapi")
    (root / "catalogue.yaml").write_text(CATALOGUE)
    settings = Settings(catalogue=root / "catalogue.yaml", data_dir=root / "data", api_key=MASTER)
    return create_app(settings)


@pytest.fixture(scope="module")
def doc(app: FastAPI) -> dict[str, Any]:
    return document.build(app, title="chatgate", version="test")


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), path, op) for path, item in doc["paths"].items() for m, op in item.items()]


def test_the_document_is_openapi_3_1(doc: dict[str, Any]) -> None:
    validate(doc)
    assert STAND_IN not in json.dumps(doc)  # every model a route named by hand is among the components


def test_every_route_the_app_serves_is_in_the_document(app: FastAPI, doc: dict[str, Any]) -> None:
    documented = {(method, path) for method, path, _ in operations(doc)}
    served_routes = {
        (method, route.path_format)
        for route in served(app)
        for method in (getattr(route, "methods", None) or ())
    }
    undocumented = served_routes - documented - PAGES
    assert not undocumented, (
        "served but not in /openapi.json (give the route include_in_schema, or add it to PAGES if it "
        f"is a console page): {sorted(undocumented)}"
    )
    assert PAGES <= served_routes and documented <= served_routes


def test_each_operation_says_who_may_call_it_what_it_answers_and_with_which_headers(
    doc: dict[str, Any],
) -> None:
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids))
    for method, path, op in operations(doc):
        where = f"{method} {path}"
        anthropic = path.startswith(ANTHROPIC_PATHS)
        error = {"$ref": "#/components/schemas/" + ("AnthropicError" if anthropic else "ErrorEnvelope")}
        responses = op["responses"]
        assert "422" not in responses, where  # this API answers a bad request with 400
        assert "500" in responses, where
        for status, response in responses.items():
            assert response["headers"]["x-request-id"] == {"$ref": "#/components/headers/RequestId"}, where
            assert ("request-id" in response["headers"]) == anthropic, where  # where Anthropic's SDKs look
            if status.startswith("2") and "application/json" in response.get("content", {}):
                assert response["content"]["application/json"]["schema"], (where, "no response_model")
            if status[0] in "45" and (where, status) != ("GET /readyz", "503"):  # not ready: its report
                assert response["content"]["application/json"]["schema"] == error, (where, status)
                assert response["x-error-codes"], (where, status)
                if anthropic and status != "4XX":  # (an upstream's refusal: the type follows its status)
                    assert set(response["x-error-codes"]) <= ANTHROPIC_TYPES, (where, status)
        schemes = {name for requirement in op.get("security", []) for name in requirement}
        if path.startswith(("/v1/", "/openai/", "/anthropic/")):
            assert "bearer" in schemes and "401" in responses, where  # (another API's key may be beside it)
            unavailable = {"api_error": ["storage_unavailable", "limits_unavailable"]}
            assert responses["503"]["x-error-codes"] == unavailable, where
            assert "too_many_requests" in responses["429"]["x-error-codes"]["rate_limit_error"], where
            headers = {p.get("name", "").lower() for p in op.get("parameters", [])}
            assert not headers & {"authorization", "x-api-key"}, where  # the schemes say so
            if anthropic:
                assert op["security"] == [{"x_api_key": []}, {"bearer": []}], where
        elif path.startswith("/api/") and path not in PUBLIC:
            expected = {"session"} if method == "GET" else {"session", "csrf"}
            assert schemes == expected, where
            assert "too_many_requests" in responses["429"]["x-error-codes"]["rate_limit_error"], where
            assert "401" in responses and ("403" in responses) == (method != "GET" or "/admin/" in path), (
                where
            )
        else:
            assert not schemes, where
        if "requestBody" in op:
            assert {"400", "413"} <= set(responses), where


def test_the_chat_route_read_by_hand_is_described_in_full(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/chat/completions"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"
    }
    ok = op["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    event = ok["text/event-stream"]["schema"]
    assert event["required"] == ["data"]
    assert event["properties"]["data"]["else"]["contentSchema"]["anyOf"] == [
        {"$ref": "#/components/schemas/ChatCompletionChunk"},
        {"$ref": "#/components/schemas/ErrorEnvelope"},
    ]
    assert {"404", "409", "429", "4XX", "502", "504"} <= set(op["responses"])
    assert "model_not_found" in op["responses"]["404"]["x-error-codes"]["invalid_request_error"]
    assert op["security"] == [{"bearer": []}]


def test_the_responses_and_messages_routes_read_by_hand_are_described_in_full(doc: dict[str, Any]) -> None:
    """Their bodies and named events among the components, Anthropic's statuses where its errors
    differ from OpenAI's, and the Messages routes under both prefixes with ids of their own."""
    schemas = "#/components/schemas/"
    responses = doc["paths"]["/openai/v1/responses"]["post"]
    assert responses["operationId"] == "create_response_openai_v1"
    assert responses["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": schemas + "CreateResponse"
    }
    ok = responses["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {"$ref": schemas + "Response"}
    event = ok["content"]["text/event-stream"]["schema"]
    assert event["required"] == ["event", "data"]
    assert event["properties"]["data"]["contentSchema"] == {"$ref": schemas + "StreamEvent"}
    assert ok["links"]["GetResponse"]["operationId"] == "get_response"
    assert "response_not_found" in responses["responses"]["404"]["x-error-codes"]["invalid_request_error"]
    assert "insufficient_quota" in responses["responses"]["429"]["x-error-codes"]
    for path, suffix in (("/v1/messages", ""), ("/anthropic/v1/messages", "_anthropic_v1")):
        messages = doc["paths"][path]["post"]
        assert messages["operationId"] == "create_message" + suffix
        assert messages["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": schemas + "CreateMessage"
        }
        event = messages["responses"]["200"]["content"]["text/event-stream"]["schema"]
        assert event["properties"]["data"]["contentSchema"] == {"$ref": schemas + "MessageEvent"}
        errors = messages["responses"]
        assert errors["402"]["x-error-codes"] == {"billing_error": ["insufficient_quota"]}
        assert errors["529"]["x-error-codes"] == {"overloaded_error": ["too_many_requests"]}
        assert "retry-after" in errors["529"]["headers"]
        assert errors["404"]["x-error-codes"] == {"not_found_error": ["model_not_found"]}
        assert errors["413"]["x-error-codes"] == {"request_too_large": ["request_too_large"]}
        assert "insufficient_quota" not in errors["429"]["x-error-codes"]
        count = doc["paths"][path + "/count_tokens"]["post"]
        assert count["operationId"] == "count_tokens" + suffix
        assert "402" not in count["responses"]  # nothing is reserved: no credits needed
    schemes = doc["components"]["securitySchemes"]
    assert schemes["x_api_key"] == {
        **schemes["x_api_key"],
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
    }


async def test_a_token_is_refused_with_the_documented_503_while_the_database_cannot_answer(
    app: FastAPI, doc: dict[str, Any]
) -> None:
    """The app's database has no tables (its lifespan never ran): looking a token up fails, and every
    operation taking a bearer token answers as its 503 says, before reading anything else."""
    transport = httpx.ASGITransport(app=app)
    bearer = [(m, p, op) for m, p, op in operations(doc) if {"bearer": []} in op.get("security", [])]
    assert bearer
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for method, path, op in bearer:
            url = re.sub(r"\{[^}]+\}", "x", path)
            answer = await client.request(method, url, headers={"authorization": "Bearer sk-" + "x" * 40})
            assert answer.status_code == 503, (method, path, answer.text)
            error = answer.json()["error"]
            codes = op["responses"]["503"]["x-error-codes"][error["type"]]
            assert error.get("code", codes[0]) in codes, (method, path)  # Anthropic's error has no code


@pytest.fixture(scope="module")
def small_bodies(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The real app with a 2 KB body limit."""
    root = tmp_path_factory.mktemp("bodies")
    (root / "catalogue.yaml").write_text(CATALOGUE)
    settings = Settings(
        catalogue=root / "catalogue.yaml", data_dir=root / "data", api_key=MASTER, max_body_bytes=2048
    )
    return create_app(settings)


async def _chunks() -> AsyncIterator[bytes]:
    for _ in range(4):
        yield b" " * 1000


@pytest.mark.parametrize("path", ["/api/login", "/v1/images/generations", "/v1/chat/completions"])
async def test_a_body_grown_past_the_limit_without_a_length_is_the_documented_413(
    small_bodies: FastAPI, path: str
) -> None:
    """Found by the fuzzer's error-code check: where the framework reads the body, the body limit's
    refusal came out as its own 400 ``http_400``."""
    transport = httpx.ASGITransport(app=small_bodies)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        answer = await client.post(
            path, content=_chunks(), headers={"content-type": "application/json", "authorization": BEARER}
        )
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "request_too_large"


async def test_a_body_that_is_not_utf8_and_a_form_with_too_many_fields_are_documented_400s(
    app: FastAPI,
) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        not_text = await client.post(
            "/api/login", content=b'{"email": "\xe9^"}', headers={"content-type": "application/json"}
        )
        fields = {f"field{i}": "x" for i in range(6)}
        form = await client.post(
            "/v1/files", data=fields, files={"file": ("a.png", b"x")}, headers={"authorization": BEARER}
        )
    assert not_text.status_code == 400 and not_text.json()["error"]["code"] == "invalid_json"
    assert form.status_code == 400, form.text
    assert (form.json()["error"]["code"], form.json()["error"]["param"]) == ("invalid_value", "file")


class Thing(WireModel):
    name: str


def test_a_new_route_is_described_from_what_it_takes_and_what_it_declares() -> None:
    """What an engineer adding a route writes, and what the document makes of it."""
    router = APIRouter()

    @router.post(
        "/things", response_model=Thing, responses=raises(ModelNotFound, RateLimited, UpstreamRefused)
    )
    async def create_thing(body: Thing, caller: CallerDep) -> Thing:
        return body

    @router.post(
        "/raw", response_model=Thing, openapi_extra=described(body=Thing, stream=ChatCompletionChunk)
    )
    async def raw_thing() -> None:
        return None

    @router.get("/mine")
    async def my_things(signed_in: SignedInDep) -> None:
        return None

    app = FastAPI(generate_unique_id_function=operation_id)
    app.include_router(router, prefix="/v1")
    app.include_router(router, prefix="/openai")
    built = document.build(app, title="t", version="1")
    validate(built)
    things = built["paths"]["/v1/things"]["post"]
    assert things["operationId"] == "create_thing"
    assert built["paths"]["/openai/things"]["post"]["operationId"] == "create_thing_openai"
    assert things["security"] == [{"bearer": []}]
    assert set(things["responses"]) == {"200", "400", "401", "404", "413", "429", "4XX", "500", "503"}
    assert things["responses"]["429"]["x-error-codes"] == {"rate_limit_error": ["too_many_requests"]}
    assert "retry-after" in things["responses"]["429"]["headers"]
    raw = built["paths"]["/v1/raw"]["post"]
    assert raw["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Thing"
    }
    assert "security" not in raw and {"400", "413"} <= set(raw["responses"])
    assert built["paths"]["/v1/mine"]["get"]["security"] == [{"session": []}]
    assert "ChatCompletionChunk" in built["components"]["schemas"]


class Reply(WireModel):
    nullable = frozenset({"refusal"})

    id: str
    kind: str = "reply"
    refusal: str | None
    note: str | None = None
    tags: list[str] = Field(default_factory=list)


def test_a_wire_models_output_schema_says_what_is_always_sent_and_what_may_be_absent() -> None:
    schema = Reply.model_json_schema(mode="serialization")
    assert set(schema["required"]) == {"id", "kind", "refusal", "tags"}
    assert {"type": "null"} in schema["properties"]["refusal"]["anyOf"]  # sent as null
    assert schema["properties"]["note"]["type"] == "string"  # left out rather than null
    assert Reply.model_json_schema(mode="validation")["required"] == ["id", "refusal"]
    sent = json.loads(Reply(id="r", refusal=None).model_dump_json())
    assert sent == {"id": "r", "kind": "reply", "refusal": None, "tags": []}


def test_an_error_envelope_is_a_wire_model_with_its_fields_always_sent() -> None:
    schema = ErrorEnvelope.model_json_schema(mode="serialization")
    assert set(schema["required"]) == {"success", "error", "trace_id"}
    assert set(schema["$defs"]["ErrorBody"]["required"]) == {"message", "type", "param", "code"}


async def test_a_method_the_path_is_not_served_with_is_a_405_listing_every_method_it_is(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        answer = await client.request("PUT", "/api/tokens")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, POST"
    assert answer.json()["error"]["code"] == "http_405"
