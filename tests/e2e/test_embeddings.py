"""/v1/embeddings on the offline default model, with the official SDK: shapes (checked against OpenAI's
schema), exact usage, limits naming their field, and the credits each request moves."""

import asyncio
import base64
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from sqlalchemy import func, select
from tokenizers import Tokenizer

from chatgate.providers.embeddings import assets
from chatgate.storage.database import Database
from chatgate.storage.tables import OpenReservation
from tests.e2e.conftest import EMBED, SMALL, Spec, database_url, ledger_checked
from tests.e2e.infra import API_KEY, Server

TEXTS = ["The cat sat on the mat.", "A feline rested on the rug.", "Quarterly revenue grew by 12%."]

verified = ledger_checked("server")  # `chatgate ledger verify` passes after every test


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """The model's own tokenizer, as its reference implementation runs it: for the exact counts."""
    folder = assets.package_dir(assets.resolve(EMBED))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.encode_special_tokens = True
    return tokenizer


@pytest.fixture(scope="module")
def user(server: Server) -> str:
    """A user's token with the server's free credits."""
    return server.cli("keys", "create", "--user", "embedder@example.com").strip().splitlines()[-1]


def post(server: Server, key: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        return http.post("/v1/embeddings", json=body, headers={"authorization": f"Bearer {key}"})


def held(server: Server, trace_id: str) -> int:
    """Credits the request ``trace_id`` still holds (an open reservation), read from the database."""

    async def read() -> int:
        db = Database(database_url(server))
        try:
            async with db.snapshot() as session:
                query = select(func.coalesce(func.sum(OpenReservation.amount), 0))
                return int(
                    (await session.execute(query.where(OpenReservation.trace_id == trace_id))).scalar_one()
                )
        finally:
            await db.dispose()

    return asyncio.run(read())


def credits_left(server: Server, key: str) -> int:
    with httpx.Client(base_url=server.base_url) as http:
        left: int = http.get("/v1/usage", headers={"authorization": f"Bearer {key}"}).json()["credits_left"]
        return left


def test_the_sdk_gets_vectors_in_every_input_shape(
    client: openai.OpenAI, http: httpx.Client, embeddings_spec: Spec, tokenizer: Tokenizer
) -> None:
    ids = [e.ids for e in tokenizer.encode_batch(TEXTS)]
    for given in (TEXTS[0], TEXTS, ids[0], ids):
        sent = {"model": EMBED, "input": given}
        embeddings_spec.validate("CreateEmbeddingRequest", sent)
        raw = http.post("/openai/v1/embeddings", json=sent)
        assert raw.status_code == 200, raw.text
        embeddings_spec.validate("CreateEmbeddingResponse", raw.json())
        answer = client.embeddings.create(model=EMBED, input=given)  # the SDK asks for base64 itself
        count = 1 if isinstance(given, str) or isinstance(given[0], int) else len(given)
        assert [d.index for d in answer.data] == list(range(count)) and answer.model == EMBED
        floats = np.array([d["embedding"] for d in raw.json()["data"]], np.float32)
        assert np.array_equal(np.array([d.embedding for d in answer.data], np.float32), floats)
        assert floats.shape[1] == 384 and np.allclose(np.linalg.norm(floats, axis=1), 1, atol=1e-5)
        want = sum(len(i) for i in (ids[:1] if count == 1 else ids))
        assert answer.usage.prompt_tokens == answer.usage.total_tokens == want
    # Text and its token ids are the same input; similar sentences are closer than unrelated ones.
    by_text = client.embeddings.create(model=EMBED, input=TEXTS, encoding_format="float").data
    by_ids = client.embeddings.create(model=EMBED, input=ids, encoding_format="float").data
    a, b, c = (np.array(d.embedding) for d in by_text)
    assert np.allclose(a, by_ids[0].embedding, atol=1e-6)
    assert a @ b > 0.5 > a @ c


def test_base64_is_little_endian_float32(http: httpx.Client) -> None:
    """(OpenAI's schema describes only the float form; the SDKs decode this one.)"""
    body = {"model": "minilm", "input": TEXTS[:2]}
    floats = http.post("/v1/embeddings", json=body).json()
    packed = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    assert packed["model"] == EMBED  # an alias answers with the model's name
    for f, p in zip(floats["data"], packed["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(p["embedding"]), "<f4")
        assert decoded.tolist() == np.array(f["embedding"], np.float32).tolist()


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": EMBED, "input": ""}, 400, "input", "invalid_value"),
        ({"model": EMBED, "input": []}, 400, "input", "invalid_value"),
        ({"model": EMBED, "input": ["ok", ""]}, 400, "input[1]", "invalid_value"),
        ({"model": EMBED, "input": ["x"] * 2049}, 400, "input", "invalid_value"),
        ({"model": EMBED, "input": ["ok", "word " * 600]}, 400, "input[1]", "context_length_exceeded"),
        ({"model": EMBED, "input": [[101, 102], [101, 40000]]}, 400, "input[1][1]", "invalid_value"),
        ({"model": EMBED, "input": [7] * 513}, 400, "input", "context_length_exceeded"),
        ({"model": EMBED, "input": [7] * 3000}, 400, "input", "context_length_exceeded"),
        ({"model": EMBED, "input": "hi", "dimensions": 128}, 400, "dimensions", "invalid_value"),
        ({"model": EMBED, "input": "hi", "dimensions": "384"}, 400, "dimensions", "invalid_value"),
        ({"model": EMBED, "input": "hi", "encoding_format": "int8"}, 400, "encoding_format", "invalid_value"),
        ({"model": EMBED, "input": 5}, 400, "input", "invalid_value"),
        ({"model": EMBED, "input": "hi", "extra": 1}, 400, "extra", "unknown_parameter"),
        ({"input": "hi"}, 400, "model", "missing_required_parameter"),
        ({"model": SMALL, "input": "hi"}, 400, "model", "model_not_supported"),
        ({"model": "nope", "input": "hi"}, 404, "model", "model_not_found"),
    ],
)
def test_bad_requests_name_the_field_and_cost_nothing(
    server: Server, user: str, spec: Spec, body: dict[str, Any], status: int, param: str, code: str
) -> None:
    left = credits_left(server, user)
    response = post(server, user, body)
    assert response.status_code == status, response.text
    spec.validate("ErrorResponse", response.json())
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    assert credits_left(server, user) == left and held(server, response.json()["trace_id"]) == 0


def test_dimensions_equal_to_the_model_s_own_are_accepted(http: httpx.Client) -> None:
    response = http.post("/v1/embeddings", json={"model": EMBED, "input": "hi", "dimensions": 384})
    assert response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == 384


def test_chat_refuses_an_embedding_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=EMBED, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_supported" and "/v1/embeddings" in caught.value.message


def test_each_request_is_charged_its_exact_tokens(server: Server, user: str, tokenizer: Tokenizer) -> None:
    """Reserved on the texts' bytes, settled on the tokenizer's count (1 credit a token at the default
    price), and logged in /v1/usage under the model, as /metrics counts it."""
    before = credits_left(server, user)
    response = post(server, user, {"model": EMBED, "input": TEXTS})
    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining-requests"]
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(TEXTS))
    assert response.json()["usage"]["prompt_tokens"] == tokens
    assert credits_left(server, user) == before - tokens
    with httpx.Client(base_url=server.base_url) as http:
        report = http.get("/v1/usage", headers={"authorization": f"Bearer {user}"}).json()
        metrics = http.get("/metrics", headers={"authorization": f"Bearer {API_KEY}"}).text  # the operator
    row = next(m for m in report["models"] if m["model"] == EMBED)
    assert row["prompt_tokens"] >= tokens and row["completion_tokens"] == 0
    assert f'chatgate_tokens_total{{kind="prompt",model="{EMBED}"}}' in metrics


def test_a_request_past_the_balance_is_refused_before_any_work(server: Server) -> None:
    """The reservation is on the bytes: 1,000 bytes of text cannot start with 100 credits left."""
    key = server.cli("keys", "create", "--user", "poor-embedder@example.com", "--quota", "100")
    key = key.strip().splitlines()[-1]
    response = post(server, key, {"model": EMBED, "input": "word " * 200})
    assert response.status_code == 429 and response.json()["error"]["code"] == "insufficient_quota"
    assert held(server, response.json()["trace_id"]) == 0 and credits_left(server, key) == 100
    assert post(server, key, {"model": EMBED, "input": "a few words"}).status_code == 200


def test_a_token_with_nothing_left_is_refused_before_its_body_is_read(server: Server) -> None:
    key = server.cli("keys", "create", "--user", "broke-embedder@example.com", "--quota", "0")
    key = key.strip().splitlines()[-1]
    response = post(server, key, {"model": EMBED, "input": "hi", "not_a_field": True})  # never parsed
    assert response.status_code == 429 and response.json()["error"]["code"] == "insufficient_quota"
