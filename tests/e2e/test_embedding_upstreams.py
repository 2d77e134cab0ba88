"""Embeddings relayed to upstreams: chatgate itself, llama.cpp's server with ``--embedding`` on a real GGUF,
and the tests' fault-injecting upstream; retries, fallback, estimates, and what failures cost."""

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.e2e import bert_gguf, infra
from tests.e2e.conftest import EMBED, Spec, ledger_checked
from tests.e2e.infra import API_KEY, Server

TEXTS = ["Embeddings through a gateway.", "Another sentence, quite different.", "Ünïcödé and 中文 too."]


verified = ledger_checked(
    "gateway", lambda gateway: gateway.server
)  # `chatgate ledger verify` after each test


@dataclass
class Gateway:
    server: Server
    key: str  # a user's token
    faulty: str  # the fault-injecting upstream's address

    def post(self, body: dict[str, Any]) -> httpx.Response:
        with httpx.Client(base_url=self.server.base_url, timeout=30) as http:
            return http.post("/v1/embeddings", json=body, headers={"authorization": f"Bearer {self.key}"})

    def credits_left(self) -> int:
        with httpx.Client(base_url=self.server.base_url) as http:
            report = http.get("/v1/usage", headers={"authorization": f"Bearer {self.key}"}).json()
            left: int = report["credits_left"]
            return left

    def upstream_saw(self, model: str) -> int:
        counts: dict[str, int] = httpx.get(f"{self.faulty}/stats").json()
        return counts.get("embed:" + model, 0)


@pytest.fixture(scope="module")
def llama_embedding_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's own server (llama-cpp-python[server]) with --embedding, on all-MiniLM-L6-v2 as GGUF."""
    folder = tmp_path_factory.mktemp("llama-embed")
    model = bert_gguf.write(folder / "all-minilm-l6-v2-f32.gguf")
    port = infra.free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "minilm",
        "--embedding", "true", "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "512", "--n_batch", "512", "--n_ubatch", "512", "--n_threads", "1",
    ]  # fmt: skip
    with infra.process(command, port, folder / "log"):
        yield f"http://127.0.0.1:{port}/v1"


def _entry(name: str, *deployments: dict[str, Any], retries: int = 1) -> str:
    listed = "".join(f"\n      - {json.dumps(d)}" for d in deployments)
    return f"  - name: {name}\n    price: {{prompt: 1000000, completion: 0}}\n    retries: {retries}\n    deployments:{listed}"


@pytest.fixture(scope="module")
def gateway(
    server: Server, llama_embedding_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    faulty_port, closed_port = infra.free_port(), infra.free_port()
    workdir = tmp_path_factory.mktemp("embedding-gateway")
    faulty = f"http://127.0.0.1:{faulty_port}"

    def up(base: str, model: str, **extra: Any) -> dict[str, Any]:
        return {"kind": "openai_embeddings", "base_url": base, "model": model, **extra}

    entries = [
        _entry("relay-chatgate", up(server.base_url + "/v1", EMBED, api_key_env="UPSTREAM_KEY", dimensions=384)),
        _entry("relay-llama", up(llama_embedding_server, "minilm", dimensions=384)),
        _entry("fallback", up(f"http://127.0.0.1:{closed_port}/v1", "x", weight=1000), up(faulty + "/v1", "ok", weight=1), retries=2),
        *(_entry(m, up(faulty + "/v1", m)) for m in ("flaky", "ratelimit", "badrequest", "floats", "nousage", "wrongcount")),
        _entry("stall", up(faulty + "/v1", "stall", timeout=1), retries=0),
        _entry("refused", up(f"http://127.0.0.1:{closed_port}/v1", "x"), retries=0),
        _entry("matryoshka", up(faulty + "/v1", "wholevectors", dimensions=768, matryoshka=True)),
    ]  # fmt: skip
    catalogue = "models:\n" + "\n".join(entries) + "\n"
    with infra.process(
        [sys.executable, str(Path(__file__).with_name("faulty_upstream.py")), "--port", str(faulty_port)],
        faulty_port,
        workdir / "faulty.log",
    ):
        env = {"UPSTREAM_KEY": API_KEY, "CHATGATE_FREE_CREDITS": "1000000"}
        with infra.chatgate(workdir / "chatgate", catalogue, **env) as running:
            key = running.cli("keys", "create", "--user", "relay-embed@example.com").strip().splitlines()[-1]
            yield Gateway(running, key, faulty)


def _vectors(answer: Any) -> Any:
    return np.array([d.embedding for d in answer.data], np.float32)


def test_relayed_to_chatgate_the_vectors_and_usage_are_the_upstream_s(
    gateway: Gateway, server: Server, embeddings_spec: Spec
) -> None:
    direct = openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0)
    relayed = openai.OpenAI(base_url=gateway.server.base_url + "/v1", api_key=gateway.key, max_retries=0)
    with direct, relayed:
        want = direct.embeddings.create(model=EMBED, input=TEXTS)
        got = relayed.embeddings.create(model="relay-chatgate", input=TEXTS)
        assert np.array_equal(_vectors(got), _vectors(want))  # base64 both ways: every bit kept
        assert got.usage.prompt_tokens == want.usage.prompt_tokens and got.model == "relay-chatgate"
    raw = gateway.post({"model": "relay-chatgate", "input": TEXTS[0]})
    embeddings_spec.validate("CreateEmbeddingResponse", raw.json())


def test_relayed_to_llama_cpp_s_server(gateway: Gateway, llama_embedding_server: str, server: Server) -> None:
    """llama.cpp's vectors for the same model come through as it sent them (floats, not scaled to
    length 1 by this server), and point where chatgate's own engine's do (cosine > 0.999: its GELU
    is the tanh approximation)."""
    with (
        openai.OpenAI(base_url=llama_embedding_server, api_key="none", max_retries=0) as llama,
        openai.OpenAI(
            base_url=gateway.server.base_url + "/v1", api_key=gateway.key, max_retries=0
        ) as relayed,
        openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0) as local,
    ):
        want = llama.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
        got = relayed.embeddings.create(model="relay-llama", input=TEXTS, encoding_format="float")
        ours = local.embeddings.create(model=EMBED, input=TEXTS, encoding_format="float")
    assert np.allclose(_vectors(got), _vectors(want), atol=1e-6)
    assert got.usage.prompt_tokens == want.usage.prompt_tokens == ours.usage.prompt_tokens
    relayed = _vectors(got) / np.linalg.norm(
        _vectors(got), axis=1, keepdims=True
    )  # this server does not normalise
    cosines = (relayed * _vectors(ours)).sum(axis=1)
    assert (cosines > 0.999).all(), cosines


def test_fallback_and_retry_before_any_answer(gateway: Gateway) -> None:
    before = gateway.upstream_saw("ok")
    response = gateway.post({"model": "fallback", "input": TEXTS})
    assert response.status_code == 200, response.text
    assert gateway.upstream_saw("ok") == before + 1
    assert gateway.post({"model": "flaky", "input": TEXTS}).status_code == 200  # a 500, then a 200


@pytest.mark.parametrize(
    ("model", "status", "kind"),
    [
        ("refused", 502, "api_error"),
        ("stall", 504, "api_error"),
        ("ratelimit", 429, "rate_limit_error"),
        ("badrequest", 400, "invalid_request_error"),
        ("wrongcount", 502, "api_error"),
    ],
)
def test_failures_cost_nothing(gateway: Gateway, spec: Spec, model: str, status: int, kind: str) -> None:
    left = gateway.credits_left()
    response = gateway.post({"model": model, "input": TEXTS})
    assert response.status_code == status, response.text
    spec.validate("ErrorResponse", response.json())
    assert response.json()["error"]["type"] == kind
    assert response.headers["x-ratelimit-remaining-requests"]
    if model == "badrequest":
        assert response.json()["error"]["param"] == "input"  # the upstream's own words, kept
    assert gateway.credits_left() == left


def test_floats_and_missing_usage(gateway: Gateway) -> None:
    """Floats are read as well as base64; without usage, a request is charged its estimate: its bytes
    at 3 a token plus 4 a text for what the model adds, never nothing."""
    assert gateway.post({"model": "floats", "input": TEXTS, "encoding_format": "base64"}).status_code == 200
    left = gateway.credits_left()
    answer = gateway.post({"model": "nousage", "input": TEXTS}).json()
    estimate = sum(-(-len(t.encode()) // 3) + 4 for t in TEXTS)
    assert answer["usage"]["prompt_tokens"] == estimate
    assert gateway.credits_left() == left - estimate


def test_dimensions_on_a_model_trained_for_them(gateway: Gateway) -> None:
    """Sent upstream; an upstream that sends whole vectors anyway has them cut and scaled here."""
    answer = gateway.post({"model": "matryoshka", "input": TEXTS, "dimensions": 256}).json()
    with httpx.Client() as http:
        sent = http.get(f"{gateway.faulty}/last").json()["embed:wholevectors"]
    assert sent["dimensions"] == 256
    vectors = np.array([d["embedding"] for d in answer["data"]])
    assert vectors.shape == (3, 256) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    refused = gateway.post({"model": "relay-chatgate", "input": TEXTS, "dimensions": 256})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "dimensions"
